"""A search space priced from a config dict and a cheap synthetic evaluator (no model, no training)."""

from __future__ import annotations

import time
from pathlib import Path

from qpruner.architecture import LayerShape
from qpruner.plan import FORMATS, Plan
from qpruner.search.evaluator import Evaluation
from qpruner.search.sensitivity import Sensitivity
from qpruner.search.space import SearchSpace

CONFIG = {
    "model_type": "llama",
    "hidden_size": 256,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "intermediate_size": 688,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
    "head_dim": 32,
}


def make_space(search: str = "bits", layers: int = 6, **kw) -> SearchSpace:
    shapes = [LayerShape(8, 4, 688 - 64 * (i % 2)) for i in range(layers)]  # pruned unevenly
    base = Plan.uniform(layers, "nf4", 8, dtype="fp32", shapes=shapes)
    for i, lp in enumerate(base.layers):
        lp.prune_ratio = 0.05 * (i % 2)
    return SearchSpace(
        base, {**CONFIG, "num_hidden_layers": layers}, search=search, batch=1, seq_len=64, **kw
    )


def sensitivity(delta: list[list[float]], bits=(2, 3)) -> Sensitivity:
    """A measured sensitivity with the given Δ loss per layer and width (no model run)."""
    return Sensitivity(list(bits), 3.0, delta, tokens=100, seconds=1.0)


def new_study():
    """An in-memory optuna study for a searcher's ``setup`` (no storage, no log lines)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study()


def budget_between(space: SearchSpace, share: float) -> int:
    """A budget ``share`` of the way from the cheapest to the dearest plan of the space."""
    lo = space.memory(space.cheapest())
    hi = space.memory({k: max(v) for k, v in space.param_choices.items()})
    return int(lo + share * (hi - lo))


class SyntheticEvaluator:
    """error = Σ_i w_i·2^(−bits_i) + Σ_i v_i/rank_i: layer 0 matters most, deterministic.

    ``hang_at`` makes the evaluation of that trial index (counted in this process) write
    ``marker`` and sleep, for kill -9 tests.
    """

    metric = "synthetic"

    def __init__(
        self,
        layers: int,
        hang_at: int | None = None,
        marker: str | None = None,
        delay: float = 0.0,
        work: int = 0,
    ):
        self.delay, self.work = delay, work
        self.w = [4.0 / (1 + i) for i in range(layers)]
        self.v = [0.5 / (1 + i) for i in range(layers)]
        self.calls = 0
        self.hang_at, self.marker = hang_at, marker
        self.seen: list[tuple] = []
        self.gap = 2.0  # multi-fidelity: how much worse a plan looks before any training
        self.points: list[int] = []

    def describe(self) -> dict:
        return {"name": "synthetic", "w": self.w, "v": self.v}

    def __call__(self, plan: Plan) -> Evaluation:
        if self.hang_at is not None and self.calls == self.hang_at:
            Path(self.marker).write_text("started")
            time.sleep(120)
        self.calls += 1
        time.sleep(self.delay)
        if self.work:  # CPU-bound stand-in for a fine-tune (the distributed benchmark)
            import torch

            a = torch.ones(256, 256)
            for _ in range(self.work):
                a = (a @ a) / 256
        bits = [FORMATS[lp.weight_format] for lp in plan.layers]
        ranks = [lp.lora_rank for lp in plan.layers]
        self.seen.append((tuple(bits), tuple(ranks)))
        err = sum(w * 2.0 ** (-b) for w, b in zip(self.w, bits, strict=True))
        err += sum(v / r for v, r in zip(self.v, ranks, strict=True))
        return Evaluation(1.0 + err, None, {"synthetic": err})

    def curve(self, plan: Plan, steps):
        """A known learning curve: the final error plus ``gap`` x (1 - the budget share), which
        falls from ``gap`` at 0 steps to 0 at the last; ``self.points`` counts the points each
        trial was asked for (fewer than ``len(steps)``: stopped early)."""
        from qpruner.search.records import budget_share

        final = self(plan)
        self.points.append(0)
        for s in steps:
            self.points[-1] += 1
            early = self.gap * (1 - budget_share(s, steps[-1]))
            yield Evaluation(final.error + early, final.memory if s == steps[-1] else None, {"steps": s})


def worker(
    url: str,
    trials: int,
    method: str = "automixq",
    hang_at: int | None = None,
    marker: str | None = None,
    delay: float = 0.0,
    heartbeat: int | None = None,
    grace: int | None = None,
    layers: int = 4,
    log: str | None = None,
    db_retries: int = 5,
    db_backoff: float = 2.0,
    work: int = 0,
    method_seed: int = 0,
    study: str = "s",
) -> int:
    """One search worker process (``python -c``): the same study, as every other worker runs it."""
    import json
    import sys

    from qpruner.errors import QPrunerError
    from qpruner.search.run import run_search
    from qpruner.search.search_run import SearchRun

    space = make_space("joint", layers)
    opts = {"n_initial": 2, "population": 8, "generations": 2} if method in ("automixq", "joint") else {}
    ev = SyntheticEvaluator(layers, hang_at=hang_at, marker=marker, delay=delay, work=work)
    run = SearchRun(
        space=space,
        evaluator=ev,
        budget=budget_between(space, 0.5),
        storage=url,
        method=method,
        trials=trials,
        study_name=study,
        seed=method_seed,
        options=opts,
        heartbeat=heartbeat,
        grace=grace,
        db_retries=db_retries,
        db_backoff=db_backoff,
    )
    try:
        run_search(run, resume=True, progress=False, log=lambda *_: None)
    except QPrunerError as exc:
        print(f"qpruner: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if log:
            Path(log).write_text(json.dumps([list(map(list, k)) for k in ev.seen]))
    return 0
