"""What a search stores per trial, read back from the optuna study alone.

Every finished trial keeps its plan, its error and memory (predicted and measured) and how
it was proposed as optuna user attributes (JSON), so the report and the chosen plan can be
rebuilt from the storage URL with no worker's files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum


class Status(str, Enum):
    """A trial's outcome, stored in the study as its plain string value.

    A ``str`` enum (not ``enum.StrEnum``, which needs Python 3.11) so that the value written
    to the storage is the same string older versions wrote: their studies load and resume,
    and ``record.status == "evaluated"`` still holds.
    """

    EVALUATED = "evaluated"  # trained and measured
    REJECTED = "rejected"  # refused before training: predicted memory over budget
    FAILED = "failed"  # the objective raised, or its worker died
    RUNNING = "running"  # in flight (or left by a killed worker, until failed)
    WAITING = "waiting"  # queued (``enqueue_trial``), not started
    SURPLUS = "surplus"  # stood down: the study already had enough trials
    DUPLICATE = "duplicate"  # another trial runs or ran the same plan
    PRUNED = "pruned"  # stopped early by optuna's pruner (multi-fidelity): its curve is stored

    def __str__(self) -> str:  # the stored string in tables and logs, on every Python version
        return self.value


@dataclass
class TrialRecord:
    number: int
    status: Status
    params: dict[str, int]  # e.g. {"bits_0": 4, "rank_0": 8, ...}
    error: float | None = None  # what the search minimises: perplexity, or 1 - task score
    memory_predicted: int | None = None  # bytes, fine-tuning total from qpruner.memory.estimate
    memory_measured: int | None = None  # bytes, measured during the trial's fine-tune
    predicted_error: float | None = None  # the performance model's guess when it proposed the plan
    proposed_by: str | None = None  # "initial allocation", "performance model", "sampler", "random", ...
    metrics: dict = field(default_factory=dict)  # ppl, task scores, seconds, memory components
    plan: dict | None = None  # Plan.to_dict()
    retry_of: int | None = None
    curve: list = field(default_factory=list)  # [[training steps, error], ...]: multi-fidelity scores
    fidelities: list[int] | None = None  # the training steps of every rung (the last: the full trial)

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a stored string (old study, search.json) → the enum

    @property
    def memory(self) -> int | None:
        """Measured memory where the trial measured it, else predicted."""
        return self.memory_measured if self.memory_measured is not None else self.memory_predicted

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrialRecord:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def evaluated(records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials with a usable error: a diverged fine-tune (inf/NaN perplexity) stays in the study
    and the report's table, but is no point for a performance model or a front."""
    return [
        r for r in records if r.status == Status.EVALUATED and r.error is not None and math.isfinite(r.error)
    ]


def budget_share(steps: float, full: float) -> float:
    """A point's training budget as the performance models see it: log(1 + steps) over
    log(1 + the full trial's steps), so 0 (the screen) → 0, the full trial → 1, and the
    doubling rungs fall at about even spacing between."""
    return math.log1p(steps) / math.log1p(full) if full > 0 else 1.0


def training_points(records: list[TrialRecord]) -> list[tuple[TrialRecord, float, float]]:
    """``(record, budget share, error)`` of every finite measured point: each point of every
    trial's curve (stopped early, running, or done) and the error of trials without a curve.

    What the performance models learn from: a plan stopped at 5 steps still says how it
    compares at 5 steps, and the budget share lets a model tell a 5-step error from a final one.
    """
    out = []
    for r in records:
        if r.curve:
            full = (r.fidelities or [max(s for s, _ in r.curve)])[-1]
            points = [(budget_share(s, full), e) for s, e in r.curve]
        else:
            points = [(1.0, r.error)] if r.status == Status.EVALUATED else []
        out += [(r, b, float(e)) for b, e in points if e is not None and math.isfinite(e)]
    return out


def choose_trial(records: list[TrialRecord], budget: int) -> TrialRecord | None:
    """The trial a search chooses: the lowest error among evaluated plans whose predicted
    memory fits ``budget`` (ties: the earlier trial). The only place this rule is written —
    the progress bar, the summary, the saved plan and the report all follow it."""
    fits = [r for r in evaluated(records) if r.memory_predicted is None or r.memory_predicted <= budget]
    return min(fits, key=lambda r: (r.error, r.number)) if fits else None


def count(records: list[TrialRecord], status: Status = Status.EVALUATED) -> int:
    return sum(r.status == status for r in records)


def wasted_in_a_row(records: list[TrialRecord]) -> int:
    """How many of the latest trials in a row tried nothing new: duplicates and refusals.
    The one count of a stalled search: searchers step in at a few, the loop gives up at 500."""
    n = 0
    for r in sorted(records, key=lambda r: -r.number):
        if r.status not in (Status.DUPLICATE, Status.REJECTED):
            break
        n += 1
    return n


def tried(records: list[TrialRecord]) -> int:
    """Plans the study has tried: evaluated, or stopped early by the pruner (what ``trials`` counts)."""
    return count(records, Status.EVALUATED) + count(records, Status.PRUNED)
