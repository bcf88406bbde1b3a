"""Bits for rank at uniform NF4's served memory: is a LoRA rank worth more than its bytes in bits?

At exactly uniform NF4's weights + LoRA, uniform NF4 is the least-damage plan on SmolLM2-135M
(``allocation_frontier.py``): the only width cheaper than NF4 is 2 bits, whose damage no 8-bit
layer repays. The one other thing a plan holds in that memory is its adapters. This benchmark
takes the bytes from there: every layer at rank R (below the reference's 8), and the bytes that
frees spent by the least-damage knapsack (``qpruner.search.allocation.least_damage_bits``, the
plan QPruner's search starts from) on 8-bit layers, within uniform NF4 rank 8's weights + LoRA.
Beside each, uniform NF4 at the same rank (the rank's own cost, without the bits it buys), and
NF4 at rank 8, the reference. Each is recovered exactly like real_bench's rows (same tokens,
``recover``), with extra training seeds for the spread. With alpha = 2 x rank (the space's rule)
a smaller rank also takes smaller steps, so a row may scale the learning rate (``nf4:2:4``: NF4
at rank 2, lr x 4) to tell a rank's capacity from its step size; ``row:NAME[:LR_TIMES]`` recovers
the plan real_bench's row NAME recovered (``row:QPruner:4``), to see whether that table's
comparison holds at another learning rate; ``loftq:RANK[:LR_TIMES]`` is uniform NF4 at the rank
recovered from LoftQ's initialisation, the issue's other baseline.

It runs inside a real_bench work directory: the pruned model of ``--ratio`` and the layer
sensitivity stored by real_bench's QPruner search under ``--budget weights`` or
``weights-midway`` (``search-RATIO-QPruner/study.db``), so the plans use the sensitivity that
search used. Resumable per row, like real_bench.

    python benchmarks/real_bench.py --ratios 0.2 --budget weights --rows pruned,QPruner ...
    python benchmarks/rank_trade.py --work benchmarks/out/real_bench --train-seeds 1
    python benchmarks/rank_trade.py --work benchmarks/out/real_bench --rows nf4:2:4,least:2:4,nf4:8:4
    python benchmarks/rank_trade.py --work benchmarks/out/real_bench --rows "row:QPruner:4,row:int8 + LoRA:4"
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import optuna
import real_bench as rb
from real_table import Rows, mean_se

from qpruner import PlanSource
from qpruner.checkpoint import load_tokenizer
from qpruner.data_sources import find_shared_data
from qpruner.plan import Plan
from qpruner.reference import resolve_corpus
from qpruner.search import SearchConfig
from qpruner.search.allocation import least_damage_bits
from qpruner.search.budget import resolve_budget
from qpruner.search.from_model import build_space
from qpruner.search.searchers.importance import stored_sensitivity

RESULTS = rb.ROOT / "results" / "rank_trade.json"
REFERENCE = "uniform:4:8"  # the budget: uniform NF4 at rank 8, weights + LoRA
ROWS = "nf4:2,least:2,nf4:4,least:4,nf4:8"
#: row kind -> its row's name (``{}``: the spec's argument)
KINDS = {"nf4": "NF4 rank {}", "loftq": "LoftQ NF4 rank {}", "least": "least damage, rank {}", "row": "{}"}
SPECS = "nf4:RANK, loftq:RANK, least:RANK or row:NAME"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(rb.ROOT / "out" / "real_bench"), help="a real_bench work directory")
    ap.add_argument("--ratio", default="0.2")
    ap.add_argument("--rows", default=ROWS, help=f"{SPECS}; each [:LR_TIMES]")
    ap.add_argument("--train-seeds", default="", help="extra training seeds for every row, e.g. 1,2")
    ap.add_argument("--steps", type=int, default=20)  # real_bench's weights runs' recipe
    add_scoring_args(ap, out=RESULTS)
    return ap.parse_args()


def add_scoring_args(ap: argparse.ArgumentParser, *, out: Path) -> None:
    """The scoring and results options rank_trade, trial_rank and low_memory share (their
    recoveries must score alike: trial_rank reads rank_trade's rows as its own)."""
    ap.add_argument("--ppl-tokens", type=int, default=20_000)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--tasks", default="qp_piqa,qp_arc_easy,qp_winogrande,qp_copa")
    ap.add_argument("--task-data", default=str(find_shared_data("zeroshot", files=["piqa.jsonl"]) or ""))
    ap.add_argument("--out", default=str(out))
    ap.add_argument("--table", action="store_true", help="print the table from --out and stop")


def row_name(spec: str) -> tuple[str, str, str, float]:
    """``least:2:4`` -> ("least damage, rank 2, lr x4", "least", "2", 4.0): a row's name, kind,
    rank (or, for ``row:``, real_bench's row) and learning-rate multiplier."""
    kind, arg, *times = spec.split(":")
    if kind not in KINDS or not (arg.isdigit() or kind == "row" and arg) or len(times) > 1:
        raise SystemExit(f"bad row {spec!r}: write {SPECS}, optionally :LR_TIMES")
    lr = float(times[0]) if times else 1.0
    name = KINDS[kind].format(arg)
    return name + (f", lr x{lr:g}" if lr != 1 else ""), kind, arg, lr


def plans(pruned: Path, study_db: Path, specs: list[str], *, row_dir: Path) -> dict[str, dict]:
    """Row name -> its plan, training override and facts: ``nf4`` rows are uniform NF4 at the
    rank (``loftq`` the same from LoftQ's initialisation); ``least`` rows the least-damage bits
    at the rank within uniform NF4 rank 8's weights + LoRA; ``row`` rows the plan a real_bench
    row recovered (in ``row_dir``), as it was (LoftQ's row from LoftQ again)."""
    if not study_db.is_file():
        raise SystemExit(f"{study_db} not found: run real_bench's QPruner row with --budget weights first")
    study = optuna.load_study(study_name="qpruner", storage=f"sqlite:///{study_db}")
    sens = stored_sensitivity(study)
    if sens is None:
        raise SystemExit(f"{study_db} stored no measured sensitivity (--layer-importance sensitivity)")
    weights = SearchConfig(memory_measure="weights", bits=rb.BITS)
    budget = resolve_budget(REFERENCE, build_space(pruned, weights)).bytes
    out = {}
    for name, kind, arg, lr in map(row_name, specs):
        source = rb.row_plan(row_dir, arg) if kind == "row" else None
        if source is not None and not source.is_file():
            raise SystemExit(f"{source} not found: real_bench's row {arg!r} was not recovered in {row_dir}")
        stored = Plan.load(source) if source else None
        if stored and len({lp.lora_rank for lp in stored.layers}) > 1:
            raise SystemExit(f"{source}: ranks differ across layers; row: takes plans of one rank")
        space = build_space(pruned, replace(weights, rank=stored.layers[0].lora_rank if stored else int(arg)))
        if stored:
            bits = [round(b) for b in stored.bits_per_layer()]
        else:
            nf4 = kind in ("nf4", "loftq")
            bits = [4] * space.num_layers if nf4 else least_damage_bits(space, sens, budget)
        choices, delta = space.choices_from(bits), sens.predicted_delta(bits)
        plan = PlanSource.from_file(source) if source else space.plan(choices)
        train = {} if lr == 1 else {"lr": rb.train_config(1).lr * lr}
        loftq = kind == "loftq" or kind == "row" and arg in rb.LOFTQ  # LoftQ's row: from LoftQ again
        out[name] = dict(plan=plan, train=train, loftq=loftq, bits=bits, rank=space.fixed_rank,
                         weights_lora=space.memory(choices), predicted_delta=delta)  # fmt: skip
    return out


def spread(xs: list[float], digits: int) -> str:
    """``mean ± se`` over seeds; the value alone where one seed gives no spread."""
    m, se = mean_se(xs)
    return f"{m:.{digits}f}" + (f" ± {se:.{digits}f}" if len(xs) > 1 else "")


def table(data: dict) -> str:
    """Mean ± standard error over training seeds per row, with its widths and memory."""
    head = "| row | widths | weights + LoRA MiB | predicted Δ loss | test ppl (seeds) | task avg % |"
    out = [head, "|---|---|---|---|---|---|"]
    for name, r in data["rows"].items():
        if " train seed " in name:
            continue
        runs = [r] + [v for k, v in data["rows"].items() if k.startswith(f"{name} train seed ")]
        ppl, avg = spread([x["ppl"] for x in runs], 2), spread([100 * x["task_avg"] for x in runs], 1)
        widths = " ".join(f"{b}b×{n}" for b, n in sorted(Counter(r["bits"]).items()))
        out.append(f"| {name} | {widths} | {r['weights_lora'] / 2**20:.2f} | {r['predicted_delta']:.3f} | "
                   f"{ppl} ({len(runs)}) | {avg} |")  # fmt: skip
    return "\n".join(out)


def recover_rows(rows: Rows, found: dict, *, seeds: list, pruned: Path, args, ctx: dict) -> None:
    """Each row recovered with each seed (None: the recipe's), seed-major so that a cut-off run
    leaves every row with the same seeds; rows already stored are skipped."""
    for seed in seeds:
        for name, facts in found.items():
            key = name if seed is None else f"{name} train seed {seed}"
            if rows.get(key) is not None:
                continue
            t0 = time.perf_counter()
            train = facts["train"] | ({} if seed is None else {"seed": seed})
            dirname = f"rank_trade/{args.ratio}/{key}".replace(" ", "_").replace(",", "")
            row = rb.recover(
                pruned, facts["plan"], loftq=facts["loftq"], args=args, ctx=ctx, name=dirname, **train
            )
            kept = {k: v for k, v in facts.items() if k not in ("plan", "train", "loftq")} | facts["train"]
            rows.put(key, row | kept | {"wall_seconds": time.perf_counter() - t0})
            print(f"{key}: ppl {row['ppl']:.2f}, task avg {row['task_avg']:.3f}", flush=True)


def main() -> None:
    args = parse_args()
    skip = ("table", "out", "work", "train_seeds", "rows")  # not the rows' recipe
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    rows = Rows(Path(args.out), settings, read_only=args.table)
    if not args.table:
        work, ratio = Path(args.work), float(args.ratio)
        pruned = work / f"pruned-{ratio}"
        if not (pruned / "config.json").is_file():
            raise SystemExit(f"{pruned} not found: run real_bench.py --ratios {ratio} --work {work} first")
        ctx = {"corpus": resolve_corpus(fallback=False), "tokenizer": load_tokenizer(pruned)}
        study = work / f"search-{ratio}-QPruner" / "study.db"
        found = plans(pruned, study, args.rows.split(","), row_dir=work / str(ratio))
        seeds = [None] + [int(s) for s in args.train_seeds.split(",") if s]
        recover_rows(rows, found, seeds=seeds, pruned=pruned, args=args, ctx=ctx)
    print(table(rows.data))


if __name__ == "__main__":
    main()
