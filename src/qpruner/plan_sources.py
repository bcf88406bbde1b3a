"""Where a plan comes from: uniform (built from the model's stored shapes), a file, or a search.

:mod:`qpruner.plan` is the document itself and imports nothing of the stages; building one
needs the model's layer shapes, which only the checkpoint knows, so the builders live here,
one step above it. Every command and the pipeline take a :class:`PlanSource` and call
:meth:`PlanSource.load`: that is where a plan enters, so that is where it is validated (once),
against the layer shapes stored with the model, before any weight is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qpruner.architecture import LayerShape, check_model_type, config_shape
from qpruner.checkpoint import stored_layer_shapes
from qpruner.errors import QPrunerError
from qpruner.models.catalog import resolve_model_source
from qpruner.plan import Plan, PlanError, format_for_bits, is_packed

PLAN_KINDS = ("uniform", "file", "searched")


def default_dtype(device: str | torch.device) -> str:
    """bf16 on CUDA (QLoRA's compute dtype), fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def _layer_linear_params(shape: LayerShape, hidden: int, head_dim: int) -> int:
    q, kv = shape.num_attention_heads * head_dim, shape.num_key_value_heads * head_dim
    return hidden * (2 * q + 2 * kv) + 3 * hidden * shape.intermediate_size


def record_pruning(plan: Plan, config, shapes: list[LayerShape]) -> Plan:
    """Record each layer's shape and pruning ratio (share of its linear weights removed)."""
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    full = _layer_linear_params(config_shape(config), config.hidden_size, hd)
    for lp, shape in zip(plan.layers, shapes, strict=True):
        lp.shape = shape
        lp.prune_ratio = round(1.0 - _layer_linear_params(shape, config.hidden_size, hd) / full, 6)
    return plan


def model_config(model_src: str | Path):
    """The model's transformers config, refused by name unless it is a LLaMA-layout decoder."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_source(str(model_src)))
    except (OSError, ValueError) as exc:
        raise QPrunerError(f"cannot read the config of {model_src}: {str(exc).splitlines()[0]}") from exc
    check_model_type(config)
    return config


def uniform_plan(
    model_src: str | Path,
    bits: int = 4,
    rank: int = 8,
    *,
    alpha: float | None = None,
    dtype: str = "fp32",
    weight_format: str | None = None,
) -> Plan:
    """One format and rank everywhere (QLoRA at 4 bits, LoRA at 16), from the stored config alone."""
    config = model_config(model_src)
    shapes = stored_layer_shapes(model_src)
    if shapes is None:
        shapes = [config_shape(config)] * config.num_hidden_layers
    fmt = weight_format or format_for_bits(bits, dtype)
    plan = Plan.uniform(len(shapes), fmt, rank, alpha, dtype=dtype, model=str(model_src))
    return record_pruning(plan, config, shapes)


@dataclass
class PlanSource:
    """How a command gets its plan. ``kind``: ``uniform`` (``bits``/``weight_format``, ``rank``,
    ``alpha``, ``dtype``), ``file`` (``path``) or ``searched`` (``search``; ``path`` is set to the
    search's plan file once the search has run)."""

    kind: str = "uniform"
    path: str | None = None
    bits: int = 4
    weight_format: str | None = None  # exact format; overrides bits
    rank: int = 8
    alpha: float | None = None  # default 2 x rank
    dtype: str | None = None  # unquantized dtype; None: default_dtype(device)
    search: Any = None  # a qpruner.search.SearchConfig (the search builds on this module)

    def __post_init__(self) -> None:
        if self.kind not in PLAN_KINDS:
            raise PlanError(f"plan source must be one of {', '.join(PLAN_KINDS)}, got {self.kind!r}")
        if self.kind == "file" and not self.path:
            raise PlanError("a plan file source needs a path")
        if self.kind == "searched" and self.search is None:
            raise PlanError("a searched plan source needs a search configuration")

    @classmethod
    def from_file(cls, path: str | Path) -> PlanSource:
        return cls(kind="file", path=str(path))

    def load(self, model_src: str | Path, device: str | torch.device = "cpu") -> Plan:
        """The plan for ``model_src``, validated against its stored layer shapes."""
        if self.kind == "uniform":
            plan = uniform_plan(
                model_src,
                self.bits,
                self.rank,
                alpha=self.alpha,
                dtype=self.dtype or default_dtype(device),
                weight_format=self.weight_format,
            )
        elif self.path is None:
            raise PlanError("the searched plan is not there yet: run the search first")
        else:
            plan = Plan.load(self.path)
        return check_stored_fit(plan, model_src)


def check_stored_fit(plan: Plan, model_src: str | Path) -> Plan:
    """Validate ``plan`` against what is stored with ``model_src``: its config and layer shapes.

    The one validation of a plan on its way to the packed weights; no weight is read, so a
    plan that cannot fit fails before minutes of loading.
    """
    config = model_config(model_src)
    shapes = stored_layer_shapes(model_src) or [config_shape(config)] * config.num_hidden_layers
    plan.validate(num_layers=len(shapes), shapes=shapes)
    if plan.lm_head_format is not None and is_packed(plan.lm_head_format) and config.tie_word_embeddings:
        raise PlanError("lm_head_format: the model ties lm_head to the embeddings; it cannot be packed alone")
    return plan
