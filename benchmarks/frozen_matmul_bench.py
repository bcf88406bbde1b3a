"""Fine-tuning memory and speed of packed bases: the libraries' own training paths against
:class:`qpruner.quant.frozen_matmul.FrozenMatmul`, side by side in one process.

At SmolLM2-135M's shapes (random weights: memory and speed do not depend on their values),
rank-8 LoRA on NF4, int8, hqq4, hqq3 and hqq2 bases, at the search trials' micro-batch of
4 x 256 tokens: for each format, one ``train()`` call on the library path (bitsandbytes' and
hqq's forwards, which keep their input for backward) and one on FrozenMatmul, interleaved,
with and without activation checkpointing. Reported: the step's measured peak
(``TensorPeakMeter``), the memory model's prediction (which prices the FrozenMatmul path) and
tokens/s. NF4 keeps the library's forward on both paths; it is the yardstick.

    python benchmarks/frozen_matmul_bench.py --formats nf4,int8,hqq3,hqq2   # 21 min, 2 quiet AVX2 cores
    python benchmarks/frozen_matmul_bench.py --layers 4 --seq 64   # a smoke run

Prints a table and writes benchmarks/results/frozen_matmul_bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch
from throughput_bench import build_peft, examples, train_run
from throughput_parts import smollm2_config
from transformers import LlamaForCausalLM

from qpruner.plan_sources import default_dtype
from qpruner.quant.bnb import BnbBackend
from qpruner.quant.hqq import HqqBackend

RESULTS = Path(__file__).parent / "results" / "frozen_matmul_bench.json"
MIB = 2**20


@contextlib.contextmanager
def library_path() -> Iterator[None]:
    """Train packed modules through the libraries' own forwards (what qpruner did before)."""
    saved = {cls: cls.frozen_weight for cls in (BnbBackend, HqqBackend)}
    for cls in saved:
        cls.frozen_weight = lambda self, module: None
    try:
        yield
    finally:
        for cls, fn in saved.items():
            cls.frozen_weight = fn


def bench(base, fmt: str, data, args) -> dict:
    """One format: library and FrozenMatmul paths, plain (``--reps`` times, interleaved, for
    tokens/s) and once with activation checkpointing."""
    dtype = default_dtype("cpu")
    row: dict = {"format": fmt}
    for rep in range(args.reps):
        for checkpointing in (False, True) if rep == 0 else (False,):
            for name in ("library", "frozen"):
                model, plan = build_peft(base, fmt, dtype, args.rank)
                with library_path() if name == "library" else contextlib.nullcontext():
                    run = train_run(model, plan, data, args, {}, checkpointing=checkpointing)
                del model
                key = f"{name}{'_ckpt' if checkpointing else ''}"
                row.setdefault(key, run).setdefault("tokens_per_second_reps", [])
                row[key]["tokens_per_second_reps"].append(run["tokens_per_second"])
    for key in ("library", "frozen"):
        speeds = row[key]["tokens_per_second_reps"]
        mean = sum(speeds) / len(speeds)
        se = (
            (sum((v - mean) ** 2 for v in speeds) / (len(speeds) - 1) / len(speeds)) ** 0.5
            if len(speeds) > 1
            else 0.0
        )
        row[key]["tokens_per_second"], row[key]["tokens_per_second_se"] = mean, se
    return row


def table(rows: list[dict]) -> None:
    head = f"{'ckpt lib':>8} {'ckpt frozen':>11} {'predicted':>9} | {'tok/s lib':>12} {'frozen':>12}"
    print(f"\n{'base':>6} | {'library MiB':>11} {'frozen MiB':>10} {'predicted':>9} | {head}")
    for r in rows:
        lib, fro, lck, fck = r["library"], r["frozen"], r["library_ckpt"], r["frozen_ckpt"]
        print(f"{r['format']:>6} | {lib['measured_peak'] / MIB:11.1f} {fro['measured_peak'] / MIB:10.1f} "
              f"{fro['predicted_peak'] / MIB:9.1f} | {lck['measured_peak'] / MIB:8.1f} "
              f"{fck['measured_peak'] / MIB:11.1f} {fck['predicted_peak'] / MIB:9.1f} | "
              f"{lib['tokens_per_second']:5.1f} ± {lib['tokens_per_second_se']:4.1f} "
              f"{fro['tokens_per_second']:5.1f} ± {fro['tokens_per_second_se']:4.1f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4, help="micro-batch (examples per step)")
    ap.add_argument("--seq", type=int, default=256, help="tokens per example")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per train() call (one is metered)")
    ap.add_argument("--reps", type=int, default=3, help="plain runs per path, interleaved (tokens/s ± SE)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--formats", default="nf4,int8,hqq4,hqq3,hqq2")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.manual_seed(0)
    config = smollm2_config(args.layers)
    base = LlamaForCausalLM(config).eval()
    data = examples(args.batch * args.steps, args.seq, config.vocab_size)
    rows = []
    for fmt in args.formats.split(","):
        rows.append(bench(base, fmt, data, args))
        print(f"  {fmt} done; load average {os.getloadavg()[0]:.2f}", flush=True)
    table(rows)
    out = {"settings": vars(args), "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__, "rows": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
