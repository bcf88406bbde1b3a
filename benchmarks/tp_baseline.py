"""Torch-Pruning 1.6.1 as a peer baseline for ``prune_bench.py --model``, restricted to what qpruner removes.

Torch-Pruning (``pip install torch-pruning==1.6.1``, the ``bench`` extra) traces the model into a
dependency graph and prunes whole coupled groups. Its LLM example (``examples/LLMs/prune_llm.py``)
removes query heads (``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``), MLP
channels *and the hidden width* of every layer. To compare like with like, it is configured here
to remove only what qpruner removes, in the same layers and in the same amounts:

- the hidden (residual) width is kept: ``o_proj``, ``down_proj`` and ``lm_head`` are
  ``ignored_layers`` as roots, and every layer outside ``[start, end)`` is ignored;
- MLP channels: ``pruning_ratio_dict`` gives each pruned layer's ``gate_proj`` the ratio that
  keeps exactly qpruner's channel count (Torch-Pruning truncates, qpruner rounds);
- heads: ``head_pruning_ratio_dict`` on ``q_proj``. Under GQA Torch-Pruning removes the same
  number of *query* heads from every KV group and never prunes ``k_proj``/``v_proj`` (it clears
  their indices): the structure of qpruner's ``--head-mode query``, not of its default ``group``
  mode (a whole KV head with its query heads). When the cut leaves one query head per KV group
  (3 of 9 heads, our 50 %), 1.6.1 removes no head at all, silently: after the cut it counts
  query heads == KV heads, takes the layer for plain multi-head attention, lets the group reach
  into ``k_proj``/``v_proj``, and its group check then drops the whole attention group. The
  benchmark marks such rows and compares them with qpruner pruning MLP channels only;
- importance: ``GroupTaylorImportance`` (Σ|w·g| per coupled row/column, averaged over the
  group's layers) from ``.grad`` of the causal-LM loss on the same calibration windows, or
  ``GroupMagnitudeImportance(p=2)`` (the LLM example's choice), ranked per layer
  (``global_pruning=False``).

Two things the transformers 5 model needs before Torch-Pruning can trace it: ``use_cache=False``
(the KV cache's ``torch.cat`` makes the graph walk never finish) and eager attention (SDPA's
built-in GQA hides the KV repeat, so head groups come out wrong). Both are set for tracing
only and restored. Afterwards each attention's ``num_key_value_groups`` is set from the new
widths, which Torch-Pruning's example also does by hand.
"""

from __future__ import annotations

import statistics
import time
from importlib import metadata

import torch
from torch import nn

try:
    import torch_pruning as tp
except ImportError:  # an optional benchmark dependency
    tp = None

METHODS = {"taylor": "GroupTaylorImportance", "l2": "GroupMagnitudeImportance(p=2)"}
MISSING = (
    "torch-pruning is not installed (pip install torch-pruning==1.6.1, or pip install -e '.[bench]'): "
    "skipping its rows"
)


def tp_version() -> str | None:
    """The installed distribution's version (its ``__version__`` says 1.6.0 in the 1.6.1 wheel)."""
    if tp is None:
        return None
    try:
        return metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        return getattr(tp, "__version__", "unknown")


def _taylor_gradients(model: nn.Module, samples: torch.Tensor) -> None:
    """``.grad`` = mean over the calibration windows (one per pass) of the loss gradient.

    This is Torch-Pruning's documented way (``loss.backward()`` before ``step``): every
    parameter gets a full ``.grad``, embeddings included.
    """
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for row in samples:
            ids = row.unsqueeze(0)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss / samples.shape[0]
            loss.backward()


def _pruner(model: nn.Module, layer_range: range, keep_heads_per_group: int, keep_channels: int, method):
    cfg, layers = model.config, model.model.layers
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    removed_heads = (groups - keep_heads_per_group) * cfg.num_key_value_heads
    # Torch-Pruning removes ceil(ceil(r * heads) / kv) query heads per KV group, and keeps
    # int(I * (1 - r)) channels: the ratios below land exactly on qpruner's counts.
    head_ratio = (removed_heads - 0.5) / cfg.num_attention_heads
    mlp_ratio = 1.0 - (keep_channels + 0.5) / cfg.intermediate_size
    num_heads, ratios, head_ratios = {}, {}, {}
    for i, layer in enumerate(layers):
        a = layer.self_attn
        num_heads[a.q_proj] = cfg.num_attention_heads
        num_heads[a.k_proj] = num_heads[a.v_proj] = cfg.num_key_value_heads
        if i in layer_range:
            if removed_heads:
                ratios[a.q_proj] = head_ratios[a.q_proj] = head_ratio  # >0 so the group is visited
            if keep_channels < cfg.intermediate_size:
                ratios[layer.mlp.gate_proj] = mlp_ratio
    ignored = [model.lm_head] + [m for layer in layers for m in (layer.self_attn.o_proj, layer.mlp.down_proj)]
    ignored += [layer for i, layer in enumerate(layers) if i not in layer_range]
    importance = (
        tp.importance.GroupTaylorImportance()
        if method == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    return tp.pruner.BasePruner(
        model,
        example_inputs=torch.zeros(1, 16, dtype=torch.long),
        importance=importance,
        global_pruning=False,
        pruning_ratio=0.0,  # nothing outside the dicts below (the hidden width stays)
        pruning_ratio_dict=ratios,
        ignored_layers=ignored,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=0.0,
        head_pruning_ratio_dict=head_ratios,
        # fresh dicts: the defaults are shared mutable ``dict()``s that BasePruner updates in
        # place, so every later pruner would hold (and keep alive) the earlier models' modules
        in_channel_groups={},
        out_channel_groups={},
        output_transform=lambda out: out.logits,
    )


def tp_prune(
    model: nn.Module,
    method: str,
    layer_range: range,
    keep_heads_per_group: int,
    keep_channels: int,
    samples: torch.Tensor,
) -> dict:
    """Prune ``model`` in place with Torch-Pruning; returns the seconds of each phase."""
    if tp is None:
        raise RuntimeError(MISSING)
    cfg = model.config
    attn_impl, use_cache = cfg._attn_implementation, cfg.use_cache
    model.eval()
    t0 = time.perf_counter()
    if method == "taylor":
        _taylor_gradients(model, samples)
    t1 = time.perf_counter()
    try:
        cfg.use_cache, cfg._attn_implementation = False, "eager"
        pruner = _pruner(model, layer_range, keep_heads_per_group, keep_channels, method)
        t2 = time.perf_counter()
        for group in pruner.step(interactive=True):
            group.prune()
    finally:
        cfg.use_cache, cfg._attn_implementation = use_cache, attn_impl
    del pruner
    model.zero_grad(set_to_none=True)
    for layer in model.model.layers:
        a = layer.self_attn
        a.num_key_value_groups = a.q_proj.out_features // a.k_proj.out_features
        layer.mlp.intermediate_size = layer.mlp.gate_proj.out_features
    t3 = time.perf_counter()
    return {"gradients": t1 - t0, "graph": t2 - t1, "prune": t3 - t2}


def _row_index(dense: torch.Tensor, pruned: torch.Tensor, span: int) -> list[int]:
    """Which ``span``-row blocks of ``dense`` the rows of ``pruned`` are (exact copies)."""
    where = {dense[k : k + span].numpy().tobytes(): k // span for k in range(0, dense.shape[0], span)}
    return [where[pruned[k : k + span].numpy().tobytes()] for k in range(0, pruned.shape[0], span)]


def kept_units(dense: nn.Module, pruned: nn.Module, layer_range: range) -> dict[str, dict]:
    """Kept query heads, KV heads and MLP channels per pruned layer, read off the weights.

    Tool-agnostic (both tools copy kept rows unchanged), so the two tools' choices can be
    compared index by index. Channels are stored as a hex bit mask.
    """
    out = {}
    with torch.no_grad():
        for i in layer_range:
            d, p = dense.model.layers[i], pruned.model.layers[i]
            hd = d.self_attn.head_dim
            q = _row_index(d.self_attn.q_proj.weight.detach(), p.self_attn.q_proj.weight.detach(), hd)
            kv = _row_index(d.self_attn.k_proj.weight.detach(), p.self_attn.k_proj.weight.detach(), hd)
            ch = _row_index(d.mlp.gate_proj.weight.detach(), p.mlp.gate_proj.weight.detach(), 1)
            out[str(i)] = {"q": sorted(q), "kv": sorted(kv), "mlp": hex(sum(1 << c for c in ch))}
    return out


def agreement(a: dict, b: dict) -> dict[str, float]:
    """Kept query heads and MLP channels in common, over the larger of the two kept sets (summed
    over layers): 1.0 only when both tools keep exactly the same units."""
    common = sum(len(set(a[i]["q"]) & set(b[i]["q"])) for i in a)
    heads = common / max(1, sum(max(len(a[i]["q"]), len(b[i]["q"])) for i in a))
    ones = lambda x: bin(int(x, 16)).count("1")  # noqa: E731
    common = sum(ones(hex(int(a[i]["mlp"], 16) & int(b[i]["mlp"], 16))) for i in a)
    channels = common / max(1, sum(max(ones(a[i]["mlp"]), ones(b[i]["mlp"])) for i in a))
    return {"heads": heads, "channels": channels}


def like_for_like(rows: list[dict]) -> list[str]:
    """One line per (Torch-Pruning row, qpruner row) pair that removed the same structure with
    the same estimator at the same ratio: how far their choices, perplexity and cost agree."""
    lines = []
    med = statistics.median
    for r in rows:
        if r["tool"] != "torch-pruning":
            continue
        shape = (r["ratio"], r["importance"], r["heads"], r["kv_heads"], r["mlp"])
        for o in rows:
            if (
                o["tool"] != "qpruner"
                or (o["ratio"], o["importance"], o["heads"], o["kv_heads"], o["mlp"]) != shape
            ):
                continue
            agree = agreement(o["kept"], r["kept"])
            lines.append(
                f"{r['ratio']:.1f} {r['method']} vs {o['method']}: same query heads "
                f"{100 * agree['heads']:.1f}%, same MLP channels {100 * agree['channels']:.1f}%; "
                f"ppl {r['ppl']:.2f} vs {o['ppl']:.2f}; "
                f"median prune time {med(r['seconds']) / med(o['seconds']):.2f}x (wall), "
                f"{med(r['cpu_seconds']) / med(o['cpu_seconds']):.2f}x (CPU); peak RSS "
                f"{med(r['peak_growth']) / 2**20:.0f} vs {med(o['peak_growth']) / 2**20:.0f} MiB"
            )
    return lines
