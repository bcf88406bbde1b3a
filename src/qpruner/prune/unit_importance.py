"""Importance of head units and MLP channels, LLM-Pruner's estimators.

For a unit made of weights ``W_k`` (all coupled rows/columns), removing it changes the
loss by ``ΔL ≈ -g·w + ½ w·H·w``. The estimators are:

- ``taylor``: element-wise first order, ``Σ |w·g|`` over the unit;
- ``taylor2``: element-wise with the diagonal Fisher ``F = E[g²]`` standing in for the
  Hessian, ``Σ |w·g − ½·w²·F|`` (``|ΔL|`` of zeroing each weight);
- ``taylor_vector``: first order for the unit as one vector, ``|Σ w·g|``;
- ``l1`` / ``l2``: weight magnitude, ``Σ |w|`` / ``sqrt(Σ w²)``;
- ``random``: the baseline every estimator must beat.
"""

from __future__ import annotations

import torch
from torch import nn

from qpruner.prune.structure import CHANNEL_COUPLINGS, Coupling, head_couplings

# name of a parameter inside a decoder layer -> (mean gradient, mean squared gradient or None)
LayerGrads = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


def _salience(method: str, w: torch.Tensor, g: torch.Tensor | None, f: torch.Tensor | None) -> torch.Tensor:
    w = w.float()
    if method == "l1":
        return w.abs()
    if method == "l2":
        return w * w
    assert g is not None, f"{method} needs gradients"
    wg = w * g.float()
    if method == "taylor":
        return wg.abs()
    if method == "taylor_vector":
        return wg
    if method == "taylor2":
        assert f is not None, "taylor2 needs the squared-gradient accumulator"
        return (wg - 0.5 * w * w * f.float()).abs()
    raise ValueError(f"unknown importance {method!r}")


def _coupled_scores(
    layer: nn.Module, couplings: list[Coupling], method: str, grads: LayerGrads | None
) -> torch.Tensor:
    total = None
    for c in couplings:
        lin = layer.get_submodule(c.module)
        parts = [("weight", lin.weight)]
        if lin.bias is not None and c.dim == 0:
            parts.append(("bias", lin.bias))
        per_index = None
        for pname, p in parts:
            g, f = grads.get(f"{c.module}.{pname}", (None, None)) if grads else (None, None)
            s = _salience(method, p.detach(), g, f)
            s = s if s.dim() == 1 else s.sum(dim=1 - c.dim)
            per_index = s if per_index is None else per_index + s
        unit = per_index.reshape(-1, c.span).sum(dim=1)
        total = unit if total is None else total + unit
    if method == "taylor_vector":
        total = total.abs()
    elif method == "l2":
        total = total.sqrt()
    return total.cpu()


def layer_scores(
    layer: nn.Module,
    method: str,
    head_mode: str,
    grads: LayerGrads | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score per head unit, score per MLP channel) for one decoder layer; higher = keep."""
    attn = layer.self_attn
    if method == "random":
        n_units = (
            attn.k_proj.out_features // attn.head_dim
            if head_mode == "group"
            else (attn.q_proj.out_features // attn.head_dim)
        )
        return torch.rand(n_units, generator=generator), torch.rand(
            layer.mlp.up_proj.out_features, generator=generator
        )
    heads = _coupled_scores(layer, head_couplings(attn, head_mode), method, grads)
    channels = _coupled_scores(layer, CHANNEL_COUPLINGS, method, grads)
    return heads, channels
