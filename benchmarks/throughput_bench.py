"""Throughput: the machine's matmul limit, and how close training and evaluation come to it.

At SmolLM2-135M's shapes (LLaMA, 30 layers, hidden 576, 9 q / 3 kv heads, intermediate 1536,
vocabulary 49,152, tied embeddings; random weights: speed does not depend on their values)
one run measures

* the limit: float32 and bfloat16 GEMM GFLOP/s at each matrix shape of the model (LM head
  included) and, weighted by the FLOPs a step spends at each shape, the model's limit;
* the LoRA training step through ``qpruner.lora.train.train`` on an unquantized base and on
  NF4, int8, hqq4 and hqq3 bases, old path (float32 compute, transformers' loss) and new
  path (the defaults: ``compute_dtype="auto"``, chunked loss) interleaved A, B, A, B; tokens/s,
  the share of the limit reached (useful FLOPs / time / limit), and the step's predicted
  (``qpruner.memory.estimate``) and measured (``TensorPeakMeter``) peak memory, also with
  activation checkpointing;
* the evaluation forward (perplexity over context-length windows), old vs new;
* a profile of one step (``torch.profiler``, top operators by self time).

    python benchmarks/throughput_bench.py            # ~15 min on 2 busy cores
    python benchmarks/throughput_bench.py --quick    # a few minutes: unquantized and NF4 only

Prints a table (with the load average: timings on a shared machine are noisy; compare the
ratios, which come from interleaved runs) and writes benchmarks/results/throughput_bench.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from throughput_parts import (
    flops_per_token,
    gemm_limits,
    old_perplexity,
    profile_step,
    smollm2_config,
    weighted_limit,
)
from transformers import LlamaForCausalLM

from qpruner.device import resolve_compute_dtype
from qpruner.eval.perplexity import perplexity
from qpruner.lora.apply import apply_plan
from qpruner.lora.data import Example
from qpruner.lora.train import TrainConfig, train
from qpruner.memory import estimate
from qpruner.plan import Plan
from qpruner.plan_sources import default_dtype

RESULTS = Path(__file__).parent / "results" / "throughput_bench.json"
OLD = {"compute_dtype": "fp32", "loss_chunk": 0}  # before issue 13: float32, full logits
NEW: dict = {}  # TrainConfig's defaults


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def build_peft(base: torch.nn.Module, fmt: str | None, dtype: str, rank: int):
    """A copy of ``base`` in ``fmt`` (None: unquantized) with rank-``rank`` LoRA, as finetune makes it."""
    layers = base.config.num_hidden_layers
    plan = Plan.uniform(layers, fmt or dtype, rank, dtype=dtype)
    torch.manual_seed(0)
    return apply_plan(copy.deepcopy(base), plan), plan


def examples(n: int, seq: int, vocab: int) -> list[Example]:
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, vocab, (n, seq), generator=g).tolist()
    return [Example(r, list(r)) for r in rows]


def train_run(model, plan, data, args, path: dict, *, checkpointing: bool = False) -> dict:
    """One ``train()`` call; tokens/s from its mean unmetered step, memory from its metered step."""
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch, micro_batch=args.batch, cutoff_len=args.seq,
        warmup_steps=1, save_every=args.steps, gradient_checkpointing=checkpointing, **path,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tp_bench.") as tmp:
        res = train(model, data, cfg, tmp, pad_id=0, progress=False)
    if checkpointing:  # leave the model as found for the next run
        model.get_base_model().gradient_checkpointing_disable()
    compute = resolve_compute_dtype(cfg.compute_dtype, "cpu")
    predicted = estimate(model.config, plan, args.batch, args.seq, checkpointing,
                         compute_dtype=cfg.compute_dtype, loss_chunk=cfg.loss_chunk)  # fmt: skip
    return {
        "step_seconds": res.step_seconds,
        "tokens_per_second": args.batch * args.seq / res.step_seconds,
        "compute": str(compute).removeprefix("torch."),
        "predicted_peak": predicted.components["step_peak"],
        "measured_peak": res.step_tensor_peak,
        "loss": res.losses[-1],
    }


def bench_format(base, fmt, data, args, limits, fpt) -> list[dict]:
    """Old and new path on one base format, interleaved; a row per path (and one per extra dtype)."""
    new_dtype = default_dtype("cpu")
    variants = [("old", "fp32", OLD), ("new", new_dtype, NEW)]
    if fmt is None:  # the weights' dtype matters most without quantization: show the other one too
        variants.append(("new", "bf16" if new_dtype == "fp32" else "fp32", NEW))
    models = {i: build_peft(base, fmt, dtype, args.rank) for i, (_, dtype, _) in enumerate(variants)}
    runs: dict[int, list[dict]] = {i: [] for i in models}
    for _rep in range(args.reps):
        for i, (_, _, path) in enumerate(variants):
            runs[i].append(train_run(*models[i], data, args, path))
    rows = []
    for i, (name, dtype, path) in enumerate(variants):
        best = min(runs[i], key=lambda r: r["step_seconds"])
        limit = limits["model"]["bf16" if best["compute"] == "bfloat16" else "fp32"]
        row = {"base": fmt or "unquantized", "path": name, "weights": dtype, **best,
               "step_seconds_reps": [r["step_seconds"] for r in runs[i]],
               "share_of_limit": fpt["train"] * best["tokens_per_second"] / 1e9 / limit,
               "limit_dtype": "bf16" if best["compute"] == "bfloat16" else "fp32"}  # fmt: skip
        if args.checkpointing and name == "new" and i == 1:
            ck = train_run(*models[i], data, args, path, checkpointing=True)
            row["checkpointing"] = {k: ck[k] for k in ("predicted_peak", "measured_peak", "step_seconds")}
        rows.append(row)
        print(f"  {row['base']:>11} {name} ({dtype} weights, {row['compute']}): "
              f"{row['tokens_per_second']:.0f} tok/s, {100 * row['share_of_limit']:.0f}% of limit; {load()}",
              flush=True)  # fmt: skip
    return rows


def bench_eval(base, args, limits, fpt) -> dict:
    """Perplexity forward over ``eval_batch`` windows of ``eval_ctx`` tokens: old vs new, interleaved."""
    ids = torch.randint(0, base.config.vocab_size, (args.eval_batch * args.eval_ctx,))
    kw = {"ctx_len": args.eval_ctx, "batch_size": args.eval_batch, "progress": False}
    paths = {"old": lambda: old_perplexity(base, ids, args.eval_ctx, args.eval_batch),
             "new": lambda: perplexity(base, ids, **kw).ppl}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in paths}
    ppl = {}
    for _rep in range(args.reps):
        for name, fn in paths.items():
            t = time.perf_counter()
            ppl[name] = fn()
            times[name].append(time.perf_counter() - t)
    fp32 = perplexity(base, ids, **kw, compute_dtype="fp32").ppl
    out = {"ctx_len": args.eval_ctx, "batch": args.eval_batch, "ppl": ppl, "ppl_fp32_new_code": fp32}
    for name, ts in times.items():
        tps = ids.numel() / min(ts)
        fast = resolve_compute_dtype("auto", "cpu") != torch.float32
        dtype = "bf16" if name == "new" and fast else "fp32"
        out[name] = {"seconds": min(ts), "seconds_reps": ts, "tokens_per_second": tps, "limit_dtype": dtype,
                     "share_of_limit": fpt["eval"] * tps / 1e9 / limits["model"][dtype]}  # fmt: skip
    return out


def table(limits: dict, rows: list[dict], ev: dict) -> list[str]:
    base_old = {r["base"]: r for r in rows if r["path"] == "old"}
    new_dense = next(r for r in rows if r["base"] == "unquantized" and r["path"] == "new")
    fp32, bf16 = limits["model"]["fp32"], limits["model"]["bf16"]
    lines = [
        f"GEMM limit at the model's shapes (FLOP-weighted): fp32 {fp32:.0f} GFLOP/s, "
        f"bf16 {bf16:.0f} GFLOP/s ({bf16 / fp32:.2f}x)",
        "",
        "| step | weights | compute | tok/s | x old | x new unquantized time | share of limit "
        "| peak predicted MiB | measured MiB | pred/meas |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        old = base_old[r["base"]]
        lines.append(
            f"| {r['base']} {r['path']} | {r['weights']} | {r['compute']} | {r['tokens_per_second']:.0f} "
            f"| {r['tokens_per_second'] / old['tokens_per_second']:.2f} "
            f"| {r['step_seconds'] / new_dense['step_seconds']:.2f} | {100 * r['share_of_limit']:.0f}% "
            f"({r['limit_dtype']}) | {r['predicted_peak'] / 2**20:.0f} | {r['measured_peak'] / 2**20:.0f} "
            f"| {r['predicted_peak'] / r['measured_peak']:.3f} |"
        )
        if "checkpointing" in r:
            ck = r["checkpointing"]
            lines.append(
                f"| {r['base']} {r['path']} + checkpointing | {r['weights']} | {r['compute']} "
                f"| {args_seq_tokens(r, ck):.0f} | | | | {ck['predicted_peak'] / 2**20:.0f} "
                f"| {ck['measured_peak'] / 2**20:.0f} | {ck['predicted_peak'] / ck['measured_peak']:.3f} |"
            )
    for name in ("old", "new"):
        e = ev[name]
        lines.append(
            f"| eval forward {name} (ctx {ev['ctx_len']}) | fp32 | {e['limit_dtype']} "
            f"| {e['tokens_per_second']:.0f} | {e['tokens_per_second'] / ev['old']['tokens_per_second']:.2f} "
            f"| | {100 * e['share_of_limit']:.0f}% ({e['limit_dtype']}) | | | |"
        )
    return lines


def args_seq_tokens(row: dict, ck: dict) -> float:
    return row["tokens_per_second"] * row["step_seconds"] / ck["step_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="unquantized and NF4 only, one repetition")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4, help="micro-batch (examples per step)")
    ap.add_argument("--seq", type=int, default=128, help="tokens per example")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per train() call (one is metered)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--formats", default="none,nf4,int8,hqq4,hqq3")
    ap.add_argument("--eval-ctx", type=int, default=2048)
    ap.add_argument("--eval-batch", type=int, default=2)
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.quick:
        args.formats, args.reps, args.steps, args.eval_ctx = "none,nf4", 1, 3, 1024
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"threads {torch.get_num_threads()}; {load()}", flush=True)
    config = smollm2_config(args.layers)
    limits = gemm_limits(config, args.batch * args.seq)
    fpt = flops_per_token(config, args.seq, args.eval_ctx, args.rank)
    limits["model"] = {d: weighted_limit(config, args.batch * args.seq, limits, d) for d in ("fp32", "bf16")}
    print(f"limits (GFLOP/s): {json.dumps(limits['model'])}; {load()}", flush=True)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).eval()
    ev = bench_eval(base, args, limits, fpt)
    old_tps, new_tps = ev["old"]["tokens_per_second"], ev["new"]["tokens_per_second"]
    print(f"eval: old {old_tps:.0f} tok/s, new {new_tps:.0f}; {load()}")
    data = examples(args.batch * args.steps, args.seq, config.vocab_size)
    rows = []
    for fmt in args.formats.split(","):
        rows += bench_format(base, None if fmt == "none" else fmt, data, args, limits, fpt)
    profiles = {fmt: profile_step(build_peft(base, fmt, default_dtype("cpu"), args.rank)[0], data, args)
                for fmt in (None, "nf4")}  # fmt: skip
    lines = table(limits, rows, ev)
    print("\n".join(lines))
    for name, prof in profiles.items():
        print(f"\nprofile of one new-path step, {name or 'unquantized'} base:\n{prof['table']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"setup": vars(args), "threads": torch.get_num_threads(), "load_end": os.getloadavg(),
               "seconds": time.perf_counter() - t0, "flops_per_token": fpt, "limits": limits,
               "train": rows, "eval": ev, "profiles": profiles, "table": lines}  # fmt: skip
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s; {load()})")


if __name__ == "__main__":
    main()
