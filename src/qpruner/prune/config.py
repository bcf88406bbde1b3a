"""Pruning settings and the per-layer schedule they imply.

Ratios follow LLM-Pruner: one ratio applied to every decoder layer in ``[layer_start,
layer_end)``, leaving the first and last layers whole because pruning them costs the
most quality, or an explicit ratio per layer. Heads and MLP channels are counted
separately (a ratio removes that fraction of each), in whole heads so ``head_dim`` never
changes, and channel counts are kept a multiple of ``channel_multiple`` for GPU kernels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from qpruner.architecture import LayerShape
from qpruner.errors import QPrunerError

IMPORTANCE_METHODS = ("taylor", "taylor2", "taylor_vector", "l1", "l2", "random")
GRADIENT_METHODS = ("taylor", "taylor2", "taylor_vector")
HEAD_MODES = ("group", "query")


@dataclass
class PruneConfig:
    ratio: float = field(default=0.2, metadata={"help": "fraction of heads and channels removed per layer"})
    attn_ratio: float | None = field(default=None, metadata={"help": "override --ratio for attention heads"})
    mlp_ratio: float | None = field(default=None, metadata={"help": "override --ratio for MLP channels"})
    layer_start: int = field(default=3, metadata={"help": "first pruned layer (the first layers stay whole)"})
    layer_end: int = field(
        default=-2, metadata={"help": "end of the pruned layers, exclusive; negative counts from the end"}
    )
    layer_ratios: list[float] | None = field(
        default=None,
        metadata={"help": "one ratio per decoder layer; overrides --ratio/--layer-start/--layer-end"},
    )
    importance: str = field(
        default="taylor", metadata={"help": "unit importance estimator", "choices": IMPORTANCE_METHODS}
    )
    n_samples: int = field(default=10, metadata={"help": "calibration samples"})
    seq_len: int = field(default=128, metadata={"help": "tokens per calibration sample"})
    seed: int = field(default=0, metadata={"help": "seed of the calibration samples (and of random)"})
    head_mode: str = field(
        default="group",
        metadata={
            "help": "group: remove a KV head with its query heads; query: query heads within each group",
            "choices": HEAD_MODES,
        },
    )
    channel_multiple: int = field(
        default=1, metadata={"help": "keep MLP widths a multiple of this (8 or 64 for GPU kernels)"}
    )
    grad_chunk_layers: int | None = field(
        default=None,
        metadata={
            "help": "score this many layers per gradient pass (less memory; default all, taylor2 half)"
        },
    )
    micro_batch: int = field(default=1, metadata={"help": "calibration samples per forward/backward pass"})

    def __post_init__(self) -> None:
        # Valid by construction: a config is checked once, where it is made, and every stage
        # that receives one can trust it.
        self.validate()

    def validate(self) -> None:
        for name in ("ratio", "attn_ratio", "mlp_ratio"):
            value = getattr(self, name)
            if value is not None:
                _check_ratio(value, name)
        if self.layer_ratios is not None:
            for i, r in enumerate(self.layer_ratios):
                _check_ratio(r, f"layer_ratios[{i}]")
        if self.importance not in IMPORTANCE_METHODS:
            raise QPrunerError(
                f"unknown importance {self.importance!r}; choose from {', '.join(IMPORTANCE_METHODS)}"
            )
        if self.head_mode not in HEAD_MODES:
            raise QPrunerError(f"unknown head_mode {self.head_mode!r}; choose from {', '.join(HEAD_MODES)}")
        if self.channel_multiple < 1:
            raise QPrunerError(f"channel_multiple must be >= 1, got {self.channel_multiple}")
        if self.n_samples < 1 or self.seq_len < 2 or self.micro_batch < 1:
            raise QPrunerError("n_samples and micro_batch must be >= 1 and seq_len >= 2")
        if self.grad_chunk_layers is not None and self.grad_chunk_layers < 1:
            raise QPrunerError(f"grad_chunk_layers must be >= 1, got {self.grad_chunk_layers}")

    @property
    def needs_gradients(self) -> bool:
        return self.importance in GRADIENT_METHODS

    def to_dict(self) -> dict:
        return asdict(self)


def _check_ratio(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value < 1.0:
        raise QPrunerError(f"{name} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class LayerTarget:
    """How many heads (query, KV) and channels one layer keeps."""

    layer: int
    attn_ratio: float
    mlp_ratio: float
    keep_heads: int
    keep_kv_heads: int
    keep_channels: int


def effective_head_mode(mode: str, groups: int) -> str:
    """Without GQA (one query head per KV head) a head is a whole group: both modes agree."""
    return "group" if groups == 1 else mode


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def layer_ratios(cfg: PruneConfig, n_layers: int) -> list[tuple[float, float]]:
    """(attention ratio, MLP ratio) for each decoder layer."""
    if cfg.layer_ratios is not None:
        if len(cfg.layer_ratios) != n_layers:
            raise QPrunerError(
                f"layer_ratios has {len(cfg.layer_ratios)} entries but the model has {n_layers} layers"
            )
        return [(r, r) for r in cfg.layer_ratios]
    start = cfg.layer_start if cfg.layer_start >= 0 else n_layers + cfg.layer_start
    end = cfg.layer_end if cfg.layer_end >= 0 else n_layers + cfg.layer_end
    start, end = max(0, start), min(n_layers, end)
    if start >= end and (cfg.ratio > 0 or cfg.attn_ratio or cfg.mlp_ratio):
        raise QPrunerError(
            f"no layers to prune: layers [{cfg.layer_start}, {cfg.layer_end}) is empty for a "
            f"{n_layers}-layer model; set --layer-start/--layer-end or --layer-ratios"
        )
    attn = cfg.ratio if cfg.attn_ratio is None else cfg.attn_ratio
    mlp = cfg.ratio if cfg.mlp_ratio is None else cfg.mlp_ratio
    return [(attn, mlp) if start <= i < end else (0.0, 0.0) for i in range(n_layers)]


def layer_targets(cfg: PruneConfig, shapes: list[LayerShape]) -> list[LayerTarget]:
    """The kept counts per layer; raises if a ratio would empty a layer's attention."""
    targets = []
    for i, ((ra, rm), s) in enumerate(zip(layer_ratios(cfg, len(shapes)), shapes, strict=True)):
        groups = s.num_attention_heads // s.num_key_value_heads
        mode = effective_head_mode(cfg.head_mode, groups)
        if mode == "group":
            kv = s.num_key_value_heads - _round(ra * s.num_key_value_heads)
            q = kv * groups
        else:
            kv = s.num_key_value_heads
            q = kv * (groups - _round(ra * groups))
        if q == 0:
            units = (
                f"{s.num_key_value_heads} KV groups" if mode == "group" else f"{groups} query heads per group"
            )
            raise QPrunerError(
                f"ratio {ra} would remove every head of layer {i} ({units}); use a smaller ratio"
            )
        m = cfg.channel_multiple
        ch = _round(s.intermediate_size * (1.0 - rm) / m) * m if rm > 0 else s.intermediate_size
        ch = min(s.intermediate_size, max(m, ch))
        targets.append(LayerTarget(i, ra, rm, q, kv, ch))
    return targets
