"""The plan: per decoder layer, how it is pruned, how its frozen weights are stored, its LoRA rank.

Every stage meets here. Searchers write plans, :func:`qpruner.apply_plan` applies them, the
memory model prices them, and the report draws them. A plan is a versioned JSON document
that round-trips exactly; it names modules by their path inside a decoder layer
(``self_attn.q_proj``) so the same plan applies to a model however it is wrapped.

Granularity is per layer by default (the papers' choice); ``module_formats`` and
``module_ranks`` override single modules of a layer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qpruner.architecture import ATTN_PROJ, MLP_PROJ, LayerShape
from qpruner.errors import QPrunerError
from qpruner.quant.registry import BITS_TO_FORMAT, PACKED_FORMATS

PLAN_VERSION = 1
#: Linear modules of a decoder layer, as named inside the layer.
LAYER_MODULES: tuple[str, ...] = tuple(f"self_attn.{n}" for n in ATTN_PROJ) + tuple(
    f"mlp.{n}" for n in MLP_PROJ
)
#: Unquantized formats: the dtype the frozen weight is held in.
DENSE_FORMATS: dict[str, int] = {"fp32": 32, "bf16": 16, "fp16": 16}
# PACKED_FORMATS (packed format -> bits per weight) and BITS_TO_FORMAT (what ``--bits N``
# picks) are declared by the quantization backends, one file each, and gathered by the registry.
#: Every weight format and its bits per weight (before scales).
FORMATS: dict[str, int] = {**DENSE_FORMATS, **PACKED_FORMATS}


class PlanError(QPrunerError):
    """A plan that cannot be applied; the message names the offending entry."""


def format_for_bits(bits: int, dtype: str) -> str:
    """``16``/``32`` mean "leave unquantized" (at the plan's dtype); 2/3/4/8 pick a packed format."""
    if bits >= 16:
        return dtype
    if bits not in BITS_TO_FORMAT:
        raise PlanError(f"no format for {bits}-bit weights; choose from {sorted(BITS_TO_FORMAT)} or 16")
    return BITS_TO_FORMAT[bits]


def is_packed(fmt: str) -> bool:
    return fmt in PACKED_FORMATS


@dataclass
class LayerPlan:
    """One decoder layer: pruning record, weight format, LoRA rank/alpha (+ per-module overrides)."""

    weight_format: str
    lora_rank: int = 8
    lora_alpha: float = 16.0
    prune_ratio: float | None = None
    shape: LayerShape | None = None
    module_formats: dict[str, str] = field(default_factory=dict)
    module_ranks: dict[str, int] = field(default_factory=dict)
    module_alphas: dict[str, float] = field(default_factory=dict)

    def format_of(self, module: str) -> str:
        return self.module_formats.get(module, self.weight_format)

    def rank_of(self, module: str) -> int:
        return self.module_ranks.get(module, self.lora_rank)

    def alpha_of(self, module: str) -> float:
        return self.module_alphas.get(module, self.lora_alpha)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = self.shape.to_dict() if self.shape else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LayerPlan:
        d = dict(d)
        if d.get("shape") is not None:
            d["shape"] = LayerShape.from_dict(d["shape"])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise PlanError(f"unknown layer field(s) {sorted(unknown)}")
        return cls(**d)


@dataclass
class Plan:
    """A per-layer compression plan for one model; see the module docstring."""

    layers: list[LayerPlan]
    dtype: str = "bf16"  # unquantized weights (embeddings, norms, 16-bit layers) and compute
    model: str | None = None
    target_modules: tuple[str, ...] = LAYER_MODULES  # which linear modules get LoRA
    lm_head_format: str | None = None  # None: same as dtype (unquantized)
    lora_dropout: float = 0.05
    memory: dict = field(default_factory=dict)  # {"predicted": {...}, "measured": {...}}
    metadata: dict = field(default_factory=dict)
    version: int = PLAN_VERSION

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        num_layers: int,
        weight_format: str,
        rank: int = 8,
        alpha: float | None = None,
        dtype: str = "bf16",
        shapes: list[LayerShape] | None = None,
        model: str | None = None,
    ) -> Plan:
        """Same format and rank everywhere: QLoRA (``nf4``) or plain LoRA (``weight_format=dtype``)."""
        alpha = float(2 * rank if alpha is None else alpha)
        layers = [
            LayerPlan(weight_format, rank, alpha, shape=shapes[i] if shapes else None)
            for i in range(num_layers)
        ]
        return cls(layers=layers, dtype=dtype, model=model)

    # ---- derived facts --------------------------------------------------------------------
    def module_names(self) -> list[str]:
        """Full names (``model.layers.3.mlp.up_proj``) of every linear module the plan covers."""
        return [f"model.layers.{i}.{m}" for i in range(len(self.layers)) for m in LAYER_MODULES]

    def formats(self) -> dict[str, str]:
        return {
            f"model.layers.{i}.{m}": lp.format_of(m)
            for i, lp in enumerate(self.layers)
            for m in LAYER_MODULES
        }

    def ranks(self) -> dict[str, int]:
        return {
            f"model.layers.{i}.{m}": lp.rank_of(m)
            for i, lp in enumerate(self.layers)
            for m in self.target_modules
        }

    def alphas(self) -> dict[str, float]:
        return {
            f"model.layers.{i}.{m}": lp.alpha_of(m)
            for i, lp in enumerate(self.layers)
            for m in self.target_modules
        }

    def bits_per_layer(self) -> list[float]:
        """Mean bits per weight format of each layer (modules weighted equally), for reports."""
        return [
            sum(FORMATS[lp.format_of(m)] for m in LAYER_MODULES) / len(LAYER_MODULES) for lp in self.layers
        ]

    # ---- validation -----------------------------------------------------------------------
    def validate(self, num_layers: int | None = None, shapes: list[LayerShape] | None = None) -> Plan:
        """Reject what cannot be applied, naming the entry; return self for chaining."""
        if self.version != PLAN_VERSION:
            raise PlanError(
                f"plan version {self.version} is not supported (this qpruner reads {PLAN_VERSION})"
            )
        if self.dtype not in DENSE_FORMATS:
            raise PlanError(f"plan dtype {self.dtype!r} is not one of {', '.join(DENSE_FORMATS)}")
        if not self.layers:
            raise PlanError("plan has no layers")
        for m in self.target_modules:
            if m not in LAYER_MODULES:
                raise PlanError(
                    f"target_modules entry {m!r} is not a layer module ({', '.join(LAYER_MODULES)})"
                )
        if self.lm_head_format is not None:
            self._check_format("lm_head_format", self.lm_head_format)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise PlanError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if num_layers is not None and num_layers != len(self.layers):
            raise PlanError(f"plan has {len(self.layers)} layers but the model has {num_layers}")
        for i, lp in enumerate(self.layers):
            where = f"layers[{i}]"
            self._check_format(f"{where}.weight_format", lp.weight_format)
            self._check_rank(f"{where}.lora_rank", lp.lora_rank, lp.lora_alpha)
            for name, table in (
                ("module_formats", lp.module_formats),
                ("module_ranks", lp.module_ranks),
                ("module_alphas", lp.module_alphas),
            ):
                for m, v in table.items():
                    entry = f"{where}.{name}[{m!r}]"
                    if m not in LAYER_MODULES:
                        raise PlanError(
                            f"{entry}: the layer has no module {m!r} ({', '.join(LAYER_MODULES)})"
                        )
                    if name == "module_formats":
                        self._check_format(entry, v)
                    elif name == "module_ranks":
                        self._check_rank(entry, v, lp.alpha_of(m))
                    else:
                        self._check_rank(entry, lp.rank_of(m), v)
            if lp.prune_ratio is not None and not 0.0 <= lp.prune_ratio < 1.0:
                raise PlanError(f"{where}.prune_ratio must be in [0, 1), got {lp.prune_ratio}")
            if shapes is not None and lp.shape is not None and lp.shape != shapes[i]:
                raise PlanError(
                    f"{where}.shape {lp.shape.to_dict()} differs from the model's {shapes[i].to_dict()}"
                )
        return self

    def _check_format(self, entry: str, fmt: str) -> None:
        if fmt not in FORMATS:
            raise PlanError(f"{entry}: unknown weight format {fmt!r}; choose from {', '.join(FORMATS)}")
        if fmt in DENSE_FORMATS and fmt != self.dtype:
            raise PlanError(
                f"{entry}: unquantized format {fmt!r} differs from the plan dtype {self.dtype!r}; "
                "one model holds its unquantized weights in one dtype"
            )

    @staticmethod
    def _check_rank(entry: str, rank, alpha) -> None:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise PlanError(f"{entry}: LoRA rank must be a positive integer, got {rank!r}")
        if not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
            raise PlanError(f"{entry}: LoRA alpha must be a positive number, got {alpha!r}")

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "model": self.model,
            "dtype": self.dtype,
            "target_modules": list(self.target_modules),
            "lm_head_format": self.lm_head_format,
            "lora_dropout": self.lora_dropout,
            "layers": [lp.to_dict() for lp in self.layers],
            "memory": self.memory,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        if not isinstance(d, dict) or "layers" not in d:
            raise PlanError("not a qpruner plan: expected a JSON object with a 'layers' list")
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise PlanError(f"unknown plan field(s) {sorted(unknown)}")
        try:
            layers = [LayerPlan.from_dict(x) for x in d.pop("layers")]
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise PlanError(f"malformed layer entry: {exc}") from exc
        if "target_modules" in d:
            d["target_modules"] = tuple(d["target_modules"])
        return cls(layers=layers, **d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename): a crash never leaves half a plan."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file not found: {path}")
        return cls.from_json(path.read_text())
