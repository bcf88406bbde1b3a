"""search_real_bench's plans recovered again at the better rate: does QPruner's lead survive?

search_real_bench ``--quick`` (SmolLM2-135M pruned 30 %, budget halfway between uniform NF4's and
int8's fine-tuning memory) found QPruner's plans 0.67 below the NF4 -> int8 line on test
perplexity, 2.5 standard errors, with every recovery at lr 5e-4. At 4e-3, the 20-step recipe's
measured best, real_bench's weights-midway plans tied that line (rank_trade.py). This benchmark
takes the plans that search stored (``--source``: each searched row's widths, so no search runs
again), prunes the same model the same way, and recovers at 4e-3 exactly like rank_trade's
``lr x8`` rows (20 steps of 8 x 256 tokens of WikiText-2 valid.txt):

- uniform QLoRA NF4, LoftQ NF4 and int8 + LoRA, each with the training seeds ``--seeds``;
- each ``--plans`` method's plan per search seed, with the first training seed and any others
  in ``--plan-seeds`` (the table also pairs the comparison by training seed).

Reported: test perplexity and task average per row, and the searched plans' mean against the
NF4 -> int8 line at their predicted fine-tuning memory (linear in perplexity, as the README
reads search_real_bench), with the standard error of the difference. Resumable per row.

    python benchmarks/search_rate.py --work /path/to/work --plan-seeds 42,1
    python benchmarks/search_rate.py --table
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import real_bench as rb
from rank_trade import add_scoring_args
from real_table import Rows, mean_se
from trial_rank import recover_plans

from qpruner import PruneConfig
from qpruner.checkpoint import load_tokenizer
from qpruner.models.catalog import resolve_model_source
from qpruner.reference import resolve_corpus
from qpruner.search import SearchConfig
from qpruner.search.from_model import build_space

RESULTS = rb.ROOT / "results" / "search_rate.json"
SOURCE = rb.ROOT / "results" / "search_real_bench_quick.json"
UNIFORM = {"QLoRA NF4": (4, False), "LoftQ NF4": (4, True), "int8 + LoRA": (8, False)}  # bits, LoftQ


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--source", default=str(SOURCE), help="search_real_bench's JSON: the plans and the recipe"
    )
    ap.add_argument(
        "--plans", default="QPruner", help="searched methods whose plans are recovered (comma list)"
    )
    ap.add_argument(
        "--seeds", default="42,1,2", help="training seeds of the uniform rows (the first: all rows)"
    )
    ap.add_argument("--plan-seeds", default="42", help="training seeds of the searched plans (comma list)")
    ap.add_argument("--work", default=str(rb.ROOT / "out" / "search_rate"))
    ap.add_argument("--model", default="smollm2-135m")
    add_scoring_args(ap, out=RESULTS)
    return ap.parse_args()


def prune(rows: Rows, source: dict, *, args, corpus: Path) -> Path:
    """The source's pruned model made again (same ratio, layers and calibration text), scored once."""
    s = source["settings"]
    pruned = Path(args.work) / f"pruned-{s['ratio']}"
    if rows.get("pruned") is None:
        cfg = PruneConfig(ratio=s["ratio"], layer_start=s["layer_start"], layer_end=s["layer_end"])
        row = rb.prune_and_score(resolve_model_source(args.model), pruned, cfg, args=args, corpus=corpus)
        stored = source["rows"][f"{s['ratio']}/pruned"]["ppl"]
        rows.put("pruned", row | {"source_ppl": stored})
        print(f"pruned: ppl {row['ppl']:.2f} (the source's: {stored:.2f})", flush=True)
    return pruned


def build_plans(pruned: Path, source: dict, methods: list[str]) -> dict[str, dict]:
    """Name -> {plan, bits, loftq}: the uniform rows, then each method's plan per search seed."""
    space = build_space(pruned, SearchConfig(bits=rb.BITS, rank=8))
    widths = {name: ([bits] * space.num_layers, loftq) for name, (bits, loftq) in UNIFORM.items()}
    for key, row in source["rows"].items():
        method, _, seed = key.rpartition("/seed")
        if method in methods:  # stored bits read 32 for an unquantized layer; the space calls it 16
            widths[f"{method} seed {seed}"] = ([min(16, int(b)) for b in row["bits_per_layer"]], False)
    return {name: dict(plan=space.plan(space.choices_from(bits)), bits=bits, loftq=loftq)
            for name, (bits, loftq) in widths.items()}  # fmt: skip


def table(data: dict) -> str:
    """Per plan its recovered perplexity and task average; then the searched mean against the line."""
    runs: dict[str, list[dict]] = {}
    for key, r in data["rows"].items():
        if key.startswith("recovery/"):
            runs.setdefault(key.split("/")[1], []).append(r | {"train_seed": key.split("/")[2]})
    out = [
        "| plan | fine-tuning MiB (4 × 256) | weights MiB | test ppl (runs) | task avg % |",
        "|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        ppl, se = mean_se([r["ppl"] for r in rs])
        avg, avg_se = mean_se([100 * r["task_avg"] for r in rs])
        out.append(f"| {name} | {rs[0]['memory_predicted'] / 2**20:.0f} | {rs[0]['weight_mib']:.1f} | "
                   f"{ppl:.2f} ± {se:.2f} ({len(rs)}) | {avg:.1f} ± {avg_se:.1f} |")  # fmt: skip
    return "\n".join(out + [""] + against_line(runs))


def against_line(runs: dict[str, list[dict]]) -> list[str]:
    """Searched plans (all search seeds together) against the NF4 -> int8 line at their memory."""
    lo, hi = runs.get("QLoRA NF4"), runs.get("int8 + LoRA")
    searched = [r for name, rs in runs.items() if name not in UNIFORM for r in rs]
    if not (lo and hi and searched):
        return []
    (m_lo, s_lo), (m_hi, s_hi) = (mean_se([r["ppl"] for r in rs]) for rs in (lo, hi))
    mem = sum(r["memory_predicted"] for r in searched) / len(searched)
    t = (mem - lo[0]["memory_predicted"]) / (hi[0]["memory_predicted"] - lo[0]["memory_predicted"])
    line, line_se = m_lo + t * (m_hi - m_lo), math.hypot((1 - t) * s_lo, t * s_hi)
    mean, se = mean_se([r["ppl"] for r in searched])
    diff_se = math.hypot(se, line_se)
    gap = mean - line
    return [
        f"- NF4 -> int8 line at the searched plans' memory ({t:.2f} of the way): {line:.2f} ± {line_se:.2f}; "
        f"searched {mean:.2f} ± {se:.2f} over {len(searched)} runs; "
        f"difference {gap:+.2f} ± {diff_se:.2f} ({abs(gap) / diff_se:.1f} standard errors)",
        *paired(lo, hi, searched, t=t),
    ]


def paired(lo: list[dict], hi: list[dict], searched: list[dict], *, t: float) -> list[str]:
    """The same difference per training seed (the line from that seed's NF4 and int8 runs, the
    searched plans' mean at that seed): the seed's own luck cancels, which the pooled figure's
    standard error, over search seeds at one training seed, does not capture."""
    low, high = ({r["train_seed"]: r["ppl"] for r in rs} for rs in (lo, hi))
    diffs = []
    for seed in sorted(set(low) & set(high)):
        at = [r["ppl"] for r in searched if r["train_seed"] == seed]
        if at:
            diffs.append((seed, sum(at) / len(at) - (low[seed] + t * (high[seed] - low[seed]))))
    if not diffs:
        return []
    mean, se = mean_se([d for _, d in diffs])
    each = ", ".join(f"{seed} {d:+.2f}" for seed, d in diffs)
    return [f"- paired by training seed ({len(diffs)} seeds: {each}): {mean:+.2f} ± {se:.2f}"]


def main() -> None:
    args = parse_args()
    source = json.loads(Path(args.source).read_text())
    skip = ("table", "out", "work", "seeds", "plans", "plan_seeds")  # not the recipe
    settings = {k: v for k, v in vars(args).items() if k not in skip} | {"source": source["settings"]}
    rows = Rows(Path(args.out), settings, read_only=args.table)
    if not args.table:
        corpus = resolve_corpus(fallback=False)
        args.steps = source["settings"]["steps"]  # the source's recovery length (rb.recover reads it)
        pruned = prune(rows, source, args=args, corpus=corpus)
        plans = build_plans(pruned, source, args.plans.split(","))
        rows.put("plans", {n: {"bits": f["bits"], "loftq": f["loftq"]} for n, f in plans.items()})
        ctx = {"corpus": corpus, "tokenizer": load_tokenizer(pruned)}
        first, *more = (int(s) for s in args.seeds.split(","))
        recover_plans(rows, plans, pruned=pruned, ctx=ctx, args=args, seeds=[first])  # every plan once
        uniform = {n: f for n, f in plans.items() if n in UNIFORM}
        recover_plans(rows, uniform, pruned=pruned, ctx=ctx, args=args, seeds=more)
        searched = {n: f for n, f in plans.items() if n not in UNIFORM}
        plan_seeds = [int(s) for s in args.plan_seeds.split(",") if int(s) != first]
        recover_plans(rows, searched, pruned=pruned, ctx=ctx, args=args, seeds=plan_seeds)
    print(table(rows.data))


if __name__ == "__main__":
    main()
