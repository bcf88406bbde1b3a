"""Layer importance for QPruner's bit allocation: which decoder layers matter to the prediction.

``mi`` (QPruner's measure): the mutual information between what a layer *adds* to the
residual stream (its output minus its input, per token) and the model's prediction (the
argmax token). Estimated with a plug-in estimator on discretised variables: each layer's
contributions are randomly projected to at most 32 dimensions and clustered by seeded
k-means into ``n_clusters`` cells; the prediction is binned into the ``n_classes - 1`` most
frequent tokens plus "other"; MI = H(X) + H(Y) − H(X, Y) in nats with the Miller–Madow
bias correction. Why this estimator: it costs one forward pass, and every layer is measured
with the same tokens and the same numbers of cells, so the scores are comparable across
layers even though plug-in MI is biased in absolute terms. A layer whose contribution is
constant (it adds nothing) scores exactly 0.

``taylor``: first-order Taylor importance of the whole layer, Σ |w · ∂L/∂w| over its seven
linear weights on the causal-LM loss (LLM-Pruner's estimate of the loss change if the layer
were removed), reusing the pruning stage's low-memory gradient accumulation.

``sensitivity``: measured, not a proxy: the loss each layer costs when it alone is quantized
to 2 and 3 bits, untrained (:mod:`qpruner.search.sensitivity`). Dearer (one forward pass per
layer and width) but it is the quantity the allocation trades; :func:`layer_profile` puts it
beside MI and Taylor with their Spearman correlation.

``random``: seeded uniform scores, the baseline.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from qpruner.architecture import decoder_layers, model_device
from qpruner.errors import QPrunerError
from qpruner.search.sensitivity import measure_sensitivity, spearman

METHODS = ("mi", "taylor", "sensitivity", "random")
MAX_TOKENS = 4096  # contributions kept per layer (seeded subsample): bounds memory on big models
PROJ_DIM = 32


def _kmeans(x: torch.Tensor, k: int, gen: torch.Generator, *, iters: int = 15) -> torch.Tensor:
    """Cluster labels of the rows of ``x`` (k-means++ seeding, Lloyd iterations)."""
    n = x.shape[0]
    k = min(k, n)
    centers = x[torch.randint(n, (1,), generator=gen)]
    for _ in range(1, k):
        d = torch.cdist(x, centers).min(dim=1).values ** 2
        if float(d.sum()) == 0.0:
            break  # all remaining points coincide with a centre
        centers = torch.cat([centers, x[torch.multinomial(d / d.sum(), 1, generator=gen)]])
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        labels = torch.cdist(x, centers).argmin(dim=1)
        for j in range(centers.shape[0]):
            members = x[labels == j]
            if len(members):
                centers[j] = members.mean(dim=0)
    return labels


def _entropy(counts: torch.Tensor) -> float:
    """Plug-in entropy (nats) with the Miller–Madow correction (+ (occupied − 1) / 2N)."""
    counts = counts[counts > 0].double()
    n = float(counts.sum())
    p = counts / n
    return float(-(p * p.log()).sum()) + (counts.numel() - 1) / (2 * n)


def mutual_information(x: torch.Tensor, y: torch.Tensor) -> float:
    """MI (nats, clamped at 0) between two discrete label vectors."""
    joint = x * (int(y.max()) + 1) + y
    mi = _entropy(torch.bincount(x)) + _entropy(torch.bincount(y)) - _entropy(torch.bincount(joint))
    return max(0.0, mi)


def _batches(samples: torch.Tensor, micro_batch: int, desc: str, *, progress: bool):
    n = (samples.shape[0] + micro_batch - 1) // micro_batch
    for b in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        yield samples[b * micro_batch : (b + 1) * micro_batch]


def _mi_scores(
    model: nn.Module,
    samples: torch.Tensor,
    *,
    n_clusters: int,
    n_classes: int,
    seed: int,
    micro_batch: int,
    progress: bool,
) -> list[float]:
    layers = decoder_layers(model)
    contributions: list[list[torch.Tensor]] = [[] for _ in layers]
    gen = torch.Generator().manual_seed(seed)
    n, seq_len = samples.shape
    # Sample the token positions up front and keep only those in the hooks: memory is
    # bounded by MAX_TOKENS x hidden per layer, never by the size of the calibration set.
    keep = torch.randperm(n * seq_len, generator=gen)[:MAX_TOKENS].sort().values
    device = model_device(model)
    rows = torch.empty(0, dtype=torch.long)  # flat positions of the current micro-batch to keep

    def hook(i: int):
        def fn(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            delta = (h_out - h_in).detach().reshape(-1, h_out.shape[-1])
            contributions[i].append(delta[rows.to(delta.device)].float().cpu())

        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    preds = []
    try:
        with torch.no_grad():
            for b, mb in enumerate(_batches(samples, micro_batch, "importance (mi)", progress=progress)):
                start = b * micro_batch * seq_len
                in_batch = keep[(keep >= start) & (keep < start + mb.numel())]
                rows = in_batch - start
                logits = model(input_ids=mb.to(device), use_cache=False).logits
                preds.append(logits.argmax(dim=-1).reshape(-1)[rows.to(logits.device)].cpu())
    finally:
        for h in handles:
            h.remove()
    y_tok = torch.cat(preds)
    values, counts = torch.unique(y_tok, return_counts=True)
    top = values[counts.argsort(descending=True)[: n_classes - 1]]
    y = torch.full_like(y_tok, len(top))  # "other"
    for c, tok in enumerate(top.tolist()):
        y[y_tok == tok] = c
    scores = []
    for chunks in contributions:
        x = torch.cat(chunks)
        proj = torch.randn(x.shape[1], min(PROJ_DIM, x.shape[1]), generator=gen) / math.sqrt(x.shape[1])
        scores.append(mutual_information(_kmeans(x @ proj, n_clusters, gen), y))
    return scores


def _taylor_scores(
    model: nn.Module, samples: torch.Tensor, *, micro_batch: int, progress: bool
) -> list[float]:
    from qpruner.prune.gradients import SCORED_MODULES, accumulate_gradients

    layers = decoder_layers(model)
    grads = accumulate_gradients(
        model, samples, list(range(len(layers))), fisher=False, micro_batch=micro_batch, progress=progress
    )
    scores = []
    for i, layer in enumerate(layers):
        total = 0.0
        for mod in SCORED_MODULES:
            lin = layer.get_submodule(mod)
            g = grads[i].get(f"{mod}.weight")
            if g is not None:
                total += float((lin.weight.detach().float() * g[0].float()).abs().sum())
        scores.append(total)
    return scores


def layer_importance(
    model: nn.Module,
    samples: torch.Tensor,
    method: str = "mi",
    *,
    n_clusters: int = 16,
    n_classes: int = 16,
    seed: int = 0,
    micro_batch: int = 4,
    progress: bool = False,
) -> list[float]:
    """One non-negative score per decoder layer (higher = more important); see the module docstring."""
    if method not in METHODS:
        raise QPrunerError(f"unknown layer importance {method!r}; choose from {', '.join(METHODS)}")
    if samples.dim() != 2 or samples.shape[0] < 1 or samples.shape[1] < 2:
        raise QPrunerError(
            f"layer importance needs calibration samples [n, seq_len >= 2], got {tuple(samples.shape)}"
        )
    n_layers = len(decoder_layers(model))
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(n_layers, generator=gen, dtype=torch.float64).tolist()
    was_training = model.training
    model.eval()
    try:
        if method == "sensitivity":
            return measure_sensitivity(model, samples, micro_batch=micro_batch, progress=progress).scores()
        if method == "mi":
            return _mi_scores(model, samples, n_clusters=n_clusters, n_classes=n_classes, seed=seed,
                              micro_batch=micro_batch, progress=progress)  # fmt: skip
        return _taylor_scores(model, samples, micro_batch=micro_batch, progress=progress)
    finally:
        model.train(was_training)


def layer_profile(
    model: nn.Module,
    samples: torch.Tensor,
    *,
    seed: int = 0,
    micro_batch: int = 4,
    progress: bool = False,
) -> dict:
    """Measured sensitivity beside MI and Taylor importance, with each proxy's Spearman ρ
    against the measured Δ loss at each width: what the report's sensitivity figure shows."""
    proxies, seconds = {}, {}
    for method in ("mi", "taylor"):
        t0 = time.perf_counter()
        proxies[method] = layer_importance(model, samples, method, seed=seed, micro_batch=micro_batch)
        seconds[method] = time.perf_counter() - t0
    sens = measure_sensitivity(model, samples, micro_batch=micro_batch, progress=progress)
    seconds["sensitivity"] = sens.seconds
    rho = {
        f"{method} vs {b}-bit": spearman(scores, sens.column(b))
        for method, scores in proxies.items()
        for b in sens.bits
    }
    return {"sensitivity": sens.to_dict(), **proxies, "spearman": rho, "seconds": seconds}
