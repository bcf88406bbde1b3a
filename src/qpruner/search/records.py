"""What a search stores per trial, read back from the optuna study alone.

Every finished trial keeps its plan, its error and memory (predicted and measured) and how
it was proposed as optuna user attributes (JSON), so the report and the chosen plan can be
rebuilt from the storage URL with no worker's files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

#: ``status`` values: trained and measured; refused before training (over budget); crashed.
EVALUATED, REJECTED, FAILED, RUNNING = "evaluated", "rejected", "failed", "running"


@dataclass
class TrialRecord:
    number: int
    status: str  # EVALUATED | REJECTED | FAILED | RUNNING | "waiting"
    params: dict[str, int]  # e.g. {"bits_0": 4, "rank_0": 8, ...}
    error: float | None = None  # what the search minimises: perplexity, or 1 - task score
    memory_predicted: int | None = None  # bytes, fine-tuning total from qpruner.memory.estimate
    memory_measured: int | None = None  # bytes, measured during the trial's fine-tune
    predicted_error: float | None = None  # the performance model's guess when it proposed the plan
    proposed_by: str | None = None  # "initial allocation", "performance model", "sampler", "random", ...
    metrics: dict = field(default_factory=dict)  # ppl, task scores, seconds, memory components
    plan: dict | None = None  # Plan.to_dict()
    retry_of: int | None = None

    @property
    def memory(self) -> int | None:
        """Measured memory where the trial measured it, else predicted."""
        return self.memory_measured if self.memory_measured is not None else self.memory_predicted

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialRecord:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def evaluated(records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials with a usable error: a diverged fine-tune (inf/NaN perplexity) stays in the study
    and the report's table, but is no point for a performance model or a front."""
    return [r for r in records if r.status == EVALUATED and r.error is not None and math.isfinite(r.error)]
