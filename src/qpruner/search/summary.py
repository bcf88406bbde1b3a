"""What a search found, as the report and ``search.json`` show it: every trial, the chosen one,
the budget and what it assumes. Rebuilt from the study alone (``qpruner report``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from qpruner.search.measure import basis_of
from qpruner.search.pareto import pareto_front
from qpruner.search.records import TrialRecord, evaluated


@dataclass
class SearchSummary:
    method: str
    metric: str  # how the error reads: "perplexity", "1 - acc (task)"
    budget: int | None  # bytes
    records: list[TrialRecord]
    chosen: int | None  # trial number of the chosen plan (records.choose_trial when searched)
    study_name: str = ""
    storage: str = ""  # password masked
    extra: dict = field(default_factory=dict)  # importance, initial allocation, space, ...
    memory_at: str | None = None  # the micro-batch fine-tuning figures assume: "4 × 256 tokens"
    memory_measure: str = "finetune"  # what the budget and memory figures count (space.MEASURES)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["records"] = [r.to_dict() for r in self.records]
        d["budget_text"] = self.budget_text()
        return d

    def at(self) -> str:
        """`` at 4 × 256 tokens``: what every memory figure of this search assumes."""
        basis = basis_of(self.memory_measure, self.memory_at)
        return f" {basis}" if basis else ""

    def memory_label(self) -> str:
        """The memory axis: ``fine-tuning memory at 4 × 256 tokens`` or the serving weights'."""
        if self.memory_measure == "weights":
            return "weights + LoRA (serving) memory"
        return f"fine-tuning memory{self.at()}"

    def budget_text(self) -> str:
        """``1.21 GiB at 4 × 256 tokens (nf4: the uniform nf4 plan, rank 8)``."""
        from qpruner.units import format_bytes

        if self.budget is None:
            return "none"
        stated = self.extra.get("budget_stated") or {}
        said = f" ({stated.get('text')}: {stated['reference']})" if stated.get("reference") else ""
        return f"{format_bytes(self.budget)}{self.at()}{said}"

    @classmethod
    def from_dict(cls, d: dict) -> SearchSummary:
        d = dict(d)
        d["records"] = [TrialRecord.from_dict(r) for r in d.get("records", [])]
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def evaluated(self) -> list[TrialRecord]:
        return sorted(evaluated(self.records), key=lambda r: r.number)

    @property
    def chosen_trial(self) -> TrialRecord | None:
        """The record of the chosen trial. ``chosen`` is stored (``search.json``) rather than
        recomputed, so a summary read back shows the choice the search made."""
        return next((r for r in self.records if r.number == self.chosen), None)

    def importance(self) -> tuple[list[float], str] | None:
        """Per-layer importance and how it was measured, if the search stored any.

        The qpruner searcher stores ``{"scores": [...], "method": "mi"}``; a flat list beside
        ``importance_method`` is read too. Shown next to the plan so a reader can check that
        the important layers got the wider formats.
        """
        imp = self.extra.get("importance")
        if isinstance(imp, dict):
            return [float(x) for x in imp.get("scores", [])], str(imp.get("method", ""))
        if isinstance(imp, list):
            return [float(x) for x in imp], str(self.extra.get("importance_method", ""))
        return None

    def layer_profile(self) -> dict | None:
        """Measured sensitivity beside MI and Taylor, where the search measured it
        (:func:`qpruner.search.layer_importance.layer_profile`)."""
        imp = self.extra.get("importance")
        return imp.get("profile") if isinstance(imp, dict) else None

    def front(self) -> list[int]:
        """Trial numbers on the measured Pareto front (error vs memory)."""
        ev = [r for r in self.evaluated() if r.memory is not None]
        return [ev[i].number for i in pareto_front([(r.error, float(r.memory)) for r in ev])]
