"""Successive halving or Hyperband? Both replayed over the real model's own training curves.

Issue 15 item 1 asks for optuna's successive halving or Hyperband, the choice measured. A live
comparison would cost a search per pruner and seed; the pruners only ever see a trial's scores
at the rungs, so here they are replayed over recorded curves instead:

1. *Curves* (resumable, the slow part): ``--plans`` random plans that fit search_real_bench's
   budget (halfway between uniform NF4 and int8) on SmolLM2-135M pruned at 30 %, each trained
   for a full trial (search_real_bench --quick's recipe), scored at every rung (0, 1, 2, 4 steps),
   with the CPU seconds (all threads) taken to reach each rung: the cost, unchanged when another
   job shares the cores. The pruned checkpoint is search_real_bench's
   (run it first, or its ``--quick``).
2. *Replays* (seconds): random search over that pool, in ``--replays`` seeded orders, each on a
   real in-memory optuna study with the pruner under test (``SuccessiveHalvingPruner``,
   ``HyperbandPruner``, or none: full trials). A trial costs the recorded CPU seconds up to the rung
   where it is stopped. New trials start while the cost is under the budget (``--budgets``, in
   units of the mean full trial's seconds).

Reported per pruner and budget: the best *final* valid error found (only full trials have one),
mean ± se over replays, its regret against the pool's best plan, plans tried, and the share of
replays that found one of the pool's best ``--top`` plans. The replays share one pool, so the
se is over orders, not over landscapes; the sampler is random search for every pruner.

    python benchmarks/pruner_bench.py                  # 14 plans, about a minute each on 2 cores
    python benchmarks/pruner_bench.py --table          # replay and print again from the JSON
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from real_table import Rows
from search_real_bench import search_cfg

from qpruner.reference import resolve_corpus
from qpruner.search.evaluator import FinetuneEvaluator
from qpruner.search.fidelity import fidelity_steps, make_pruner, resource
from qpruner.search.from_model import build_space

ROOT = Path(__file__).resolve().parent
PRUNERS = ("none (full trials)", "halving", "hyperband")
TRIAL = ("search_steps", "trial_eval_tokens", "screen_tokens")  # a trial's recipe, as search_real_bench's


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pruned", default=str(ROOT / "out" / "search_real_bench_quick" / "pruned-0.3"))
    ap.add_argument("--bench", default=str(ROOT / "results" / "search_real_bench_quick.json"),
                    help="search_real_bench's JSON: the NF4 and int8 rows set the budget")  # fmt: skip
    ap.add_argument("--plans", type=int, default=14)
    ap.add_argument(
        "--search-steps", type=int, default=4, help="steps of a full trial (search_real_bench --quick)"
    )
    ap.add_argument("--trial-eval-tokens", type=int, default=8000)
    ap.add_argument("--screen-tokens", type=int, default=2048)
    ap.add_argument("--replays", type=int, default=400)
    ap.add_argument("--budgets", default="2,4,6,8", help="replay budgets in mean full-trial costs")
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "pruner_bench.json"))
    ap.add_argument("--table", action="store_true")
    return ap.parse_args()


def collect(args, rows: Rows) -> None:
    """Every plan's full curve: error and elapsed seconds at each rung (one row per plan)."""
    import json

    bench = json.loads(Path(args.bench).read_text())["rows"]
    low, high = (bench[f"0.3/{n}"]["memory_predicted"] for n in ("QLoRA NF4", "int8 + LoRA"))
    budget = (low + high) // 2
    corpus = resolve_corpus(fallback=False)
    recipe = SimpleNamespace(minutes=0, **{k: getattr(args, k) for k in TRIAL})  # search_real_bench's trials
    cfg = search_cfg(recipe, "random", seed=0, budget=budget, multi_fidelity=True, corpus=corpus)
    space = build_space(args.pruned, cfg)
    steps = fidelity_steps(args.search_steps, cfg.fidelity_rungs)
    rows.data["fidelities"], rows.data["budget"] = list(steps), budget
    ev = FinetuneEvaluator(args.pruned, cfg.train_data, cfg.eval_data, cfg.train,
                           screen_tokens=cfg.screen_tokens)  # fmt: skip
    rng, seen = np.random.default_rng(0), set()
    plans = []
    while len(plans) < args.plans:  # the same pool on every resume: drawn from one seeded stream
        choices = space.sample(rng)
        if space.key(choices) not in seen and space.memory(choices) <= budget:
            seen.add(space.key(choices))
            plans.append(choices)
    for i, choices in enumerate(plans):
        if rows.get(f"plan {i}") is not None:
            continue
        t0, c0, curve = time.perf_counter(), time.process_time(), []
        for point in ev.curve(space.plan(choices), steps):
            # CPU seconds are the cost: they do not grow when another job shares the cores
            curve.append({"error": point.error, "seconds": time.process_time() - c0,
                          "wall_seconds": time.perf_counter() - t0})  # fmt: skip
        rows.put(f"plan {i}", {"params": choices, "memory": space.memory(choices), "curve": curve})
        print(f"plan {i}: " + ", ".join(f"{p['error']:.2f} @ {p['seconds']:.0f}s" for p in curve), flush=True)


def replay(curves: list[list[dict]], pruner: str, *, order: list[int], budget: float, seed: int):
    """Random search over ``curves`` in ``order`` under ``pruner``: (best final error, plans tried)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kind = None if pruner.startswith("none") else pruner
    study = optuna.create_study(
        pruner=make_pruner(tuple(range(len(curves[0]))) if kind else None, kind or "halving"),
        sampler=optuna.samplers.RandomSampler(seed=seed),
        study_name=f"replay-{seed}",
    )
    spent, best, tried = 0.0, math.inf, 0
    for i in order:
        if spent >= budget:
            break
        trial, curve, tried = study.ask(), curves[i], tried + 1
        if kind is None:  # scored once, at its end
            spent += curve[-1]["seconds"]
            best = min(best, curve[-1]["error"])
            study.tell(trial, curve[-1]["error"])
            continue
        for rung, point in enumerate(curve):
            trial.report(point["error"], resource(rung))
            if rung < len(curve) - 1 and trial.should_prune():
                spent += point["seconds"]
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            spent += curve[-1]["seconds"]
            best = min(best, curve[-1]["error"])
            study.tell(trial, curve[-1]["error"])
    return best, tried


def mean_se(xs) -> tuple[float, float]:
    xs = np.asarray([x for x in xs if math.isfinite(x)], dtype=float)
    if len(xs) < 2:
        return (float(xs.mean()) if len(xs) else math.nan), math.nan
    return float(xs.mean()), float(xs.std(ddof=1) / math.sqrt(len(xs)))


def landscape(rows: Rows, curves: list[list[dict]]) -> list[str]:
    """The pool: spread of final errors, costs, and how well each rung ranks the final error."""
    from qpruner.search.performance import rank_correlation

    finals = sorted(c[-1]["error"] for c in curves)
    rho = [
        f"{rows.data['fidelities'][r]} steps "
        f"{float(rank_correlation([c[r]['error'] for c in curves], [c[-1]['error'] for c in curves])):.2f}"
        for r in range(len(curves[0]) - 1)
    ]
    return [
        f"{len(curves)} plans; final valid ppl best {finals[0]:.2f}, median {finals[len(finals) // 2]:.2f}, "
        f"worst {finals[-1]:.2f}; a full trial {np.mean([c[-1]['seconds'] for c in curves]):.0f} s, "
        f"the 0-step screen {np.mean([c[0]['seconds'] for c in curves]):.0f} s",
        "Spearman ρ of each rung's error with the final error: " + ", ".join(rho),
    ]


def table(args, rows: Rows) -> list[str]:
    curves = [r["curve"] for k, r in rows.data["rows"].items() if k.startswith("plan ")]
    finals = sorted(c[-1]["error"] for c in curves)
    full = float(np.mean([c[-1]["seconds"] for c in curves]))
    out = [*landscape(rows, curves), ""]
    out += [
        "| pruner | budget (full trials) | best final ppl (mean ± se) | regret | plans tried | "
        f"found a top-{args.top} plan |",
        "|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    orders = [list(rng.permutation(len(curves))) for _ in range(args.replays)]
    result = {}
    for units in (float(u) for u in args.budgets.split(",")):
        for pruner in PRUNERS:
            runs = [
                replay(curves, pruner, order=o, budget=units * full, seed=s) for s, o in enumerate(orders)
            ]
            best, se = mean_se([b for b, _ in runs])
            found = float(np.mean([b <= finals[args.top - 1] for b, _ in runs]))
            tried = float(np.mean([n for _, n in runs]))
            result[f"{pruner} @ {units:g}"] = {"best": best, "se": se, "found_top": found, "tried": tried}
            out.append(
                f"| {pruner} | {units:g} | {best:.2f} ± {se:.2f} | {best - finals[0]:.2f} | {tried:.1f} "
                f"| {100 * found:.0f} % |"
            )
    rows.data["replays"] = result
    return out


def main() -> None:
    args = parse_args()
    keep = ("pruned", *TRIAL)  # not plans: the pool is one seeded stream, so more plans extend it
    settings = {k: v for k, v in vars(args).items() if k in keep}
    rows = Rows(Path(args.out), settings)
    if not args.table:
        collect(args, rows)
    lines = table(args, rows)
    rows.put("_summary", {"table": lines})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
