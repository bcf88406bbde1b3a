"""Gradient statistics for Taylor importance without holding a second model in memory.

Only the projections of the layers being scored require gradients. Each parameter's
gradient is folded into a running mean (and mean square, for the Fisher diagonal) by a
post-accumulate hook the moment backward produces it, and ``.grad`` is dropped at once,
so at no time do full-model ``.grad`` tensors exist next to the accumulators. With
``chunk`` layers per pass the accumulators cover only that many layers at a time, which
keeps a 7B model within ~2x its own memory even for ``taylor2`` (at the cost of one
pass over the calibration samples per chunk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from qpruner.architecture import decoder_layers, model_device
from qpruner.prune.unit_importance import LayerGrads

SCORED_MODULES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def _scored_parameters(
    layers: nn.ModuleList, layer_indices: list[int]
) -> dict[nn.Parameter, tuple[int, str]]:
    """Each parameter to score with its (layer, name): the hooks and the result both key on it."""
    targets: dict[nn.Parameter, tuple[int, str]] = {}
    for i in layer_indices:
        for mod in SCORED_MODULES:
            lin = layers[i].get_submodule(mod)
            for pname, p in (("weight", lin.weight), ("bias", lin.bias)):
                if p is not None:
                    targets[p] = (i, f"{mod}.{pname}")
    return targets


def _folding_hook(
    acc: dict[nn.Parameter, list], n_batches: int, fisher: bool
) -> Callable[[nn.Parameter], None]:
    """A post-accumulate hook that folds ``.grad`` into ``acc`` and drops it at once, so full
    ``.grad`` tensors never sit beside the accumulators."""

    def fold(p: nn.Parameter) -> None:
        g = p.grad
        p.grad = None
        # 16-bit models keep 16-bit accumulators (memory); fp32 stays fp32.
        g = g.detach() / n_batches
        if p not in acc:
            acc[p] = [g.clone(), (g * g * n_batches) if fisher else None]
        else:
            acc[p][0].add_(g)
            if fisher:
                acc[p][1].add_(g * g * n_batches)

    return fold


@contextmanager
def _gradients_only_into(
    model: nn.Module, targets: dict[nn.Parameter, tuple[int, str]], hook: Callable[[nn.Parameter], None]
) -> Iterator[None]:
    """Only ``targets`` require gradients, each folded by ``hook``, in eval mode; the caller's
    flags, mode and empty ``.grad`` come back even after an error, as scoring must leave the model
    as it found it."""
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    handles = []
    try:
        for p in model.parameters():
            p.requires_grad_(p in targets)
        handles = [p.register_post_accumulate_grad_hook(hook) for p in targets]
        model.eval()  # no dropout: scores must be deterministic for a given sample set
        yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)


def _backward_passes(
    model: nn.Module, samples: torch.Tensor, micro_batch: int, *, n_batches: int, desc: str, progress: bool
) -> None:
    """Back-propagate the causal-LM loss of each micro-batch; the hooks do the accumulating."""
    device = model_device(model)
    bar = tqdm(total=n_batches, desc=desc, disable=not progress, leave=False)
    with torch.enable_grad():
        for b in range(n_batches):
            mb = samples[b * micro_batch : (b + 1) * micro_batch].to(device)
            loss = model(input_ids=mb, labels=mb, use_cache=False).loss
            loss.backward()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()


def accumulate_gradients(
    model: nn.Module,
    samples: torch.Tensor,
    layer_indices: list[int],
    fisher: bool,
    micro_batch: int = 1,
    progress: bool = True,
) -> dict[int, LayerGrads]:
    """Mean gradient (and mean squared gradient if ``fisher``) of the causal-LM loss.

    The mean gradient is over the whole calibration batch (what LLM-Pruner back-propagates);
    the squared gradient is averaged over micro-batches, the empirical Fisher with
    ``micro_batch=1`` giving per-sample terms.
    """
    targets = _scored_parameters(decoder_layers(model), layer_indices)
    n_batches = (samples.shape[0] + micro_batch - 1) // micro_batch
    acc: dict[nn.Parameter, list] = {}
    with _gradients_only_into(model, targets, _folding_hook(acc, n_batches, fisher)):
        _backward_passes(
            model,
            samples,
            micro_batch,
            n_batches=n_batches,
            desc=f"gradients L{layer_indices[0]}-{layer_indices[-1]}",
            progress=progress,
        )
    out: dict[int, LayerGrads] = {i: {} for i in layer_indices}
    for p, (g, f) in acc.items():
        i, name = targets[p]
        out[i][name] = (g, f)
    return out
