"""The LM head and its cross-entropy, a chunk of tokens at a time: no full logits tensor.

transformers' causal-LM loss materialises float32 logits for every token of the batch (4
bytes x vocabulary per token: 200 MB for 4 x 256 tokens of a 49k vocabulary) and autograd
keeps them, their log-softmax and both gradients. Here the head runs on ``chunk`` tokens at a
time from the decoder's final hidden states.

For the usual frozen head (a plain ``nn.Linear``, tied or not, no LoRA on it) the loss and
its gradient with respect to the hidden states are computed together in the forward pass
(the "fused linear cross-entropy" of Liger-Kernel and Apple's Cut Cross-Entropy, whose
kernels are Triton/CUDA only, hence this short torch version): per chunk one GEMM for the
logits and one for the gradient, as in the plain path, and only a ``tokens x hidden``
gradient is kept for backward. Any other head (packed, trainable) goes through activation
checkpointing per chunk: the same memory, one more head GEMM in backward.

Targets follow transformers' ``ForCausalLMLoss``: labels shifted left, ``-100`` ignored,
the mean over the remaining tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack (``model.model`` of a ``*ForCausalLM``, under peft too) and the LM head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` labels -> ``[B * L]`` next-token targets; the last position of each row is ignored."""
    return F.pad(labels, (0, 1), value=IGNORE)[:, 1:].reshape(-1)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    kind = h.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else h.dtype


class _FrozenHeadCE(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T`` against ``targets``; ``weight`` frozen."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int):  # noqa: D102 - autograd protocol
        dtype = _compute_dtype(h)
        acc = torch.promote_types(dtype, torch.float32)  # softmax and sums: float32 or wider
        w = weight.to(dtype)
        count = (targets != IGNORE).sum()
        total = torch.zeros((), dtype=acc, device=h.device)
        grad = torch.empty(h.shape, dtype=dtype, device=h.device) if ctx.needs_input_grad[0] else None
        for s in range(0, h.shape[0], chunk):
            t = targets[s : s + chunk]
            valid = t != IGNORE
            t = t.clamp(min=0)
            logp = torch.log_softmax((h[s : s + chunk].to(dtype) @ w.t()).to(acc), dim=-1)
            total -= logp.gather(1, t[:, None]).squeeze(1)[valid].sum()
            if grad is not None:
                # d(mean CE)/dh = (softmax - onehot) @ W / count; the one-hot term is W[t].
                probs = torch.exp(logp, out=torch.empty(logp.shape, dtype=dtype, device=h.device))
                del logp
                g = (probs @ w).to(acc) - w[t].to(acc)
                del probs
                grad[s : s + chunk] = (g * (valid[:, None].to(acc) / count)).to(dtype)
            else:
                del logp  # each chunk's buffers go before the next chunk's exist
        ctx.save_for_backward(grad)
        ctx.h_dtype = h.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102 - autograd protocol
        (grad,) = ctx.saved_tensors
        return (grad * grad_out).to(ctx.h_dtype), None, None, None


def _chunk_nll_sum(head: nn.Module, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    logits = head(h)
    acc = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(acc), t, ignore_index=IGNORE, reduction="sum")


def head_cross_entropy(
    h: torch.Tensor, head: nn.Module, targets: torch.Tensor, *, chunk: int
) -> torch.Tensor:
    """Mean next-token cross-entropy of ``head(h)``, ``h``: ``[N, hidden]``, ``chunk`` tokens at a time."""
    weight = getattr(head, "weight", None)
    frozen_linear = type(head) is nn.Linear and head.bias is None and not weight.requires_grad
    if frozen_linear:
        return _FrozenHeadCE.apply(h, weight, targets, chunk)
    total = 0
    for s in range(0, h.shape[0], chunk):
        total = total + checkpoint(
            _chunk_nll_sum, head, h[s : s + chunk], targets[s : s + chunk], use_reentrant=False
        )
    return total / (targets != IGNORE).sum()


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], *, chunk: int) -> torch.Tensor:
    """The loss ``model(**batch).loss`` computes, without materialising the batch's logits."""
    decoder, head = decoder_and_head(model)
    out = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
    h = out.last_hidden_state
    return head_cross_entropy(h.reshape(-1, h.shape[-1]), head, shifted_targets(batch["labels"]), chunk=chunk)


@torch.no_grad()
def token_nll(h: torch.Tensor, head: nn.Module, targets: torch.Tensor, *, chunk: int) -> torch.Tensor:
    """Per-token negative log-likelihood (``[N]``, float32 or wider) of ``targets`` under ``head(h)``.

    ``targets`` must all be valid token ids; callers select the positions they score.
    """
    acc = torch.promote_types(h.dtype, torch.float32)
    out = torch.empty(h.shape[0], dtype=acc, device=h.device)
    for s in range(0, h.shape[0], chunk):
        logits = head(h[s : s + chunk]).to(acc)
        t = targets[s : s + chunk, None]
        out[s : s + chunk] = (torch.logsumexp(logits, dim=-1, keepdim=True) - logits.gather(1, t)).squeeze(1)
    return out
