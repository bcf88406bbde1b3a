"""Prune the reference model with every importance estimator at 20 % and 50 %.

Side by side in one process, same calibration samples and evaluation tokens for all:
parameters, weight bytes, test perplexity before/after, and pruning wall time. Random is
run with several seeds (its spread is the noise floor Taylor must clear).

    python benchmarks/prune_bench.py            # ~10 min on 2 CPU cores once the reference model is cached

Writes benchmarks/results/prune_bench.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

from bench_setup import reference_setup, write_results

from qpruner.eval.size import model_size
from qpruner.prune import IMPORTANCE_METHODS, PruneConfig, calibration_samples, prune_model
from qpruner.reference import TRAIN_FILE

RESULTS = Path(__file__).parent / "results" / "prune_bench.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0.2,0.5")
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--layer-start", type=int, default=1)
    ap.add_argument("--layer-end", type=int, default=-1)
    ap.add_argument("--max-eval-tokens", type=int, default=100_000)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    bench = reference_setup(args.max_eval_tokens)
    corpus, tok, dense, ctx, test_ids = bench.corpus, bench.tokenizer, bench.dense, bench.ctx, bench.test_ids
    ppl = bench.ppl

    base = model_size(dense)
    dense_ppl = ppl(dense)
    rows = [
        dict(
            method="dense",
            ratio=0.0,
            seed=None,
            params=base.params,
            weight_bytes=base.weight_bytes,
            ppl=dense_ppl,
            seconds=0.0,
        )
    ]
    print(
        f"dense: {base.params:,} params, ppl {dense_ppl:.2f} on {test_ids.numel():,} test tokens (ctx {ctx})"
    )
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for method in IMPORTANCE_METHODS:
            seeds = range(args.random_seeds) if method == "random" else [0]
            for seed in seeds:
                cfg = PruneConfig(
                    ratio=ratio,
                    importance=method,
                    seed=seed,
                    layer_start=args.layer_start,
                    layer_end=args.layer_end,
                )
                samples = calibration_samples(corpus / TRAIN_FILE, tok, cfg.n_samples, cfg.seq_len, seed)
                model = copy.deepcopy(dense)
                t0 = time.perf_counter()
                prune_model(model, cfg, samples, progress=False)
                seconds = time.perf_counter() - t0
                size = model_size(model)
                rows.append(
                    dict(
                        method=method,
                        ratio=ratio,
                        seed=seed,
                        params=size.params,
                        weight_bytes=size.weight_bytes,
                        ppl=ppl(model),
                        seconds=seconds,
                    )
                )
                last = rows[-1]["ppl"]
                print(f"  {method:>13} ratio {ratio:.1f} seed {seed}: ppl {last:.2f} ({seconds:.1f}s)")

    table = [
        "| method | ratio | params | removed | weight MiB | ppl before | ppl after | prune s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] == "random" and r["seed"] != 0:
            continue
        shown = r["ppl"]
        if r["method"] == "random":
            vals = [x["ppl"] for x in rows if x["method"] == "random" and x["ratio"] == r["ratio"]]
            shown_s = f"{statistics.mean(vals):.2f} (min {min(vals):.2f}, {len(vals)} seeds)"
        else:
            shown_s = f"{shown:.2f}"
        table.append(
            f"| {r['method']} | {r['ratio']:.1f} | {r['params']:,} "
            f"| {100 * (1 - r['params'] / base.params):.1f}% "
            f"| {r['weight_bytes'] / 2**20:.2f} | {dense_ppl:.2f} | {shown_s} | {r['seconds']:.1f} |"
        )
    print("\n".join(table))
    for ratio in sorted({r["ratio"] for r in rows if r["ratio"] > 0}):
        taylor = next(x["ppl"] for x in rows if x["method"] == "taylor" and x["ratio"] == ratio)
        rand = [x["ppl"] for x in rows if x["method"] == "random" and x["ratio"] == ratio]
        verdict = "yes" if taylor < min(rand) else "NO"
        print(
            f"sanity @ {ratio:.1f}: taylor {taylor:.2f} beats every random seed "
            f"(best {min(rand):.2f}): {verdict}"
        )
    write_results(
        args.out,
        bench,
        {"layer_range": [args.layer_start, args.layer_end], "rows": rows, "table": table},
    )


if __name__ == "__main__":
    main()
