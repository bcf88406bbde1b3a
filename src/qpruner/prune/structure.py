"""Coupled structures of a LLaMA-layout layer and the physical slicing that removes them.

A *head unit* is what must go together for attention to stay well-formed:
- ``group`` mode: KV head ``k`` with the ``G = heads / kv_heads`` query heads that read it
  (rows of q, k, v and the matching columns of o);
- ``query`` mode: one query head (rows of q, columns of o); every KV group loses the same
  number so ``num_key_value_groups`` stays one integer per layer.
An *MLP channel* ``c`` is row ``c`` of gate and up and column ``c`` of down.

This is the dependency graph LLM-Pruner discovers by tracing; for this fixed layout it is
known in advance, so we write it down instead of tracing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Coupling:
    """One tensor's part in a unit: which dim indexes units and how many rows each unit spans."""

    module: str  # e.g. "self_attn.q_proj"
    dim: int  # 0: output rows (weight rows, bias), 1: input columns
    span: int  # consecutive indices per unit along ``dim``


def head_couplings(attn: nn.Module, mode: str) -> list[Coupling]:
    hd = attn.head_dim
    groups = attn.num_key_value_groups
    if mode == "group":
        return [
            Coupling("self_attn.q_proj", 0, hd * groups),
            Coupling("self_attn.k_proj", 0, hd),
            Coupling("self_attn.v_proj", 0, hd),
            Coupling("self_attn.o_proj", 1, hd * groups),
        ]
    return [Coupling("self_attn.q_proj", 0, hd), Coupling("self_attn.o_proj", 1, hd)]


CHANNEL_COUPLINGS = [
    Coupling("mlp.gate_proj", 0, 1),
    Coupling("mlp.up_proj", 0, 1),
    Coupling("mlp.down_proj", 1, 1),
]


def _slice_linear(lin: nn.Linear, dim: int, index: torch.Tensor) -> nn.Linear:
    """A new Linear holding only ``index`` along ``dim`` (0 = outputs, 1 = inputs)."""
    index = index.to(lin.weight.device)
    w = lin.weight.detach().index_select(dim, index).clone()
    bias = lin.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index).clone()
    elif bias is not None:
        bias = bias.detach().clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight = nn.Parameter(w, requires_grad=lin.weight.requires_grad)
        if bias is not None:
            new.bias = nn.Parameter(bias, requires_grad=lin.bias.requires_grad)
    return new


def _rows(units: torch.Tensor, span: int) -> torch.Tensor:
    """Indices of the consecutive ``span`` rows of each unit."""
    return (units.unsqueeze(1) * span + torch.arange(span, device=units.device)).reshape(-1)


def slice_layer(
    layer: nn.Module, keep_q_heads: list[int], keep_kv_heads: list[int], keep_channels: list[int]
) -> None:
    """Physically remove everything not kept. Indices refer to the layer before slicing.

    Query heads must be grouped by their KV head (each kept KV head keeps the same number
    of its own query heads), which is what both head modes produce.
    """
    attn, mlp = layer.self_attn, layer.mlp
    hd = attn.head_dim
    old_groups = attn.num_key_value_groups
    q = torch.tensor(sorted(keep_q_heads), dtype=torch.long)
    kv = torch.tensor(sorted(keep_kv_heads), dtype=torch.long)
    owners = q // old_groups
    if set(owners.tolist()) != set(kv.tolist()):
        raise ValueError("kept query heads must belong to exactly the kept KV heads")
    counts = torch.bincount(owners)
    if len(set(counts[counts > 0].tolist())) != 1:
        raise ValueError("every kept KV head must keep the same number of query heads")
    q_rows, kv_rows = _rows(q, hd), _rows(kv, hd)
    attn.q_proj = _slice_linear(attn.q_proj, 0, q_rows)
    attn.k_proj = _slice_linear(attn.k_proj, 0, kv_rows)
    attn.v_proj = _slice_linear(attn.v_proj, 0, kv_rows)
    attn.o_proj = _slice_linear(attn.o_proj, 1, q_rows)
    attn.num_key_value_groups = len(q) // len(kv)
    ch = torch.tensor(sorted(keep_channels), dtype=torch.long)
    mlp.gate_proj = _slice_linear(mlp.gate_proj, 0, ch)
    mlp.up_proj = _slice_linear(mlp.up_proj, 0, ch)
    mlp.down_proj = _slice_linear(mlp.down_proj, 1, ch)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(ch)
