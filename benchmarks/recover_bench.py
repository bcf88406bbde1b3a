"""Recovery after pruning: LoRA, QLoRA (NF4), LoftQ, int8 and a mixed plan, side by side.

The reference model is pruned 30 % (Taylor, layers 1-6 of 8) once; every configuration
then runs ``qpruner.finetune`` in this process with the same data (WikiText-2 valid), the
same steps, batch and learning rate. Reported per configuration: test perplexity of the
pruned model, of the quantized (or LoftQ-initialised) model before training and after
recovery, trainable parameters, predicted and measured fine-tuning memory, and step time.

    python benchmarks/recover_bench.py            # ~10 min on 2 CPU cores once the reference model is cached
    python benchmarks/recover_bench.py --steps 20 --max-eval-tokens 20000   # a quick look

Writes benchmarks/results/recover_bench.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_setup import ReferenceSetup, reference_setup, write_results

from qpruner import Plan, TrainConfig, apply_plan, finetune
from qpruner.checkpoint import save_pruned
from qpruner.eval.size import model_size
from qpruner.loader import load_model
from qpruner.plan_sources import uniform_plan
from qpruner.prune import PruneConfig, calibration_samples, prune_model
from qpruner.reference import TRAIN_FILE

RESULTS = Path(__file__).parent / "results" / "recover_bench.json"


def mixed_plan(pruned_dir: Path, rank: int) -> Plan:
    """Hand-written: 8-bit first/last layers (the sensitive ones), NF4 attention and 3-bit MLP
    in the pruned middle, double rank on the 8-bit layers."""
    plan = uniform_plan(pruned_dir, 4, rank, dtype="fp32")
    last = len(plan.layers) - 1
    for i, lp in enumerate(plan.layers):
        if i in (0, last):
            lp.weight_format, lp.lora_rank, lp.lora_alpha = "int8", 2 * rank, 4.0 * rank
        else:
            lp.module_formats = {m: "hqq3" for m in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    return plan


def _rss_total(measured: dict) -> int:
    """The measured total with the step's resident-set peak in place of its tensor peak."""
    rss = measured["details"].get("rss_step_peak") or 0
    return measured["total"] - measured["step_peak"] + rss


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--cutoff-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--max-eval-tokens", type=int, default=100_000)
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args()


@dataclass
class PrunedBase:
    """The one pruned checkpoint every configuration recovers from, and the scores it starts at."""

    model: torch.nn.Module  # held for the whole run, as in the recorded runs: RSS peaks stay comparable
    path: Path
    prune: PruneConfig
    dense_ppl: float
    ppl: float
    removed: float  # fraction of the dense model's parameters


@dataclass
class Recovery:
    """One configuration of the comparison: its row name, its plan, and whether LoftQ initialises it."""

    name: str
    plan: Plan
    loftq: bool


def prune_reference(bench: ReferenceSetup, ratio: float, work: Path) -> PrunedBase:
    """Prune once, so every configuration starts from the very same checkpoint."""
    cfg = PruneConfig(ratio=ratio, layer_start=1, layer_end=-1)
    pruned = copy.deepcopy(bench.dense)
    samples = calibration_samples(bench.corpus / TRAIN_FILE, bench.tokenizer, cfg.n_samples, cfg.seq_len, 0)
    prune_model(pruned, cfg, samples)
    pruned_dir = work / "pruned"
    save_pruned(pruned, pruned_dir, bench.tokenizer)
    dense_ppl, pruned_ppl = bench.ppl(bench.dense), bench.ppl(pruned)
    removed = 1 - model_size(pruned).params / model_size(bench.dense).params
    print(f"dense ppl {dense_ppl:.2f}; pruned {100 * removed:.1f}% of params -> ppl {pruned_ppl:.2f}")
    return PrunedBase(pruned, pruned_dir, cfg, dense_ppl, pruned_ppl, removed)


def recoveries(pruned_dir: Path, rank: int) -> list[Recovery]:
    """The configurations side by side; the first (plain LoRA) is the step-time baseline."""
    return [
        Recovery("LoRA (fp32 base)", uniform_plan(pruned_dir, 16, rank, dtype="fp32"), False),
        Recovery("QLoRA NF4", uniform_plan(pruned_dir, 4, rank, dtype="fp32"), False),
        Recovery("LoftQ NF4", uniform_plan(pruned_dir, 4, rank, dtype="fp32"), True),
        Recovery("int8 + LoRA", uniform_plan(pruned_dir, 8, rank, dtype="fp32"), False),
        Recovery("mixed plan", mixed_plan(pruned_dir, rank), False),
    ]


def train_config(args: argparse.Namespace) -> TrainConfig:
    """One recipe for every configuration, so the rows differ only in their plans."""
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        lr=args.lr,
        warmup_steps=max(1, args.steps // 10),
        cutoff_len=args.cutoff_len,
        save_every=args.steps,
    )


def recover(
    bench: ReferenceSetup, base: PrunedBase, rec: Recovery, *, train_cfg: TrainConfig, work: Path
) -> dict:
    """Score the quantized start, fine-tune, score the result: one row of the table."""
    torch.manual_seed(train_cfg.seed)
    start = apply_plan(load_model(base.path), copy.deepcopy(rec.plan), loftq=rec.loftq)
    before = bench.ppl(start)
    del start
    t0 = time.perf_counter()
    res = finetune(
        base.path, bench.corpus / TRAIN_FILE, work / rec.name.replace(" ", "_"), plan=rec.plan,
        train_config=train_cfg, loftq=rec.loftq, export=False, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    recovered = load_model(res.out_dir)
    after = bench.ppl(recovered)
    weight_bytes = model_size(recovered).weight_bytes - res.measured.components["lora_params"]
    del recovered
    r = dict(
        config=rec.name,
        loftq=rec.loftq,
        bits_per_layer=rec.plan.bits_per_layer(),
        ppl_pruned=base.ppl,
        ppl_before=before,
        ppl_after=after,
        trainable_params=res.trainable_params,
        base_weight_bytes=weight_bytes,
        predicted=res.predicted.to_dict(),
        measured=res.measured.to_dict(),
        step_seconds=res.train.step_seconds,
        tokens_per_second=res.train.tokens_per_second,
        first_loss=res.train.losses[0],
        last_loss=res.train.losses[-1],
        wall_seconds=seconds,
    )
    print(
        f"  {rec.name:>16}: ppl {before:.2f} -> {after:.2f}, {r['trainable_params']:,} trainable, "
        f"mem {r['predicted']['total'] / 2**20:.1f}/{r['measured']['total'] / 2**20:.1f} MiB, "
        f"step {r['step_seconds']:.2f}s"
    )
    return r


def recovery_table(rows: list[dict]) -> list[str]:
    """The Markdown table; step times are also shown relative to the first (plain LoRA) row."""
    lora_step = rows[0]["step_seconds"]
    table = [
        "| config | ppl pruned | ppl before recovery | ppl after | trainable | base weights MiB "
        "| memory predicted MiB | measured MiB | with RSS step peak MiB | step s (x LoRA) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['config']} | {r['ppl_pruned']:.2f} | {r['ppl_before']:.2f} | {r['ppl_after']:.2f} "
            f"| {r['trainable_params']:,} | {r['base_weight_bytes'] / 2**20:.2f} "
            f"| {r['predicted']['total'] / 2**20:.2f} | {r['measured']['total'] / 2**20:.2f} "
            f"| {_rss_total(r['measured']) / 2**20:.2f} "
            f"| {r['step_seconds']:.2f} ({r['step_seconds'] / lora_step:.2f}x) |"
        )
    return table


def main() -> None:
    args = parse_args()
    bench = reference_setup(args.max_eval_tokens)
    work = Path(tempfile.mkdtemp(prefix="recover_bench."))
    base = prune_reference(bench, args.ratio, work)
    configs = recoveries(base.path, args.rank)
    train_cfg = train_config(args)
    rows = [recover(bench, base, rec, train_cfg=train_cfg, work=work) for rec in configs]
    table = recovery_table(rows)
    print("\n".join(table))
    setup = {k: v for k, v in vars(args).items() if k != "out"}
    write_results(
        args.out,
        bench,
        {
            "setup": setup | {"prune": base.prune.to_dict()},
            "dense_ppl": base.dense_ppl,
            "params_removed": base.removed,
            "rows": rows,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
