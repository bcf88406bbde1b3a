"""Perplexity over sliding windows, as LLM-Pruner reports WikiText-2/PTB numbers.

LLM-Pruner scores non-overlapping windows of 128 tokens. We default to the model's own
context (capped at 2048) and let callers set both the window (``ctx_len``) and the step
(``stride``): with ``stride < ctx_len`` every scored token sees at least
``ctx_len - stride`` tokens of context (the HF "sliding window" protocol) and every token
after the first is scored exactly once. With ``stride == ctx_len`` (LLM-Pruner's protocol)
the first token of each window has no context and is not scored.

The forward runs in the compute dtype (``auto``: bf16 autocast where bf16 matmuls are fast,
see :mod:`qpruner.compute`; perplexity moves by well under 0.5 %, tested) and the LM head only
on the scored positions, a chunk at a time (:func:`qpruner.lm_loss.token_nll`), so the
window's full float32 logits (8 x 2048 x 49k vocabulary: 3.2 GB) never exist.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qpruner.architecture import SUPPORTED_MODEL_TYPES, model_device
from qpruner.compute import autocast, prepared
from qpruner.device import resolve_compute_dtype
from qpruner.errors import QPrunerError
from qpruner.lm_loss import decoder_and_head, token_nll

HEAD_CHUNK = 512  # tokens per LM-head chunk: 512 x 49k vocabulary x 4 bytes = 100 MB of logits


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    tokens: int  # tokens scored
    ctx_len: int
    stride: int
    windows: int

    def to_dict(self) -> dict:
        return asdict(self)


def _windows(n: int, ctx_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) for each window over ``n`` tokens."""
    out = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + ctx_len, n)
        first = max(begin + 1, prev_end)
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    return out


def default_ctx_len(model: torch.nn.Module) -> int:
    return int(min(getattr(model.config, "max_position_embeddings", 2048) or 2048, 2048))


def _group_nll(model: torch.nn.Module, batch: torch.Tensor, starts: list[int]) -> list[torch.Tensor]:
    """Per row, the NLL of positions ``starts[row]``.. (index j scores token j + 1 of the row)."""
    if getattr(model.config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        # Architectures whose head is more than a linear map (logit scaling, soft-capping).
        logp = F.log_softmax(model(input_ids=batch).logits.float()[:, :-1], dim=-1)
        nll = -logp.gather(-1, batch[:, 1:].unsqueeze(-1)).squeeze(-1)
        return [nll[row, s:] for row, s in enumerate(starts)]
    decoder, head = decoder_and_head(model)
    h = decoder(input_ids=batch, use_cache=False).last_hidden_state
    picked = torch.cat([h[row, s:-1] for row, s in enumerate(starts)])
    targets = torch.cat([batch[row, s + 1 :] for row, s in enumerate(starts)])
    nll = token_nll(picked, head, targets, chunk=HEAD_CHUNK)
    return list(nll.split([batch.shape[1] - 1 - s for s in starts]))


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    ids: torch.Tensor,
    *,
    ctx_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None = None,
    progress: bool = True,
    compute_dtype: str = "auto",
) -> PerplexityResult:
    """Perplexity of ``model`` on the 1-D token tensor ``ids``; ``compute_dtype``: see the module doc."""
    ids = ids.reshape(-1)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = ids.numel()
    ctx_len = ctx_len or default_ctx_len(model)
    stride = stride or ctx_len
    if ctx_len < 2 or stride < 1 or stride > ctx_len:
        raise QPrunerError(
            f"need ctx_len >= 2 and 1 <= stride <= ctx_len, got ctx_len={ctx_len} stride={stride}"
        )
    if n < 2:
        raise QPrunerError(f"perplexity needs at least 2 tokens of text, got {n}")
    device = model_device(model)
    windows = _windows(n, ctx_len, stride)
    was_training = model.training
    model.eval()
    total_nll = 0.0
    total_tokens = 0
    # Batch only windows of one length together (all but possibly the last are full).
    groups: list[list[tuple[int, int, int]]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch_size and (groups[-1][0][1] - groups[-1][0][0]) == (w[1] - w[0]):
            groups[-1].append(w)
        else:
            groups.append([w])
    bar = tqdm(total=len(windows), desc="perplexity", unit="win", disable=not progress, leave=False)
    compute = resolve_compute_dtype(compute_dtype, device)
    try:
        with prepared(model, compute, device), autocast(compute, device):
            for group in groups:
                batch = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
                for scored in _group_nll(model, batch, [first - b - 1 for b, _e, first in group]):
                    total_nll += scored.double().sum().item()
                    total_tokens += scored.numel()
                bar.update(len(group))
    finally:
        bar.close()
        model.train(was_training)
    mean = total_nll / total_tokens
    return PerplexityResult(math.exp(mean), mean, total_tokens, ctx_len, stride, len(windows))
