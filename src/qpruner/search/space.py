"""The search space: one choice of bit width and of LoRA rank per decoder layer.

Every searcher speaks in *choices* — ``{"bits_3": 4, "rank_3": 8, ...}``, the optuna
parameter names — and the space turns choices into a :class:`~qpruner.plan.Plan`, prices
them with the memory model (exact for weights, LoRA and AdamW; estimated for activations),
and encodes them as feature vectors for the performance models. Layers whose bits (or
ranks) are not searched keep the fixed value, so QPruner/AutoMixQ (bits), RankAdaptor
(ranks) and the joint search share one space type.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from qpruner.errors import QPrunerError
from qpruner.memory import MemoryReport, estimate
from qpruner.plan import BITS_TO_FORMAT, Plan, format_for_bits
from qpruner.search.measure import MEASURES, WEIGHT_PARTS, basis_of
from qpruner.search.sensitivity import Sensitivity

SPACES = ("bits", "ranks", "joint")


class InfeasibleBudget(QPrunerError):
    """No plan of the space fits the memory budget."""


def parse_size(text: str | int | float) -> int:
    """``6GiB``, ``512MiB``, ``1.5GB``, ``123456`` (bytes) → bytes."""
    if isinstance(text, int | float):
        return int(text)
    units = {
        "": 1,
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
    }
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num) :]
    try:
        value = float(num)
    except ValueError:
        value = math.nan
    if unit not in units or not math.isfinite(value) or value <= 0:
        raise QPrunerError(f"cannot read memory size {text!r}; write e.g. 6GiB, 512MiB or a byte count")
    return int(value * units[unit])


@dataclass
class SearchSpace:
    """Per-layer bits and ranks over ``base`` (a plan carrying the pruned model's shapes)."""

    base: Plan
    model_config: object  # HF config or its dict: what the memory model reads
    bits: tuple[int, ...] = (4, 8, 16)  # 16 (or more): unquantized, in the plan's dtype
    ranks: tuple[int, ...] = (2, 4, 8, 16)
    search: str = "bits"  # "bits" | "ranks" | "joint"
    fixed_bits: int = 4  # every layer's bits when bits are not searched
    fixed_rank: int = 8  # every layer's rank when ranks are not searched
    alpha_per_rank: float = 2.0  # LoRA alpha = 2 x rank (alpaca-lora's 16 at rank 8)
    batch: int = 4  # micro-batch and sequence length the memory is priced at
    seq_len: int = 256
    gradient_checkpointing: bool = False
    accumulation: int = 1  # micro-batches per optimizer step, as the trials train
    measure: str = "finetune"  # what memory() prices: one of MEASURES
    # Each layer's measured Δ loss at low widths, where the study measured it: the performance
    # model's prior (features' last column). Not part of describe(): it is data, not a setting.
    sensitivity: Sensitivity | None = None

    def __post_init__(self) -> None:
        if self.search not in SPACES:
            raise QPrunerError(f"unknown search space {self.search!r}; choose from {', '.join(SPACES)}")
        if self.measure not in MEASURES:
            raise QPrunerError(f"unknown memory measure {self.measure!r}; choose from {', '.join(MEASURES)}")
        self.bits = tuple(sorted(set(int(b) for b in self.bits)))
        self.ranks = tuple(sorted(set(int(r) for r in self.ranks)))
        for b in (*self.bits, self.fixed_bits):
            if b < 16 and b not in BITS_TO_FORMAT:
                raise QPrunerError(f"no format for {b}-bit weights; choose from {sorted(BITS_TO_FORMAT)}, 16")
        if not self.ranks or min(self.ranks) < 1 or self.fixed_rank < 1:
            raise QPrunerError(f"LoRA ranks must be positive integers, got {list(self.ranks)}")
        self._exact: dict[tuple[int, ...], int] = {}  # full-model prices, where the table is not exact

    # ---- parameters ---------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.base.layers)

    @property
    def searches_bits(self) -> bool:
        return self.search in ("bits", "joint")

    @property
    def searches_ranks(self) -> bool:
        return self.search in ("ranks", "joint")

    @cached_property
    def param_choices(self) -> dict[str, tuple[int, ...]]:
        """optuna parameter name → its categorical choices, in a stable order."""
        out: dict[str, tuple[int, ...]] = {}
        for i in range(self.num_layers):
            if self.searches_bits:
                out[f"bits_{i}"] = self.bits
            if self.searches_ranks:
                out[f"rank_{i}"] = self.ranks
        return out

    def distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution

        return {k: CategoricalDistribution(list(v)) for k, v in self.param_choices.items()}

    def suggest(self, trial) -> dict[str, int]:
        return {k: int(trial.suggest_categorical(k, list(v))) for k, v in self.param_choices.items()}

    def layer_bits(self, choices: dict[str, int]) -> list[int]:
        return [int(choices.get(f"bits_{i}", self.fixed_bits)) for i in range(self.num_layers)]

    def layer_ranks(self, choices: dict[str, int]) -> list[int]:
        return [int(choices.get(f"rank_{i}", self.fixed_rank)) for i in range(self.num_layers)]

    def choices_from(self, bits: list[int] | None = None, ranks: list[int] | None = None) -> dict[str, int]:
        """Per-layer lists → choices (only the searched parameters)."""
        out: dict[str, int] = {}
        for i in range(self.num_layers):
            if self.searches_bits:
                out[f"bits_{i}"] = int(bits[i] if bits is not None else self.fixed_bits)
            if self.searches_ranks:
                out[f"rank_{i}"] = int(ranks[i] if ranks is not None else self.fixed_rank)
        return out

    def key(self, choices: dict[str, int]) -> tuple[int, ...]:
        """Hashable identity of a plan in this space (for de-duplication)."""
        return tuple(int(choices[k]) for k in self.param_choices)

    def complete(self, choices: dict[str, int]) -> bool:
        """All parameters present: a trial another worker is still suggesting has only some."""
        return all(k in choices for k in self.param_choices)

    def sample(self, rng: np.random.Generator) -> dict[str, int]:
        return {k: int(v[rng.integers(len(v))]) for k, v in self.param_choices.items()}

    # ---- plans and their price -------------------------------------------------------------
    def plan(self, choices: dict[str, int]) -> Plan:
        plan = copy.deepcopy(self.base)
        for lp, b, r in zip(plan.layers, self.layer_bits(choices), self.layer_ranks(choices), strict=True):
            lp.weight_format = format_for_bits(b, plan.dtype)
            lp.lora_rank = r
            lp.lora_alpha = float(self.alpha_per_rank * r)
            lp.module_formats, lp.module_ranks, lp.module_alphas = {}, {}, {}
        plan.memory, plan.metadata = {}, {}
        return plan

    @cached_property
    def _costs(self) -> tuple[int, list[dict], list[int]]:
        """Memory as a constant plus one term per layer and choice, priced once.

        The memory model is nearly additive over layers for everything a plan changes: a
        layer's weights depend on its bits, its LoRA parameters, gradients and AdamW moments on
        its rank, most activations on shapes only. So pricing each (layer, bits, rank) once by
        difference makes pricing a candidate a sum — searchers price thousands, 0.02 ms each
        against 2.7 ms through the full model on SmolLM2. Not exactly additive: a step's peak is
        the larger of a few terms, and one (a packed weight's dequantization, which depends on
        its bits) can exceed the activation transients on tiny shapes in float32 compute. So
        :attr:`_additive` checks the sum against the full model on sampled plans, and where
        they differ every plan is priced through the full model (cached).
        """
        lo_b, lo_r = self.layer_bits({}), self.layer_ranks({})
        lo_b = [min(self.bits) if self.searches_bits else b for b in lo_b]
        lo_r = [min(self.ranks) if self.searches_ranks else r for r in lo_r]
        base = self._price(lo_b, lo_r)
        bit_set = self.bits if self.searches_bits else (self.fixed_bits,)
        rank_set = self.ranks if self.searches_ranks else (self.fixed_rank,)
        per_layer, lora_per_rank = [], []
        for i in range(self.num_layers):
            table = {}
            for b in bit_set:
                for r in rank_set:
                    bb, rr = list(lo_b), list(lo_r)
                    bb[i], rr[i] = b, r
                    table[(b, r)] = self._price(bb, rr) - base
            per_layer.append(table)
            rr = list(lo_r)
            rr[i] += 1
            lora_per_rank.append(self._lora(lo_b, rr) - self._lora(lo_b, lo_r))
        return base, per_layer, lora_per_rank

    def _price(self, bits: list[int], ranks: list[int]) -> int:
        return self.price(self.plan(self._fixed(bits, ranks)))

    def price(self, plan: Plan) -> int:
        """Any plan's predicted bytes under the space's measure (fine-tuning: at its batch and
        length): how every trial is priced, so a budget stated as a reference plan means the
        same bytes."""
        return self.amount(estimate(self.model_config, plan, self.batch, self.seq_len,
                                    self.gradient_checkpointing, accumulation=self.accumulation))  # fmt: skip

    def amount(self, report: MemoryReport) -> int:
        """The bytes of a predicted or measured report that the space's measure counts."""
        if self.measure == "weights":
            return sum(report.components.get(k, 0) for k in WEIGHT_PARTS)
        return report.total

    @property
    def tokens(self) -> str:
        """The micro-batch fine-tuning figures assume, e.g. ``4 × 256 tokens``."""
        return f"{self.batch} × {self.seq_len} tokens"

    @property
    def basis(self) -> str:
        """What every memory figure of this space means, after its bytes: ``at 4 × 256 tokens``."""
        return basis_of(self.measure, self.tokens)

    def uniform(self, weight_format: str, rank: int) -> Plan:
        """Every layer at ``weight_format`` and ``rank`` over the space's shapes (a reference plan)."""
        plan = self.plan({})
        for lp in plan.layers:
            lp.weight_format, lp.lora_rank, lp.lora_alpha = (
                weight_format,
                rank,
                float(self.alpha_per_rank * rank),
            )
        return plan

    def _lora(self, bits: list[int], ranks: list[int]) -> int:
        plan = self.plan(self._fixed(bits, ranks))
        return estimate(self.model_config, plan, 1, 1).components["lora_params"] // 4

    def _fixed(self, bits: list[int], ranks: list[int]) -> dict[str, int]:
        # Pricing needs every layer's values, searched or not.
        out = {f"bits_{i}": b for i, b in enumerate(bits)}
        return out | {f"rank_{i}": r for i, r in enumerate(ranks)}

    def memory(self, choices: dict[str, int]) -> int:
        """Predicted fine-tuning bytes (weights + LoRA + AdamW + step peak) of a plan."""
        if not self._additive:
            key = self.key(self._fixed(self.layer_bits(choices), self.layer_ranks(choices)))
            if key not in self._exact:
                self._exact[key] = self.memory_exact(choices)
            return self._exact[key]
        return self._table_price(choices)

    def _table_price(self, choices: dict[str, int]) -> int:
        base, per_layer, _ = self._costs
        pairs = zip(self.layer_bits(choices), self.layer_ranks(choices), strict=True)
        return base + sum(per_layer[i][(b, r)] for i, (b, r) in enumerate(pairs))

    @cached_property
    def _additive(self) -> bool:
        """Whether the table's sum equals the full model on the extreme plans and 16 seeded draws."""
        rng = np.random.default_rng(0)
        extremes = [{k: f(v) for k, v in self.param_choices.items()} for f in (min, max)]
        plans = extremes + [self.sample(rng) for _ in range(16)]
        return all(self._table_price(c) == self.memory_exact(c) for c in plans)

    def memory_exact(self, choices: dict[str, int]) -> int:
        """The same price through the full memory model (slower; what :meth:`memory` must equal)."""
        return self.price(self.plan(choices))

    def lora_params(self, choices: dict[str, int]) -> int:
        """Trainable LoRA parameters: RankAdaptor keeps this at most the uniform plan's."""
        per_rank = self._costs[2]
        return sum(c * r for c, r in zip(per_rank, self.layer_ranks(choices), strict=True))

    def layer_cost(self, layer: int, bits: int, rank: int) -> int:
        """What ``layer`` at ``bits`` and ``rank`` adds to a plan's price (additive, see _costs)."""
        return self._costs[1][layer][(bits, rank)]

    def cheapest(self) -> dict[str, int]:
        """The lowest-memory plan of the space: each layer's cheapest (bits, rank).

        Not always the fewest bits: the price includes each width's dequantization transient
        and scales, so read it off the priced table rather than assume it.
        """
        _, per_layer, _ = self._costs
        out: dict[str, int] = {}
        for i, table in enumerate(per_layer):
            bits, rank = min(table, key=lambda key: (table[key], key))
            if self.searches_bits:
                out[f"bits_{i}"] = bits
            if self.searches_ranks:
                out[f"rank_{i}"] = rank
        return out

    def check_budget(self, budget: int, stated: str | None = None) -> None:
        """Refuse, before any training, a budget that even the cheapest plan exceeds, or that
        only the cheapest plan meets (nothing to search: e.g. a space without widths below
        NF4, at uniform NF4's memory).

        ``stated``: how the user wrote the budget (a reference plan, a share), named in the error.
        """
        from qpruner.units import format_bytes

        cheapest = self.cheapest()
        low = self.memory(cheapest)
        if low > budget:
            said = f" ({stated})" if stated else ""
            bits = sorted(set(self.layer_bits(cheapest)))
            ranks = sorted(set(self.layer_ranks(cheapest)))
            raise InfeasibleBudget(
                f"memory budget {format_bytes(budget)}{said} {self.basis} is below the cheapest plan "
                f"of this space ({format_bytes(low)} at {'/'.join(map(str, bits))} bits, "
                f"rank {'/'.join(map(str, ranks))}); raise the budget or allow other bits / smaller ranks"
            )
        # Each layer's cost is additive and the cheapest plan is every layer's minimum, so when
        # no single step away from it fits, no plan but the cheapest does.
        steps = ({**cheapest, k: v} for k, choices in self.param_choices.items() for v in choices)
        if not any(c != cheapest and self.memory(c) <= budget for c in steps):
            said = f" ({stated})" if stated else ""
            raise InfeasibleBudget(
                f"memory budget {format_bytes(budget)}{said} {self.basis} fits only the cheapest plan of "
                f"this space ({format_bytes(low)}): nothing to search; raise the budget"
            )

    # ---- features for performance models ------------------------------------------------------
    def features(self, choices: dict[str, int]) -> np.ndarray:
        """Per layer: 2^-bits, 1/rank and the prune ratio; their plan-wide means; memory in GiB;
        the measured sensitivity's predicted Δ loss (0 where none was measured).

        2^-bits is the scale of a layer's quantization error and 1/rank how little its adapter
        can hold, so a plan's error is close to additive in these — an easier function for a
        model fitted on a few dozen points than raw bit widths. The means state that additive
        prior in one column each: with 30 layers (90 columns) and 20 plans a model cannot find it
        alone (on SmolLM2 the mean 2^-bits by itself ranked held-out plans at Spearman 0.80).
        The last column states it with each layer weighted by what quantizing it was measured to
        cost (:meth:`Sensitivity.predicted_delta`): 0.89 on the same plans, with no fitting.
        """
        ratios = [lp.prune_ratio or 0.0 for lp in self.base.layers]
        bits, ranks = self.layer_bits(choices), self.layer_ranks(choices)
        per_layer = np.array(
            [(2.0**-b, 1.0 / r, p) for b, r, p in zip(bits, ranks, ratios, strict=True)], dtype=np.float64
        )
        prior = 0.0 if self.sensitivity is None else self.sensitivity.predicted_delta(bits)
        means = per_layer.mean(axis=0)
        return np.concatenate([per_layer.reshape(-1), means, [self.memory(choices) / 2**30, prior]])

    @property
    def summary_columns(self) -> list[int]:
        """Indices in :meth:`features` of the plan-wide means, the memory and the prior: the few
        columns a performance model can fit on when too few plans are measured to learn each layer."""
        start = 3 * len(self.base.layers)
        return list(range(start, start + 5))

    @property
    def prior_column(self) -> int | None:
        """Index in :meth:`features` of the sensitivity prior, None when none was measured."""
        return None if self.sensitivity is None else 3 * len(self.base.layers) + 4

    def describe(self) -> dict:
        """What a study is bound to: resuming with another space is refused."""
        return {
            "search": self.search,
            "bits": list(self.bits),
            "ranks": list(self.ranks),
            "fixed_bits": self.fixed_bits,
            "fixed_rank": self.fixed_rank,
            "dtype": self.base.dtype,
            "layers": [lp.shape.to_dict() if lp.shape else None for lp in self.base.layers],
            "batch": self.batch,
            "seq_len": self.seq_len,
            # Only when not the default, so studies made before the measure existed still resume.
            **({"measure": self.measure} if self.measure != "finetune" else {}),
        }
