"""The memory budget as a user states it, resolved to bytes in one place.

A byte count rarely means anything to someone choosing a plan; "no more than QLoRA" does. So
``--memory-budget`` takes any of:

* a size: ``6GiB``, ``512MiB``, ``1.5GB``, ``123456`` (bytes);
* a reference plan: a packed format (``nf4``, ``int8``, ``hqq3``, ...) on every layer, or
  ``uniform:BITS[:RANK]`` (16: unquantized), at the space's base rank unless RANK is given;
* a share of the unquantized LoRA plan (every layer in the plan's dtype, the base rank): ``70%``.

A reference plan is priced exactly as the search prices its trials
(:meth:`~qpruner.search.space.SearchSpace.price`: the same memory model, micro-batch and
sequence length), so "the NF4 plan's memory" compares like with like. The syntax is read by
:func:`parse_budget` before anything is loaded; :func:`resolve_budget` needs the space (the
model's layer shapes) and gives the bytes. The bytes are of what the space measures
(``SearchSpace.measure``): fine-tuning memory by default, or the served weights and adapters,
so ``nf4`` under a weight budget means uniform NF4's packed weights plus its LoRA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qpruner.errors import QPrunerError
from qpruner.plan import BITS_TO_FORMAT, PACKED_FORMATS, format_for_bits
from qpruner.search.space import SearchSpace, parse_size
from qpruner.units import format_bytes

FORMS = (
    "a size (6GiB, 512MiB), a reference plan (nf4, int8, uniform:BITS[:RANK]) "
    "or a share of the 16-bit plan (70%)"
)
_UNIFORM = re.compile(r"uniform:(\d+)(?::(\d+))?")
_SHARE = re.compile(r"(\d+(?:\.\d+)?)%")


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as written: a size in bytes, a reference plan, or a share of the 16-bit plan."""

    text: str
    size: int | None = None  # a size: bytes
    bits: int | None = None  # a reference plan: its width (16: unquantized) ...
    weight_format: str | None = None  # ... or its exact packed format (nf4, int8, hqq3)
    rank: int | None = None  # the reference plan's rank; None: the space's base rank
    share: float | None = None  # a share of the unquantized plan, 0.7 for 70%


@dataclass(frozen=True)
class Budget:
    """A resolved budget: its bytes and what they were stated as, at the batch they assume."""

    bytes: int
    text: str  # as the user wrote it
    reference: str | None  # e.g. "the uniform nf4 plan, rank 8"; None for a size
    basis: str  # what the bytes mean: "at 4 × 256 tokens" (fine-tuning) or "in weights + LoRA (serving)"

    def describe(self) -> str:
        """``1.21 GiB at 4 × 256 tokens (the uniform nf4 plan, rank 8)``."""
        said = f" ({self.reference})" if self.reference else ""
        return f"{format_bytes(self.bytes)} {self.basis}{said}"

    def stated(self) -> str | None:
        """How the budget was stated, where it was not a size: ``nf4: the uniform nf4 plan, rank 8``."""
        return f"{self.text}: {self.reference}" if self.reference else None

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "text": self.text, "reference": self.reference, "basis": self.basis}


def _bad(text: object, why: str = "") -> QPrunerError:
    return QPrunerError(f"cannot read memory size {text!r}{why}; write {FORMS}")


def parse_budget(text: str | int | float | BudgetSpec) -> BudgetSpec:
    """The budget's form, from its text alone (no model needed): one-line errors for bad text."""
    if isinstance(text, BudgetSpec):
        return text
    if isinstance(text, int | float):
        return BudgetSpec(str(text), size=parse_size(text))
    s = str(text).strip().lower().replace(" ", "")
    if s in PACKED_FORMATS:
        return BudgetSpec(str(text), weight_format=s)
    if m := _UNIFORM.fullmatch(s):
        bits, rank = int(m[1]), int(m[2]) if m[2] else None
        if bits < 16 and bits not in BITS_TO_FORMAT:
            raise _bad(text, f" (no format for {bits}-bit weights: {sorted(BITS_TO_FORMAT)} or 16)")
        if rank is not None and rank < 1:
            raise _bad(text, " (a LoRA rank is at least 1)")
        return BudgetSpec(str(text), bits=bits, rank=rank)
    if m := _SHARE.fullmatch(s):
        if float(m[1]) <= 0:
            raise _bad(text, " (a share must be above 0%)")
        return BudgetSpec(str(text), share=float(m[1]) / 100)
    try:
        return BudgetSpec(str(text), size=parse_size(text))
    except QPrunerError:
        raise _bad(text) from None


def resolve_budget(text: str | int | float | BudgetSpec | Budget, space: SearchSpace) -> Budget:
    """The budget in bytes for ``space``: a reference plan priced as the space prices trials."""
    if isinstance(text, Budget):
        return text
    spec = parse_budget(text)
    if spec.size is not None:
        return Budget(spec.size, spec.text, None, space.basis)
    rank = spec.rank or space.fixed_rank
    if spec.share is not None:
        fmt = space.base.dtype
        full = space.price(space.uniform(fmt, rank))
        ref = f"{100 * spec.share:g}% of the unquantized {fmt} plan, rank {rank}, at {format_bytes(full)}"
        return Budget(int(spec.share * full), spec.text, ref, space.basis)
    fmt = spec.weight_format or format_for_bits(spec.bits, space.base.dtype)
    return Budget(
        space.price(space.uniform(fmt, rank)), spec.text, f"the uniform {fmt} plan, rank {rank}", space.basis
    )
