"""Structured pruning of a LLaMA-layout model: score, select, slice."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from qpruner.architecture import LayerShape, check_supported, decoder_layers, layer_shape, layer_shapes
from qpruner.errors import QPrunerError
from qpruner.eval.size import model_size
from qpruner.prune.config import LayerTarget, PruneConfig, effective_head_mode, layer_targets
from qpruner.prune.gradients import accumulate_gradients
from qpruner.prune.structure import slice_layer
from qpruner.prune.unit_importance import layer_scores


@dataclass
class LayerPruning:
    """What one layer kept, in the layer's indices before pruning."""

    layer: int
    kept_heads: list[int]
    kept_kv_heads: list[int]
    kept_channels: list[int]
    before: LayerShape
    after: LayerShape


@dataclass
class PruneResult:
    config: PruneConfig
    layers: list[LayerPruning]
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    seconds: float

    def to_dict(self, with_indices: bool = True) -> dict:
        d = asdict(self)
        if not with_indices:
            for layer in d["layers"]:
                for k in ("kept_heads", "kept_kv_heads", "kept_channels"):
                    layer.pop(k)
        return d


def default_grad_chunk(importance: str, n_layers: int) -> int:
    """Layers per gradient pass when the user does not say.

    Measured on a TinyLlama-shaped model (benchmarks/prune_memory.py): one pass peaks at
    1.85x the model's bytes for ``taylor`` (one accumulator) but 2.61x for ``taylor2`` (two),
    so ``taylor2`` scores half the layers per pass to stay under ~2x.
    """
    return max(1, n_layers if importance != "taylor2" else (n_layers + 1) // 2)


def _top(scores: torch.Tensor, k: int) -> list[int]:
    order = torch.argsort(scores, descending=True, stable=True)
    return sorted(order[:k].tolist())


def _head_mode(layer: nn.Module, mode: str) -> str:
    return effective_head_mode(mode, layer.self_attn.num_key_value_groups)


def _select(
    layer: nn.Module, target: LayerTarget, head_mode: str, heads: torch.Tensor, channels: torch.Tensor
):
    """Kept (query heads, KV heads, channels); ``head_mode`` is the layer's effective mode."""
    shape = layer_shape(layer)
    groups = shape.num_attention_heads // shape.num_key_value_heads
    if head_mode == "group":
        kv = _top(heads, target.keep_kv_heads)
        q = [k * groups + j for k in kv for j in range(groups)]
    else:
        per_group = target.keep_heads // target.keep_kv_heads
        kv = list(range(shape.num_key_value_heads))
        q = []
        for k in kv:
            local = _top(heads[k * groups : (k + 1) * groups], per_group)
            q += [k * groups + j for j in local]
    return q, kv, _top(channels, target.keep_channels)


def _layers_to_prune(targets: list[LayerTarget], shapes: list[LayerShape]) -> list[int]:
    """Layers whose target differs from their shape: only these are scored, so a layer kept
    whole costs no gradient pass and consumes no random scores."""
    return [
        t.layer
        for t, s in zip(targets, shapes, strict=True)
        if (t.keep_heads, t.keep_kv_heads, t.keep_channels)
        != (s.num_attention_heads, s.num_key_value_heads, s.intermediate_size)
    ]


def _kept_whole(layer: int, shape: LayerShape) -> LayerPruning:
    """The record of a layer left as it was, so every layer has one and they all read alike."""
    return LayerPruning(
        layer,
        list(range(shape.num_attention_heads)),
        list(range(shape.num_key_value_heads)),
        list(range(shape.intermediate_size)),
        shape,
        shape,
    )


def _choose_units(
    model: nn.Module,
    layers: nn.ModuleList,
    todo: list[int],
    *,
    config: PruneConfig,
    targets: list[LayerTarget],
    samples: torch.Tensor | None,
    bar: tqdm,
    progress: bool,
) -> dict[int, tuple[list[int], list[int], list[int]]]:
    """Kept (query heads, KV heads, channels) of each layer in ``todo``, on the unpruned model.

    Gradients are held for one chunk of layers at a time (memory); one generator runs through
    ``todo`` in order across the chunks, so the chunking does not change the random scores.
    """
    gen = torch.Generator().manual_seed(config.seed)
    chunk = config.grad_chunk_layers or default_grad_chunk(config.importance, len(todo))
    chosen = {}
    for c in range(0, len(todo), chunk):
        part = todo[c : c + chunk]
        grads = None
        if config.needs_gradients:
            grads = accumulate_gradients(
                model,
                samples,
                part,
                fisher=config.importance == "taylor2",
                micro_batch=config.micro_batch,
                progress=progress,
            )
        for i in part:
            mode = _head_mode(layers[i], config.head_mode)
            heads, channels = layer_scores(
                layers[i], config.importance, mode, grads[i] if grads else None, gen
            )
            chosen[i] = _select(layers[i], targets[i], mode, heads, channels)
            bar.update(1)
        del grads
    return chosen


def _prune_layers(
    model: nn.Module,
    config: PruneConfig,
    todo: list[int],
    *,
    targets: list[LayerTarget],
    samples: torch.Tensor | None,
    progress: bool,
) -> dict[int, LayerPruning]:
    """Slice the layers in ``todo``, having scored every one of them on the unpruned model first
    (only the small score vectors are kept), so that scoring in chunks gives exactly what one
    pass would."""
    layers = decoder_layers(model)
    bar = tqdm(total=len(todo), desc=f"score ({config.importance})", unit="layer", disable=not progress)
    chosen = _choose_units(
        model, layers, todo, config=config, targets=targets, samples=samples, bar=bar, progress=progress
    )
    results: dict[int, LayerPruning] = {}
    for i in todo:
        q, kv, ch = chosen[i]
        before = layer_shape(layers[i])
        slice_layer(layers[i], q, kv, ch)
        results[i] = LayerPruning(i, q, kv, ch, before, layer_shape(layers[i]))
    bar.close()
    return results


def prune_model(
    model: nn.Module,
    config: PruneConfig,
    samples: torch.Tensor | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` in place per ``config``; ``samples`` ([N, L] token ids) feed Taylor methods."""
    check_supported(model)
    t0 = time.perf_counter()
    size_before = model_size(model)
    shapes = layer_shapes(model)
    targets = layer_targets(config, shapes)
    todo = _layers_to_prune(targets, shapes)
    if config.needs_gradients and todo and samples is None:
        raise QPrunerError(f"importance {config.importance!r} needs calibration data (--calib-data)")
    results = _prune_layers(model, config, todo, targets=targets, samples=samples, progress=progress)
    for i, s in enumerate(shapes):
        if i not in results:
            results[i] = _kept_whole(i, s)
    size_after = model_size(model)
    return PruneResult(
        config,
        [results[i] for i in range(len(shapes))],
        size_before.params,
        size_after.params,
        size_before.weight_bytes,
        size_after.weight_bytes,
        time.perf_counter() - t0,
    )
