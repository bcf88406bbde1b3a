"""Below NF4's memory: does a mixed plan beat uniform ones after recovery, and does placement matter?

At uniform NF4's own memory the least-damage plan is uniform NF4 (allocation_frontier.py), and
between NF4 and int8 the searched plan ties the uniform line once recovery runs at a good rate
(rank_trade.py). The papers' regime is lower, where some layers drop to 2 bits and layers differ
most. Under a float32 plan a 2-bit layer only costs less than an NF4 one when hqq can keep
groups of 64 (hqq3 costs a little more than NF4 even then: 3.2 bits packed plus a float32 scale
and zero per 64 weights, against NF4's 4.13), so this benchmark prunes its own model with
``channel_multiple`` 8 (real_bench's 20 % of layers 3-27 otherwise, same calibration text),
measures each layer's sensitivity on the search's own calibration tokens (``SearchConfig``'s
defaults), and at ``--share`` of the way from uniform hqq2's weights + LoRA to uniform NF4's
(rank 8) recovers:

- the least-damage plan within that budget (``least_damage_bits``: QPruner's first trial);
- its widths shuffled across layers (one seeded draw, within the budget) and reversed (each
  layer given the width its 2-bit sensitivity rank's mirror got, within 1 %);
- uniform NF4 (above the budget) and uniform hqq2 (below it), the two ends of the uniform line.

Each is recovered like rank_trade's ``lr x8`` rows (20 steps of 8 x 256 tokens of WikiText-2
valid.txt at 4e-3), per training seed, seed-major so a cut-off run leaves whole seeds; scored on
WikiText-2 test perplexity and the task subset. Resumable per row.

    python benchmarks/low_memory.py --work /path/to/work
    python benchmarks/low_memory.py --table
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path

import real_bench as rb
import torch
from rank_trade import add_scoring_args
from real_table import Rows, mean_se
from trial_rank import recover_plans, reversed_widths

from qpruner import PruneConfig
from qpruner.checkpoint import load_base_model, load_tokenizer
from qpruner.models.catalog import resolve_model_source
from qpruner.prune.calibration import calibration_samples
from qpruner.reference import resolve_corpus
from qpruner.search import SearchConfig
from qpruner.search.allocation import least_damage_bits
from qpruner.search.budget import resolve_budget
from qpruner.search.from_model import build_space
from qpruner.search.sensitivity import Sensitivity, measure_sensitivity

RESULTS = rb.ROOT / "results" / "low_memory.json"
ENDS = ("uniform:2:8", "uniform:4:8")  # the budget lies between these (weights + LoRA)
CHANNEL_MULTIPLE = 8  # keeps hqq's groups at 64 (SmolLM2's 1536 x 0.8 -> 1232, not 1229)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(rb.ROOT / "out" / "low_memory"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--share", type=float, default=0.75, help="budget: this far from hqq2's memory to NF4's")
    ap.add_argument("--seeds", default="42,1", help="recovery training seeds")
    add_scoring_args(ap, out=RESULTS)
    return ap.parse_args()


def prepare(rows: Rows, args, corpus: Path) -> tuple[Path, Sensitivity]:
    """The pruned model (channels a multiple of 8) and its measured sensitivity, each made once."""
    pruned = Path(args.work) / f"pruned-{args.ratio}"
    if rows.get("pruned") is None:
        model = resolve_model_source(args.model)  # a catalog name is fetched once, a directory kept
        cfg = PruneConfig(ratio=args.ratio, layer_start=3, layer_end=-2, channel_multiple=CHANNEL_MULTIPLE)
        row = rb.prune_and_score(model, pruned, cfg, args=args, corpus=corpus)
        rows.put("pruned", row)
        print(f"pruned: ppl {row['ppl']:.2f}, task avg {row['task_avg']:.3f}", flush=True)
    if rows.get("sensitivity") is None:
        cfg = SearchConfig()  # the calibration a search takes by default
        tok = load_tokenizer(pruned)
        samples = calibration_samples(corpus / "valid.txt", tok, cfg.n_calib, cfg.calib_len, seed=cfg.seed)
        sens = measure_sensitivity(load_base_model(pruned, dtype=torch.float32), samples)
        rows.put("sensitivity", sens.to_dict())
        print(f"sensitivity: {sens.seconds:.0f} s", flush=True)
    return pruned, Sensitivity.from_dict(rows.get("sensitivity"))


def build_plans(pruned: Path, sens: Sensitivity, *, share: float) -> dict[str, dict]:
    """Name -> {plan, bits, weights_lora, predicted_delta}, in the order they are recovered."""
    space = build_space(pruned, SearchConfig(memory_measure="weights", bits=rb.BITS, rank=8))
    low, high = (resolve_budget(end, space).bytes for end in ENDS)
    budget = int(low + share * (high - low))
    least = least_damage_bits(space, sens, budget)
    if least is None:
        raise SystemExit(f"no plan fits {budget} bytes")
    at_2bits = [sens.at(i, 2) for i in range(space.num_layers)]
    reverse = reversed_widths(least, at_2bits)
    if space.memory(space.choices_from(reverse)) > budget * 1.01:
        raise SystemExit("the reversed widths cost more than 1 % over the budget")
    shuffled = rb.shuffled_widths(least, space=space, budget=budget, seed=0)
    widths = {"least damage": least, "shuffled": shuffled, "reversed": reverse,
              "uniform NF4": [4] * space.num_layers, "uniform hqq2": [2] * space.num_layers}  # fmt: skip
    out = {}
    for name, bits in widths.items():
        choices = space.choices_from(bits)
        out[name] = dict(plan=space.plan(choices), bits=bits, weights_lora=space.memory(choices),
                         predicted_delta=sens.predicted_delta(bits))  # fmt: skip
    return out


def table(data: dict) -> str:
    """Per plan: widths, memory, predicted damage, recovered perplexity and task average."""
    rows = data["rows"]
    out = ["| plan | widths | weights + LoRA MiB | predicted Δ loss | test ppl (seeds) | task avg % |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for name, facts in rows.get("plans", {}).items():
        runs = [r for k, r in rows.items() if k.startswith(f"recovery/{name}/")]
        if not runs:
            continue
        ppl, se = mean_se([r["ppl"] for r in runs])
        avg, avg_se = mean_se([100 * r["task_avg"] for r in runs])
        widths = " ".join(f"{b}b×{n}" for b, n in sorted(Counter(facts["bits"]).items()))
        mib, delta = facts["weights_lora"] / 2**20, facts["predicted_delta"]
        out.append(f"| {name} | {widths} | {mib:.2f} | {delta:.3f} | "
                   f"{ppl:.2f} ± {se:.2f} ({len(runs)}) | {avg:.1f} ± {avg_se:.1f} |")  # fmt: skip
    return "\n".join(out + [""] + comparisons(rows))


def comparisons(rows: dict) -> list[str]:
    """The least-damage plan against the others paired by training seed, and against the uniform
    line at its memory (hqq2 to NF4, linear in loss, i.e. geometric in perplexity)."""
    ppl = {}
    for key, r in rows.items():
        if key.startswith("recovery/"):
            _, name, seed = key.split("/")
            ppl.setdefault(name, {})[seed] = r["ppl"]
    base = ppl.get("least damage", {})
    out = []
    for name, by_seed in ppl.items():
        seeds = sorted(set(by_seed) & set(base))
        if name != "least damage" and seeds:
            diffs = [by_seed[s] - base[s] for s in seeds]
            m, se = mean_se(diffs)
            each = ", ".join(f"{d:+.2f}" for d in diffs)
            out.append(f"- {name} − least damage, paired by seed: {m:+.2f} ± {se:.2f} ({each})")
    plans, ends = rows.get("plans", {}), ("uniform hqq2", "uniform NF4")
    if all(e in ppl for e in ends) and base:
        (lo, hi), mem = (plans[e]["weights_lora"] for e in ends), plans["least damage"]["weights_lora"]
        t = (mem - lo) / (hi - lo)
        logs = [sum(math.log(v) for v in ppl[e].values()) / len(ppl[e]) for e in ends]
        line = math.exp(logs[0] + t * (logs[1] - logs[0]))
        mean = mean_se(list(base.values()))[0]
        out.append(f"- uniform line at the least-damage plan's memory ({t:.2f} of the way): {line:.2f}, "
                   f"least damage {mean:.2f}")  # fmt: skip
    return out


def main() -> None:
    args = parse_args()
    skip = ("table", "out", "work", "seeds")  # not the recipe
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    rows = Rows(Path(args.out), settings, read_only=args.table)
    if not args.table:
        corpus = resolve_corpus(fallback=False)
        args.steps = 20  # rank_trade's recovery recipe (rb.recover reads it)
        pruned, sens = prepare(rows, args, corpus)
        plans = build_plans(pruned, sens, share=args.share)
        rows.put("plans", {n: {k: v for k, v in f.items() if k != "plan"} for n, f in plans.items()})
        ctx = {"corpus": corpus, "tokenizer": load_tokenizer(pruned)}
        seeds = [int(s) for s in args.seeds.split(",")]
        recover_plans(rows, plans, pruned=pruned, ctx=ctx, args=args, seeds=seeds)
    print(table(rows.data))


if __name__ == "__main__":
    main()
