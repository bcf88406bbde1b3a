"""Every method side by side on the reference model, at 20 % and 50 % pruning, in one process.

Columns: test perplexity, the local zero-shot task (``wikitext_cloze``, acc and acc_norm),
fine-tuning memory (predicted and measured), weight bytes, trainable parameters and wall
time. Rows: dense, pruned without recovery, LoRA on the unquantized pruned model (the
LLM-Pruner recipe), QLoRA NF4, LoftQ NF4, and the searched plans — QPruner (bits),
AutoMixQ (bits), RankAdaptor (ranks), joint (bits and ranks) — each searched with
``--search-trials`` short trials under the QLoRA NF4 row's predicted memory as its budget
(so the comparison is at equal memory), then recovered exactly like the uniform rows. The
searches select on perplexity of the recovery text (``valid.txt``), never the test text.

    python benchmarks/run_all.py            # ~35 min on 2 CPU cores once the reference model is cached
    python benchmarks/run_all.py --quick    # <= 10 min: 15 steps, 4 search trials, 20k test tokens, 200 items

Writes benchmarks/results.json and prints a Markdown table.
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

from qpruner import TrainConfig, finetune
from qpruner.checkpoint import save_pruned
from qpruner.eval.size import model_size
from qpruner.loader import load_model
from qpruner.lora.recover import RecoveryResult
from qpruner.plan_sources import uniform_plan
from qpruner.prune import PruneConfig, calibration_samples, prune_model
from qpruner.reference import TRAIN_FILE
from qpruner.search import SearchConfig, search_model
from qpruner.search.recipe import trial_training
from qpruner.search.records import Status, count

RESULTS = Path(__file__).parent / "results.json"
#: (row label, method, what it searches)
SEARCHED = (
    ("QPruner plan", "qpruner", "bits"),
    ("AutoMixQ plan", "automixq", "bits"),
    ("RankAdaptor ranks", "rankadaptor", "ranks"),
    ("joint", "joint", "joint"),
)
#: (row label, bits of every layer, LoftQ initialisation): the uniform recoveries
UNIFORM = (("LoRA", 16, False), ("QLoRA NF4", 4, False), ("LoftQ NF4", 4, True))
TASK = "wikitext_cloze"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a <= 10 minute version")
    ap.add_argument("--ratios", default="0.2,0.5")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--max-eval-tokens", type=int, default=100_000)
    ap.add_argument("--task-limit", type=int, default=None, help="cloze items (default all 500)")
    ap.add_argument("--search-trials", type=int, default=10, help="evaluated plans per search")
    ap.add_argument("--search-steps", type=int, default=10, help="LoRA steps per search trial")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.quick:
        args.steps, args.max_eval_tokens, args.task_limit = 15, 20_000, 200
        args.search_trials, args.search_steps = 4, 3
    return args


def evaluate(bench: ReferenceSetup, model: torch.nn.Module, task_limit: int | None) -> dict:
    """Test perplexity and the cloze task: the columns every row has."""
    t0 = time.perf_counter()
    scores = bench.scores(model, [TASK], task_limit)
    score = scores.zeroshot[TASK]
    return dict(
        ppl=scores.ppl["test"].ppl,
        task_acc=score.acc,
        task_acc_norm=score.acc_norm,
        task_samples=score.samples,
        eval_seconds=time.perf_counter() - t0,
    )


def dense_row(bench: ReferenceSetup, task_limit: int | None) -> dict:
    """The unpruned model's row: the reference every other row is read against."""
    row = dict(
        method="dense",
        ratio=0.0,
        **evaluate(bench, bench.dense, task_limit),
        weight_bytes=model_size(bench.dense).weight_bytes,
    )
    print(f"dense: ppl {row['ppl']:.2f}, {TASK} acc {row['task_acc']:.3f}")
    return row


def train_config(steps: int) -> TrainConfig:
    """The recovery recipe, the same for every recovered row."""
    return TrainConfig(
        steps=steps,
        batch_size=16,
        micro_batch=8,
        lr=1e-3,
        warmup_steps=max(1, steps // 10),
        cutoff_len=128,
        save_every=steps,
    )


@dataclass
class RunAll:
    """What every row of the run shares: the reference set-up, scoring, recipes and a work folder."""

    bench: ReferenceSetup
    task_limit: int | None
    train: TrainConfig
    search_train: TrainConfig  # the recovery's batch shape (so memory is priced alike), fewer steps
    search_trials: int
    work: Path

    def recovered_row(self, res: RecoveryResult, method: str, ratio: float, *, t0: float, **extra) -> dict:
        """A table row for a recovered model: its evaluation, weights, memory and time."""
        measured = res.measured.to_dict()
        return dict(
            method=method,
            ratio=ratio,
            **evaluate(self.bench, load_model(res.out_dir), self.task_limit),
            weight_bytes=measured["packed_weights"] + measured["dense_weights"],
            trainable_params=res.trainable_params,
            memory_predicted=res.predicted.total,
            memory_measured=res.measured.total,
            step_seconds=res.train.step_seconds,
            **extra,
            wall_seconds=time.perf_counter() - t0,
        )


def pruned_row(run: RunAll, ratio: float) -> tuple[dict, Path]:
    """Prune the dense model at ``ratio`` and save it for the recoveries; its row, unrecovered."""
    t0 = time.perf_counter()
    cfg = PruneConfig(ratio=ratio, layer_start=1, layer_end=-1)
    pruned = copy.deepcopy(run.bench.dense)
    samples = calibration_samples(
        run.bench.corpus / TRAIN_FILE, run.bench.tokenizer, cfg.n_samples, cfg.seq_len, 0
    )
    prune_model(pruned, cfg, samples, progress=False)
    pruned_dir = run.work / f"pruned-{ratio}"
    save_pruned(pruned, pruned_dir, run.bench.tokenizer)
    size = model_size(pruned)
    row = dict(
        method="pruned, no recovery",
        ratio=ratio,
        **evaluate(run.bench, pruned, run.task_limit),
        weight_bytes=size.weight_bytes,
        params=size.params,
        wall_seconds=time.perf_counter() - t0,
    )
    return row, pruned_dir


def uniform_row(run: RunAll, ratio: float, pruned_dir: Path, *, method: str, bits: int, loftq: bool) -> dict:
    """One uniform recovery (every layer at ``bits``, rank 8): the baselines the searches must beat."""
    t0 = time.perf_counter()
    plan = uniform_plan(pruned_dir, bits, 8, dtype="fp32")
    res = finetune(
        pruned_dir,
        run.bench.corpus / TRAIN_FILE,
        run.work / f"{method}-{ratio}".replace(" ", "_"),
        plan=plan,
        train_config=run.train,
        loftq=loftq,
        export=False,
        progress=False,
    )
    r = run.recovered_row(res, method, ratio, t0=t0)
    print(f"  {method}: ppl {r['ppl']:.2f}, acc {r['task_acc']:.3f}, {r['wall_seconds']:.0f}s")
    return r


def searched_row(
    run: RunAll, ratio: float, pruned_dir: Path, *, label: str, method: str, space: str, budget: int
) -> dict:
    """Search a plan under ``budget`` (selecting on the recovery text), then recover it like the rest."""
    t0 = time.perf_counter()
    corpus = run.bench.corpus
    scfg = SearchConfig(
        method=method,
        memory_budget=budget,
        space=space,
        bits=(2, 3, 4, 8),
        ranks=(2, 4, 8, 16),
        trials=run.search_trials,
        train=run.search_train,
        dtype="fp32",
        train_data=str(corpus / TRAIN_FILE),
        eval_data=str(corpus / TRAIN_FILE),
        calib_data=str(corpus / TRAIN_FILE),
    )
    found = search_model(pruned_dir, scfg, run.work / f"search-{method}-{ratio}", progress=False, log=print)
    searched = time.perf_counter() - t0
    res = finetune(
        pruned_dir,
        corpus / TRAIN_FILE,
        run.work / f"{method}-{ratio}",
        plan=found.plan,
        train_config=run.train,
        export=False,
        progress=False,
    )
    r = run.recovered_row(
        res,
        label,
        ratio,
        t0=t0,
        budget=budget,
        bits=[round(b, 2) for b in res.plan.bits_per_layer()],
        ranks=[lp.lora_rank for lp in res.plan.layers],
        search_trials=count(found.summary.records, Status.EVALUATED),
        search_seconds=searched,
    )
    print(f"  {label}: ppl {r['ppl']:.2f}, bits {r['bits']}, ranks {r['ranks']}, {r['wall_seconds']:.0f}s")
    return r


def _mib(x: float | None) -> str:
    """Bytes as MiB; blank where a row has no such figure (the dense and pruned rows' memory)."""
    return "" if x is None else f"{x / 2**20:.2f}"


def results_table(rows: list[dict]) -> list[str]:
    """The Markdown table; rows without fine-tuning (dense, pruned) leave the memory cells empty."""
    table = [
        f"| ratio | method | test ppl | {TASK} acc / acc_norm | FT memory pred / meas MiB | weight MiB "
        "| trainable | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = ""
        if "memory_predicted" in r:
            mem = f"{_mib(r['memory_predicted'])} / {_mib(r['memory_measured'])}"
        table.append(
            f"| {r['ratio']:.1f} | {r['method']} | {r['ppl']:.2f} "
            f"| {r['task_acc']:.3f} / {r['task_acc_norm']:.3f} "
            f"| {mem} | {_mib(r['weight_bytes'])} | {r.get('trainable_params', 0):,} "
            f"| {r.get('wall_seconds', 0):.0f} |"
        )
    return table


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    bench = reference_setup(args.max_eval_tokens)
    rows = [dense_row(bench, args.task_limit)]
    run = RunAll(
        bench,
        args.task_limit,
        train_config(args.steps),
        trial_training(args.search_steps, micro_batch=8),
        args.search_trials,
        Path(tempfile.mkdtemp(prefix="run_all.")),
    )
    for ratio in [float(r) for r in args.ratios.split(",")]:
        row, pruned_dir = pruned_row(run, ratio)
        rows.append(row)
        print(f"ratio {ratio}: pruned ppl {row['ppl']:.2f}")
        for method, bits, loftq in UNIFORM:
            rows.append(uniform_row(run, ratio, pruned_dir, method=method, bits=bits, loftq=loftq))
        # The first QLoRA NF4 row at this ratio prices the searches' budget: equal memory.
        budget = next(r for r in rows if r["method"] == "QLoRA NF4" and r["ratio"] == ratio)[
            "memory_predicted"
        ]
        for label, method, space in SEARCHED:
            rows.append(
                searched_row(run, ratio, pruned_dir, label=label, method=method, space=space, budget=budget)
            )
    table = results_table(rows)
    print("\n".join(table))
    total = time.perf_counter() - t_start
    print(f"total {total / 60:.1f} min")
    write_results(
        args.out,
        bench,
        {
            "setup": {
                **{k: v for k, v in vars(args).items() if k != "out"},
                "train": run.train.__dict__,
                "layers_pruned": [1, -1],
            },
            "rows": rows,
            "table": table,
            "total_seconds": total,
        },
    )


if __name__ == "__main__":
    main()
