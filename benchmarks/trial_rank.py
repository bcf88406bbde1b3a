"""Does a search trial order plans as their recovery does, and at which trial learning rate?

A search chooses by its trials' errors (``qpruner.search.recipe.trial_training``: 20 steps of
8 x 128 tokens at lr 1e-3, no warm-up), but the plan it returns is recovered at the recovery's
rate, and rank_trade.py found the 20-step recovery best near lr 4e-3 (8x real_bench's 5e-4),
where the placement of bits mattered far less than at 5e-4. If the trial's rate makes it rank
plans otherwise than their recovery, the search optimises the wrong thing.

Plans, all rank 8, in a real_bench ``--budget weights-midway`` work directory at ``--ratio``:
uniform NF4 and int8 (the two ends of the budget's trade-off) and, at one memory between them,
QPruner's searched widths as searched, shuffled across layers (three draws) and reversed (each
layer given the width its sensitivity rank's mirror got: 8 bits where the search put its
fewest). Each plan gets the search's own trial (the evaluator every searcher uses, scored at
its multi-fidelity rungs 0, 5, 10, 20 steps) at each ``--trial-lrs`` rate and ``--trial-seeds``
seed, and a recovery exactly like rank_trade's ``lr x8`` rows (20 steps of 8 x 256 at 4e-3,
WikiText-2 test perplexity); plans rank_trade already recovered so are read from its JSON.

Reported: Spearman's rho between each predictor (the measured sensitivity's additive prior,
each rung's trial error at each rate) and the recovered test perplexity (mean over training
seeds), over all plans and within the one-memory family, and on how many of the plan pairs
whose recoveries differ by more than twice their combined standard error each predictor orders
rightly (the other pairs are ties). Resumable per trial and per recovery.

    python benchmarks/trial_rank.py --work /path/to/real_bench_midway
    python benchmarks/trial_rank.py --table
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import optuna
import real_bench as rb
from rank_trade import RESULTS as RANK_TRADE
from rank_trade import add_scoring_args
from real_table import Rows, mean_se

from qpruner.checkpoint import load_tokenizer
from qpruner.plan import Plan
from qpruner.reference import resolve_corpus
from qpruner.search import SearchConfig
from qpruner.search.evaluator import FinetuneEvaluator
from qpruner.search.fidelity import fidelity_steps
from qpruner.search.from_model import build_space
from qpruner.search.performance import rank_correlation
from qpruner.search.recipe import trial_training
from qpruner.search.searchers.importance import stored_sensitivity

RESULTS = rb.ROOT / "results" / "trial_rank.json"
RECOVERY_LR_TIMES = 8  # rank_trade's "lr x8" rows: 8 x real_bench's 5e-4
#: plan -> rank_trade's row of the same plan at RECOVERY_LR_TIMES (read, not rerun)
RANK_TRADE_ROWS = {"NF4": "NF4 rank 8", "int8": "int8 + LoRA", "QPruner": "QPruner",
                   "shuffled 0": "QPruner widths shuffled"}  # fmt: skip
FAMILY = ("QPruner", "shuffled 0", "shuffled 1", "shuffled 2", "reversed")  # one memory


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(rb.ROOT / "out" / "real_bench"), help="a real_bench work directory")
    ap.add_argument("--ratio", default="0.2")
    ap.add_argument("--trial-lrs", default="0.001,0.004")
    ap.add_argument("--trial-seeds", default="42", help="trial training seeds, e.g. 42,1")
    ap.add_argument("--recovery-seeds", default="42,1")
    add_scoring_args(ap, out=RESULTS)
    return ap.parse_args()


def reversed_widths(widths: list[int], sensitivity: list[float]) -> list[int]:
    """Each layer gets the width of the layer at the mirror of its sensitivity rank: the width
    multiset kept, its order against sensitivity turned round."""
    order = sorted(range(len(widths)), key=lambda i: sensitivity[i])
    out = [0] * len(widths)
    for rank, layer in enumerate(order):
        out[layer] = widths[order[len(order) - 1 - rank]]
    return out


def build_plans(work: Path, ratio: str) -> dict[str, dict]:
    """Name -> {plan, bits, weights_lora, predicted_delta} for every plan this benchmark ranks."""
    pruned = work / f"pruned-{ratio}"
    db = work / f"search-{ratio}-QPruner" / "study.db"
    study = optuna.load_study(study_name="qpruner", storage=f"sqlite:///{db}")
    sens = stored_sensitivity(study)
    if sens is None:
        raise SystemExit("the QPruner study stored no measured sensitivity (--layer-importance sensitivity)")
    space = build_space(pruned, SearchConfig(memory_measure="weights", bits=rb.BITS, rank=8))
    searched = rb.row_plan(work, f"{ratio}/QPruner")
    widths = [int(round(b)) for b in Plan.load(searched).bits_per_layer()]
    budget = space.memory(space.choices_from(widths))
    plans = {"NF4": space.plan(space.choices_from([4] * space.num_layers)),
             "int8": space.plan(space.choices_from([8] * space.num_layers)),
             "QPruner": space.plan(space.choices_from(widths))}  # fmt: skip
    for seed in (0, 1, 2):
        shuffle = rb.shuffled_widths(widths, space=space, budget=budget, seed=seed)
        plans[f"shuffled {seed}"] = space.plan(space.choices_from(shuffle))
    at_2bits = [sens.at(i, 2) for i in range(space.num_layers)]
    reverse = space.choices_from(reversed_widths(widths, at_2bits))
    if space.memory(reverse) > budget * 1.01:
        raise SystemExit("the reversed widths cost more than 1 % over the searched plan's memory")
    plans["reversed"] = space.plan(reverse)
    out = {}
    for name, plan in plans.items():
        bits = [int(round(b)) for b in plan.bits_per_layer()]
        choices = space.choices_from(bits)
        out[name] = dict(plan=plan, bits=bits, weights_lora=space.memory(choices),
                         predicted_delta=sens.predicted_delta(bits))  # fmt: skip
    return out


def run_trials(rows: Rows, plans: dict, *, pruned: Path, corpus: Path, args) -> None:
    """The search's trial of every plan at every rate and seed, seed- then rate-major."""
    steps = fidelity_steps(trial_training().steps)
    for seed in map(int, args.trial_seeds.split(",")):
        for lr in map(float, args.trial_lrs.split(",")):
            train = replace(trial_training(), lr=lr, seed=seed)
            evaluator = None
            for name, facts in plans.items():
                key = f"trial/{name}/lr {lr:g}/seed {seed}"
                if rows.get(key) is not None:
                    continue
                evaluator = evaluator or FinetuneEvaluator(
                    str(pruned), str(corpus / "valid.txt"), eval_data=str(corpus / "valid.txt"), train=train
                )
                t0 = time.perf_counter()
                points = list(evaluator.curve(facts["plan"], steps))
                curve = [[s or 0, p.error] for s, p in zip(steps, points, strict=True)]
                row = {"curve": curve, "seconds": time.perf_counter() - t0, "memory": points[-1].memory}
                rows.put(key, row)
                print(f"{key}: " + ", ".join(f"{s} steps {e:.2f}" for s, e in curve), flush=True)


def run_recoveries(rows: Rows, plans: dict, *, pruned: Path, ctx: dict, args) -> None:
    """rank_trade's lr x8 recovery of every plan it has not recovered itself, per seed."""
    seeds = [int(s) for s in args.recovery_seeds.split(",")]
    recover_plans(rows, plans, pruned=pruned, ctx=ctx, args=args, seeds=seeds,
                  subdir=f"trial_rank/{args.ratio}/", skip=RANK_TRADE_ROWS)  # fmt: skip


def recover_plans(rows: Rows, plans: dict, *, pruned: Path, ctx: dict, args, seeds: list[int],
                  subdir: str = "", skip=()) -> None:  # fmt: skip
    """Each plan recovered like rank_trade's lr x8 rows, per training seed, seed-major (a cut-off
    run leaves whole seeds), as rows ``recovery/NAME/seed S``; plans in ``skip`` and rows
    already stored are passed over. A plan whose facts say ``loftq`` starts from LoftQ."""
    lr = rb.train_config(1).lr * RECOVERY_LR_TIMES
    for seed in seeds:
        for name, facts in plans.items():
            key = f"recovery/{name}/seed {seed}"
            if name in skip or rows.get(key) is not None:
                continue
            t0 = time.perf_counter()
            dirname = f"{subdir}{name}_seed{seed}".replace(" ", "_")
            row = rb.recover(
                pruned,
                facts["plan"],
                loftq=facts.get("loftq", False),
                args=args,
                ctx=ctx,
                name=dirname,
                lr=lr,
                seed=seed,
            )
            rows.put(key, row | {"wall_seconds": time.perf_counter() - t0})
            print(f"{key}: ppl {row['ppl']:.2f}, task avg {row['task_avg']:.3f}", flush=True)


def check_reused(plans: dict) -> None:
    """A plan read from rank_trade must be the plan rank_trade recovered, layer for layer."""
    trade = json.loads(RANK_TRADE.read_text())["rows"]
    for name, row in RANK_TRADE_ROWS.items():
        stored = trade.get(f"{row}, lr x{RECOVERY_LR_TIMES}")
        if stored is None or stored["bits"] != plans[name]["bits"]:
            raise SystemExit(f"rank_trade's {row!r} at lr x{RECOVERY_LR_TIMES} differs or is missing")


def recovered(rows: dict, name: str) -> list[float]:
    """The plan's recovered test perplexities, one per training seed (rank_trade's where it has them)."""
    if name in RANK_TRADE_ROWS:
        trade = json.loads(RANK_TRADE.read_text())["rows"]
        base = f"{RANK_TRADE_ROWS[name]}, lr x{RECOVERY_LR_TIMES}"
        return [r["ppl"] for k, r in trade.items() if k == base or k.startswith(f"{base} train seed ")]
    return [r["ppl"] for k, r in rows.items() if k.startswith(f"recovery/{name}/")]


def predictors(rows: dict) -> dict[str, dict[str, float]]:
    """Predictor name -> {plan: value}: the sensitivity prior, and each rate's trial error at each
    rung (mean over trial seeds)."""
    names = [k.split("/", 1)[1] for k in rows if k.startswith("plan/")]
    out = {"sensitivity prior (no training)": {n: rows[f"plan/{n}"]["predicted_delta"] for n in names}}
    trials: dict[str, dict[str, list[float]]] = {}
    for key, r in rows.items():
        if key.startswith("trial/"):
            _, name, lr, _seed = key.split("/")
            for steps, error in r["curve"]:
                label = "screen (0 steps)" if steps == 0 else f"trial {lr}, {steps} steps"
                trials.setdefault(label, {}).setdefault(name, []).append(error)
    for label, by_plan in trials.items():
        out[label] = {n: sum(v) / len(v) for n, v in by_plan.items()}
    return out


def separated_pairs(stats: dict[str, tuple[float, float]]) -> list[tuple[str, str]]:
    """Plan pairs whose recovered means differ by more than twice their combined standard error:
    the only orderings a predictor can be right or wrong about (the rest are ties)."""
    return [(a, b) for a, b in itertools.combinations(stats, 2)
            if abs(stats[a][0] - stats[b][0]) > 2 * math.hypot(stats[a][1], stats[b][1])]  # fmt: skip


def table(data: dict) -> str:
    """Each plan's recovery and trials, then each predictor's Spearman rho against the recovery."""
    rows = data["rows"]
    names = [k.split("/", 1)[1] for k in rows if k.startswith("plan/")]
    preds = predictors(rows)
    finals = [p for p in preds if p.endswith(" 20 steps")]
    head = "| plan | weights + LoRA MiB | predicted Δ loss | recovered test ppl (seeds) | "
    head += " | ".join(finals) + " |"
    out = [head, "|---" * (4 + len(finals)) + "|"]
    stats = {}
    for n in names:
        ppl = recovered(rows, n)
        m, se = mean_se(ppl) if ppl else (float("nan"), float("nan"))
        stats[n] = (m, se)
        facts = rows[f"plan/{n}"]
        cells = [f"{preds[p].get(n, float('nan')):.2f}" for p in finals]
        out.append(f"| {n} | {facts['weights_lora'] / 2**20:.2f} | {facts['predicted_delta']:.3f} | "
                   f"{m:.2f} ± {se:.2f} ({len(ppl)}) | " + " | ".join(cells) + " |")  # fmt: skip
    truth = {n: m for n, (m, _) in stats.items()}
    pairs = separated_pairs(stats)
    out += ["", "| predictor | ρ, all plans | ρ, one memory (" + ", ".join(FAMILY) + ") | "
            f"agrees on the {len(pairs)} separated pairs |", "|---|---|---|---|"]  # fmt: skip
    for label, values in preds.items():
        rho = [rank_correlation([values.get(n, float("nan")) for n in group], [truth[n] for n in group])
               for group in (names, [n for n in names if n in FAMILY])]  # fmt: skip
        agree = sum((values[a] - values[b]) * (truth[a] - truth[b]) > 0 for a, b in pairs)
        out.append(f"| {label} | {rho[0]:.2f} | {rho[1]:.2f} | {agree} |")
    out.append(
        f"\nSeparated pairs (recovered means > 2 combined SE apart): {len(pairs)} of "
        f"{len(names) * (len(names) - 1) // 2}; the rest are ties a predictor cannot get wrong."
    )
    return "\n".join(out)


def main() -> None:
    args = parse_args()
    skip = ("table", "out", "work", "trial_lrs", "trial_seeds", "recovery_seeds")  # not the recipe
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    rows = Rows(Path(args.out), settings, read_only=args.table)
    if not args.table:
        work = Path(args.work)
        pruned = work / f"pruned-{args.ratio}"
        if not (pruned / "config.json").is_file():
            raise SystemExit(f"{pruned} not found: run real_bench.py --budget weights-midway first")
        plans = build_plans(work, args.ratio)
        check_reused(plans)
        for name, facts in plans.items():
            rows.put(f"plan/{name}", {k: v for k, v in facts.items() if k != "plan"})
        corpus = resolve_corpus(fallback=False)
        args.steps = 20  # rank_trade's recovery recipe (rb.recover reads it)
        run_trials(rows, plans, pruned=pruned, corpus=corpus, args=args)
        ctx = {"corpus": corpus, "tokenizer": load_tokenizer(pruned)}
        run_recoveries(rows, plans, pruned=pruned, ctx=ctx, args=args)
    print(table(rows.data))


if __name__ == "__main__":
    main()
