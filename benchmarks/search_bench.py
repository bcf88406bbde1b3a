"""Every searcher at the same evaluation budget on the reference model, against random search.

The reference model is Taylor-pruned at ``--ratio`` (layers 1..L-2), then each method
searches its space for ``--trials`` evaluated plans, under one memory budget: the
predicted fine-tuning memory of uniform QLoRA (NF4, rank 8). A trial is the real evaluator
(quantize per plan, ``--steps`` LoRA steps, perplexity on held-out text). Reported per
method: the best perplexity within budget, the hypervolume of its measured front (error vs
predicted memory, one reference point per space), and how many evaluations it needed to
come within 1 % of the best plan a large random search (``--large`` trials) found in the
same space. Evaluations are deterministic (seeded training), so a plan met twice is
trained once and its result reused (the count of evaluations is unaffected).

    python benchmarks/search_bench.py            # ~30 min on 2 CPU cores (reference model cached)
    python benchmarks/search_bench.py --quick    # ~8 min: 6 trials per method, 12 random

Writes benchmarks/results/search_bench.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_setup import ReferenceSetup, reference_setup, write_results

from qpruner.prune import PruneConfig
from qpruner.prune.workflow import prune_checkpoint
from qpruner.reference import TEST_FILE, TRAIN_FILE
from qpruner.search.evaluator import Evaluation, FinetuneEvaluator
from qpruner.search.from_model import SearchConfig, build_space, importance_source
from qpruner.search.pareto import hypervolume
from qpruner.search.recipe import trial_training
from qpruner.search.records import TrialRecord, evaluated
from qpruner.search.run import run_search
from qpruner.search.search_run import SearchRun
from qpruner.search.space import SearchSpace

RESULTS = Path(__file__).parent / "results" / "search_bench.json"
#: (label, method, space)
RUNS = (
    ("QPruner", "qpruner", "bits"),
    ("AutoMixQ", "automixq", "bits"),
    ("random (bits)", "random", "bits"),
    ("RankAdaptor", "rankadaptor", "ranks"),
    ("random (ranks)", "random", "ranks"),
    ("joint", "joint", "joint"),
    ("random (joint)", "random", "joint"),
)


class CachedEvaluator:
    """The real evaluator, remembering results per plan (training is seeded: same plan, same result)."""

    def __init__(self, inner: FinetuneEvaluator):
        self.inner, self.cache, self.trained = inner, {}, 0
        self.metric = inner.metric

    def describe(self) -> dict:
        return self.inner.describe()

    def __call__(self, plan) -> Evaluation:
        key = json.dumps([(lp.weight_format, lp.lora_rank) for lp in plan.layers])
        if key not in self.cache:
            self.cache[key] = self.inner(plan)
            self.trained += 1
        return self.cache[key]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--trials", type=int, default=12, help="evaluated plans per method")
    ap.add_argument(
        "--large", type=int, default=36, help="evaluated plans of the large random search per space"
    )
    ap.add_argument("--steps", type=int, default=10, help="LoRA steps per trial")
    ap.add_argument("--eval-tokens", type=int, default=16_000)
    ap.add_argument("--bits", default="2,3,4,8")
    ap.add_argument("--ranks", default="2,4,8,16")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.quick:
        args.trials, args.large, args.steps = 6, 12, 5
    return args


@dataclass
class SearchBench:
    """What every search shares, so all of them meet the same plans, budget and evaluator."""

    pruned: Path
    cfg: SearchConfig
    evaluator: CachedEvaluator
    budget: int
    importance: list[float]
    work: Path

    def search(self, label: str, method: str, *, space: str, trials: int, seed: int = 0) -> dict:
        """One method's study: its evaluated trials in order, as the scoring reads them."""
        searched = build_space(
            self.pruned, SearchConfig(**{**self.cfg.__dict__, "space": space, "method": method})
        )
        run = SearchRun(
            space=searched,
            evaluator=self.evaluator,
            budget=self.budget,
            storage=f"sqlite:///{self.work / 'studies.db'}",
            method=method,
            trials=trials,
            study_name=label.replace(" ", "_"),
            seed=seed,
            options={"importance": self.importance} if method in ("qpruner", "joint") else {},
        )
        t0, before = time.perf_counter(), self.evaluator.trained
        res = run_search(run, progress=False, log=print)
        recs = sorted(evaluated(res.summary.records), key=lambda r: r.number)
        print(
            f"  {label}: best {min(r.error for r in recs):.3f} after {len(recs)} evaluations "
            f"({time.perf_counter() - t0:.0f}s, {self.evaluator.trained - before} trained)"
        )
        return {
            "label": label,
            "method": method,
            "space": space,
            "seconds": time.perf_counter() - t0,
            "trials": [_trial(r, searched) for r in recs],
            "stopped_early": res.stopped_early,
        }


def _trial(r: TrialRecord, space: SearchSpace) -> dict:
    """A trial record as the results JSON keeps it: errors, memory, who proposed it, its plan."""
    return {
        "error": r.error,
        "memory_predicted": r.memory_predicted,
        "memory_measured": r.memory_measured,
        "proposed_by": r.proposed_by,
        "predicted_error": r.predicted_error,
        "bits": space.layer_bits(r.params),
        "ranks": space.layer_ranks(r.params),
    }


def prepare(args: argparse.Namespace, bench: ReferenceSetup) -> SearchBench:
    """Prune once, then fix the budget (uniform NF4's memory) and the layer importance for all."""
    work = Path(tempfile.mkdtemp(prefix="search_bench."))
    pruned = work / "pruned"
    prune_checkpoint(
        bench.ref.path,
        pruned,
        PruneConfig(ratio=args.ratio, layer_start=1, layer_end=-1),
        bench.corpus / TRAIN_FILE,
        progress=False,
    )
    train = trial_training(args.steps)
    cfg = SearchConfig(
        bits=tuple(int(b) for b in args.bits.split(",")),
        ranks=tuple(int(r) for r in args.ranks.split(",")),
        train=train,
        dtype="fp32",
        calib_data=str(bench.corpus / TRAIN_FILE),
    )
    evaluator = CachedEvaluator(
        FinetuneEvaluator(
            str(pruned),
            str(bench.corpus / TRAIN_FILE),
            str(bench.corpus / TEST_FILE),
            train,
            ctx_len=128,
            eval_max_tokens=args.eval_tokens,
        )
    )
    nf4 = build_space(pruned, SearchConfig(**{**cfg.__dict__, "space": "bits"}))
    budget = nf4.memory(nf4.choices_from([4] * nf4.num_layers))
    print(f"budget: {budget / 2**20:.2f} MiB (uniform NF4, rank 8); {nf4.num_layers} layers")
    importance = importance_source(pruned, cfg, "fp32", device="cpu")()
    print("layer importance (MI):", [round(x, 4) for x in importance])
    return SearchBench(pruned, cfg, evaluator, budget, importance, work)


def _evals_to(trials: list[dict], target: float) -> int | None:
    """How many evaluations the running best needed to reach ``target`` (None: never)."""
    best_so_far = float("inf")
    for i, t in enumerate(trials, 1):
        best_so_far = min(best_so_far, t["error"])
        if best_so_far <= target:
            return i
    return None


def score(run: dict, runs: list[dict], large: dict[str, dict], *, budget: int) -> dict:
    """One method against the large random search of its space: best, hypervolume, evaluations."""
    ref_trials = large[run["space"]]["trials"]
    target = min(t["error"] for t in ref_trials)
    worst = max(
        t["error"] for r in [*runs, large[run["space"]]] if r["space"] == run["space"] for t in r["trials"]
    )
    ref = (worst * 1.001, float(budget))
    pts = [(t["error"], float(t["memory_predicted"])) for t in run["trials"]]
    return {
        "label": run["label"],
        "space": run["space"],
        "best_ppl": min(p[0] for p in pts),
        "hypervolume": hypervolume(pts, ref),
        "large_random_hypervolume": hypervolume(
            [(t["error"], float(t["memory_predicted"])) for t in ref_trials], ref
        ),
        "large_random_best": target,
        "evals_to_1pct": _evals_to(run["trials"], 1.01 * target),
        "evals_to_0.1pct": _evals_to(run["trials"], 1.001 * target),
        "evaluations": len(pts),
        "seconds": run["seconds"],
    }


def search_table(rows: list[dict], large: int) -> list[str]:
    """The Markdown table; ``large`` is the size of the random search each row is measured against."""
    table = [
        "| method | space | best ppl within budget | hypervolume (large random) "
        "| evals to ≤1 % / ≤0.1 % of large-random best | evaluations | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hits = [
            r[k] if r[k] is not None else f"not in {r['evaluations']}"
            for k in ("evals_to_1pct", "evals_to_0.1pct")
        ]
        table.append(
            f"| {r['label']} | {r['space']} | {r['best_ppl']:.3f} (random {large}: "
            f"{r['large_random_best']:.3f}) | {r['hypervolume']:.4g} ({r['large_random_hypervolume']:.4g}) "
            f"| {hits[0]} / {hits[1]} | {r['evaluations']} | {r['seconds']:.0f} |"
        )
    return table


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    bench = reference_setup(args.eval_tokens)
    sb = prepare(args, bench)
    # The reference search draws with its own seed, so the random baseline is not its prefix.
    large = {
        s: sb.search(f"large random ({s})", "random", space=s, trials=args.large, seed=1000)
        for s in ("bits", "ranks", "joint")
    }
    runs = [sb.search(label, m, space=s, trials=args.trials) for label, m, s in RUNS]
    rows = [score(run, runs, large, budget=sb.budget) for run in runs]
    table = search_table(rows, args.large)
    print("\n".join(table))
    write_results(
        args.out,
        bench,
        {
            "args": vars(args),
            "budget": sb.budget,
            "importance": sb.importance,
            "rows": rows,
            "runs": runs,
            "large_random": large,
            "plans_trained": sb.evaluator.trained,
            "wall_seconds": time.perf_counter() - t_start,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
