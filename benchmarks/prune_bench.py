"""Prune with every importance estimator at 20 % and 50 %; on a real model, beside Torch-Pruning.

Reference-model mode (default): the project's reference model, every estimator side by side in
one process, same calibration samples and evaluation tokens for all: parameters, weight bytes,
test perplexity before/after, and pruning wall time. Random is run with several seeds (its
spread is the noise floor Taylor must clear).

    python benchmarks/prune_bench.py            # ~10 min on 2 CPU cores once the reference model is cached

Writes benchmarks/results/prune_bench.json and prints a Markdown table.

Real-model mode (``--model smollm2-135m``, or ``--real``): qpruner's Taylor and magnitude (l2)
pruning beside Torch-Pruning 1.6.1's (``benchmarks/tp_baseline.py`` says how it is held to the
same structures) on the same layers, ratios and calibration windows (10 x 128 tokens of
WikiText-2 ``valid.txt``); perplexity on the first 40,000 tokens of ``test.txt`` in
non-overlapping windows of 512; parameters; pruning wall time and peak RSS growth (median over
``--repeats`` interleaved runs in one process). Each row is kept in
benchmarks/results/prune_bench_real.json as soon as it is done; a rerun resumes.

    python benchmarks/prune_bench.py --real --ratios 0.2,0.5     # ~1 h on 2 busy CPU cores
    python benchmarks/prune_bench.py --real --table              # the table from the JSON only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import tp_baseline as tpb
from bench_setup import ReferenceSetup, reference_setup, write_results

from qpruner.architecture import layer_shapes
from qpruner.checkpoint import load_tokenizer
from qpruner.data_sources import load_tokens
from qpruner.eval.evaluate import EvalConfig, evaluate_model
from qpruner.eval.size import model_size
from qpruner.loader import load_model
from qpruner.memory import PeakMeter
from qpruner.models.catalog import resolve_model_source
from qpruner.prune import IMPORTANCE_METHODS, PruneConfig, calibration_samples, layer_targets, prune_model
from qpruner.reference import TRAIN_FILE, resolve_corpus

RESULTS = Path(__file__).parent / "results" / "prune_bench.json"
REAL_RESULTS = Path(__file__).parent / "results" / "prune_bench_real.json"
REAL_METHODS = {  # key: (tool, importance, head mode; "mlp": MLP channels only)
    "qpruner taylor (group)": ("qpruner", "taylor", "group"),
    "qpruner taylor (query)": ("qpruner", "taylor", "query"),
    "qpruner taylor (MLP only)": ("qpruner", "taylor", "mlp"),
    "Torch-Pruning taylor": ("torch-pruning", "taylor", "query"),
    "qpruner l2 (query)": ("qpruner", "l2", "query"),
    "qpruner l2 (MLP only)": ("qpruner", "l2", "mlp"),
    "Torch-Pruning l2": ("torch-pruning", "l2", "query"),
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default=None, help="a real model (catalog name or path): the Torch-Pruning comparison"
    )
    ap.add_argument("--real", action="store_true", help="same as --model smollm2-135m")
    ap.add_argument("--ratios", default="0.2,0.5")
    ap.add_argument("--random-seeds", type=int, default=3, help="reference mode")
    ap.add_argument("--layer-start", type=int, default=None, help="default 1 (reference), 3 (real)")
    ap.add_argument("--layer-end", type=int, default=None, help="default -1 (reference), -2 (real)")
    ap.add_argument(
        "--max-eval-tokens", type=int, default=None, help="default 100,000 (reference), 40,000 (real)"
    )
    ap.add_argument("--ctx", type=int, default=512, help="real mode: perplexity window")
    ap.add_argument("--repeats", type=int, default=3, help="real mode: timed prunes per method (interleaved)")
    ap.add_argument("--methods", default="", help="real mode: comma-separated method keys (default all)")
    ap.add_argument("--data", default=None, help="real mode: WikiText-2 folder (default: ../shared/data's)")
    ap.add_argument("--table", action="store_true", help="real mode: print the table from --out, run nothing")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.real and args.model is None:
        args.model = "smollm2-135m"
    real = args.model is not None
    if args.layer_start is None:
        args.layer_start = 3 if real else 1
    if args.layer_end is None:
        args.layer_end = -2 if real else -1
    if args.max_eval_tokens is None:
        args.max_eval_tokens = 40_000 if real else 100_000
    return args


def main() -> None:
    args = parse_args()
    if args.model is not None:
        real_main(args)
    else:
        reference_main(args)


def reference_main(args: argparse.Namespace) -> None:
    bench = reference_setup(args.max_eval_tokens)
    base = model_size(bench.dense)
    dense_ppl = bench.ppl(bench.dense)
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
    n, ctx = bench.test_ids.numel(), bench.ctx
    print(f"dense: {base.params:,} params, ppl {dense_ppl:.2f} on {n:,} test tokens (ctx {ctx})")
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for method in IMPORTANCE_METHODS:
            for seed in range(args.random_seeds) if method == "random" else [0]:
                cfg = PruneConfig(
                    ratio=ratio,
                    importance=method,
                    seed=seed,
                    layer_start=args.layer_start,
                    layer_end=args.layer_end,
                )
                rows.append(_reference_prune(bench, cfg))
    table = _reference_table(rows, base.params, dense_ppl)
    print("\n".join(table))
    _print_sanity(rows)
    write_results(
        args.out or RESULTS,
        bench,
        {"layer_range": [args.layer_start, args.layer_end], "rows": rows, "table": table},
    )


def _reference_prune(bench: ReferenceSetup, cfg: PruneConfig) -> dict:
    """A fresh copy of the dense model pruned by ``cfg``: its row (samples drawn with ``cfg.seed``)."""
    samples = calibration_samples(
        bench.corpus / TRAIN_FILE, bench.tokenizer, cfg.n_samples, cfg.seq_len, cfg.seed
    )
    model = copy.deepcopy(bench.dense)
    t0 = time.perf_counter()
    prune_model(model, cfg, samples, progress=False)
    seconds = time.perf_counter() - t0
    size = model_size(model)
    row = dict(
        method=cfg.importance,
        ratio=cfg.ratio,
        seed=cfg.seed,
        params=size.params,
        weight_bytes=size.weight_bytes,
        ppl=bench.ppl(model),
        seconds=seconds,
    )
    print(
        f"  {cfg.importance:>13} ratio {cfg.ratio:.1f} seed {cfg.seed}: ppl {row['ppl']:.2f} ({seconds:.1f}s)"
    )
    return row


def _reference_table(rows: list[dict], dense_params: int, dense_ppl: float) -> list[str]:
    """One line per estimator and ratio; random shows its mean over seeds (the noise floor)."""
    table = [
        "| method | ratio | params | removed | weight MiB | ppl before | ppl after | prune s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] == "random" and r["seed"] != 0:
            continue
        if r["method"] == "random":
            vals = [x["ppl"] for x in rows if x["method"] == "random" and x["ratio"] == r["ratio"]]
            shown = f"{statistics.mean(vals):.2f} (min {min(vals):.2f}, {len(vals)} seeds)"
        else:
            shown = f"{r['ppl']:.2f}"
        table.append(
            f"| {r['method']} | {r['ratio']:.1f} | {r['params']:,} "
            f"| {100 * (1 - r['params'] / dense_params):.1f}% "
            f"| {r['weight_bytes'] / 2**20:.2f} | {dense_ppl:.2f} | {shown} | {r['seconds']:.1f} |"
        )
    return table


def _print_sanity(rows: list[dict]) -> None:
    """Taylor must beat every random seed at each ratio, or the estimator is no better than noise."""
    for ratio in sorted({r["ratio"] for r in rows if r["ratio"] > 0}):
        taylor = next(x["ppl"] for x in rows if x["method"] == "taylor" and x["ratio"] == ratio)
        rand = [x["ppl"] for x in rows if x["method"] == "random" and x["ratio"] == ratio]
        verdict = "yes" if taylor < min(rand) else "NO"
        print(
            f"sanity @ {ratio:.1f}: taylor {taylor:.2f} beats every random seed "
            f"(best {min(rand):.2f}): {verdict}"
        )


class RealRows:
    """The JSON file of finished rows, rewritten (atomic rename) the moment a row changes."""

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = path
        self.data = {"settings": settings, "dense": None, "rows": {}}
        if path.is_file():
            earlier = json.loads(path.read_text())
            if earlier.get("settings") != settings:
                raise SystemExit(f"{path} was made with other settings; pass another --out")
            self.data = earlier

    @property
    def rows(self) -> dict:
        return self.data["rows"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)


def _prune_config(args: argparse.Namespace, ratio: float, importance: str, head_mode: str) -> PruneConfig:
    return PruneConfig(
        ratio=ratio,
        attn_ratio=0.0 if head_mode == "mlp" else None,
        importance=importance,
        head_mode="query" if head_mode == "mlp" else head_mode,
        layer_start=args.layer_start,
        layer_end=args.layer_end,
    )


def _prune_once(dense, args, key: str, ratio: float, samples) -> tuple:
    """A fresh copy of ``dense`` pruned by ``key``: (model, seconds, peak RSS growth, phases)."""
    tool, importance, head_mode = REAL_METHODS[key]
    cfg = _prune_config(args, ratio, importance, head_mode)
    model = copy.deepcopy(dense)
    phases = None
    with PeakMeter("cpu") as meter:
        t0, c0 = time.perf_counter(), time.process_time()
        if tool == "qpruner":
            prune_model(model, cfg, samples, progress=False)
        else:
            targets = layer_targets(cfg, layer_shapes(dense))
            pruned = [t for t in targets if t.attn_ratio > 0 or t.mlp_ratio > 0]
            layers = range(pruned[0].layer, pruned[-1].layer + 1)
            t = pruned[0]
            phases = tpb.tp_prune(
                model, importance, layers, t.keep_heads // t.keep_kv_heads, t.keep_channels, samples
            )
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return model, (seconds, cpu), meter.growth, phases


def _ppl(model, tok, args, test_ids) -> float:
    cfg = EvalConfig(ctx_len=args.ctx, progress=False)
    return evaluate_model(model, tok, cfg, tokens={"test": test_ids}).ppl["test"].ppl


def _first_row(model, dense, args, key, ratio, tok, test_ids) -> dict:
    tool, importance, head_mode = REAL_METHODS[key]
    size = model_size(model)
    cfg = _prune_config(args, ratio, importance, head_mode)
    targets = [t for t in layer_targets(cfg, layer_shapes(dense)) if t.attn_ratio > 0 or t.mlp_ratio > 0]
    pruned, t = [t.layer for t in targets], targets[0]
    shape = size.layers[pruned[0]]
    return dict(
        method=key,
        tool=tool,
        tool_version=tpb.tp_version() if tool == "torch-pruning" else None,
        importance=importance,
        head_mode=head_mode,
        ratio=ratio,
        layers=[pruned[0], pruned[-1]],
        heads=shape.num_attention_heads,
        kv_heads=shape.num_key_value_heads,
        mlp=shape.intermediate_size,
        params=size.params,
        weight_bytes=size.weight_bytes,
        ppl=_ppl(model, tok, args, test_ids),
        kept=tpb.kept_units(dense, model, range(pruned[0], pruned[-1] + 1)),
        requested=[t.keep_heads, t.keep_kv_heads, t.keep_channels],
        seconds=[],
        cpu_seconds=[],
        peak_growth=[],
        phases=[],
        load=[],
    )


def _real_ratio(state: dict, args, ratio: float, keys: list[str]) -> None:
    """``repeats`` rounds over ``keys``, interleaved; the first round also scores each model."""
    rows, dense = state["rows"], state["dense"]
    for rep in range(args.repeats):
        for key in keys:
            name = f"{ratio:.2f} {key}"
            row = rows.rows.get(name)
            if row is not None and len(row["seconds"]) > rep:
                continue
            model, (seconds, cpu), growth, phases = _prune_once(dense, args, key, ratio, state["samples"])
            if row is None:
                row = _first_row(model, dense, args, key, ratio, state["tok"], state["test_ids"])
            del model
            row["seconds"].append(seconds)
            row["cpu_seconds"].append(cpu)
            row["peak_growth"].append(growth)
            row["phases"].append(phases)
            row["load"].append(os.getloadavg()[0])
            rows.rows[name] = row
            rows.save()
            mib = (growth or 0) / 2**20
            print(
                f"  {name}: ppl {row['ppl']:.2f}, {row['params']:,} params, {seconds:.1f}s, peak "
                f"+{mib:.0f} MiB (run {rep + 1}/{args.repeats}, load {row['load'][-1]:.2f})",
                flush=True,
            )


def real_main(args: argparse.Namespace) -> None:
    out = Path(args.out or REAL_RESULTS)
    data = Path(args.data) if args.data else resolve_corpus(fallback=False)
    settings = dict(
        model=args.model,
        layer_start=args.layer_start,
        layer_end=args.layer_end,
        ppl=dict(file=str(data / "test.txt"), tokens=args.max_eval_tokens, ctx=args.ctx, stride=args.ctx),
        calibration=dict(file=str(data / "valid.txt"), n_samples=10, seq_len=128, seed=0),
    )
    rows = RealRows(out, settings)
    if args.table:
        print_real_table(rows.data)
        return
    keys = [k for k in (args.methods.split(",") if args.methods else REAL_METHODS) if k]
    if tpb.tp is None:
        print(tpb.MISSING)
        keys = [k for k in keys if REAL_METHODS[k][0] != "torch-pruning"]
    path = Path(resolve_model_source(args.model))
    tok = load_tokenizer(path)
    dense = load_model(path).eval()
    test_ids = load_tokens(data / "test.txt", tok)[: args.max_eval_tokens]
    samples = calibration_samples(data / "valid.txt", tok, 10, 128, 0)
    if rows.data["dense"] is None:
        size = model_size(dense)
        shape = size.layers[0]
        rows.data["dense"] = dict(path=str(path), params=size.params, weight_bytes=size.weight_bytes)
        rows.data["dense"]["shape"] = [
            shape.num_attention_heads,
            shape.num_key_value_heads,
            shape.intermediate_size,
        ]
        rows.data["dense"]["ppl"] = _ppl(dense, tok, args, test_ids)
        rows.data["dense"]["eval_tokens"] = test_ids.numel()
        rows.save()
    print(f"dense: {rows.data['dense']['params']:,} params, ppl {rows.data['dense']['ppl']:.2f}", flush=True)
    state = dict(rows=rows, dense=dense, tok=tok, test_ids=test_ids, samples=samples)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        _real_ratio(state, args, ratio, keys)
    print_real_table(rows.data)


def print_real_table(data: dict) -> None:
    dense = data["dense"]
    q, kv, mlp = dense["shape"]
    rows = sorted(data["rows"].values(), key=lambda r: (r["ratio"], list(REAL_METHODS).index(r["method"])))
    table = [
        "| ratio | method | q/kv heads, MLP per pruned layer | params | removed | ppl "
        "| prune s | CPU s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| 0 | dense | {q}/{kv}, {mlp} | {dense['params']:,} | 0.0% | {dense['ppl']:.2f} | — | — | — |",
    ]
    for r in rows:
        med = {k: statistics.median(g or 0 for g in r[k]) for k in ("seconds", "cpu_seconds", "peak_growth")}
        removed = 100 * (1 - r["params"] / dense["params"])
        mark = "" if [r["heads"], r["kv_heads"], r["mlp"]] == r["requested"] else " *"
        table.append(
            f"| {r['ratio']:.1f} | {r['method']} | {r['heads']}/{r['kv_heads']}, {r['mlp']}{mark} "
            f"| {r['params']:,} | {removed:.1f}% | {r['ppl']:.2f} | {med['seconds']:.1f} "
            f"| {med['cpu_seconds']:.1f} | {med['peak_growth'] / 2**20:.0f} |"
        )
    print("\n".join(table))
    if any(" *" in line for line in table):
        print("* not the requested shape: Torch-Pruning left every head in place (see tp_baseline.py)")
    loads = [x for r in rows for x in r["load"]]
    if loads:
        print(f"1-min load average during the timed runs: {min(loads):.2f} to {max(loads):.2f} (2 cores)")
    for line in tpb.like_for_like(rows):
        print(line)


if __name__ == "__main__":
    main()
