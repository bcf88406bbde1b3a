"""The papers' comparison on a real pretrained model: SmolLM2-135M pruned, then recovered every way.

Rows (at each pruning ratio): dense, pruned (no recovery), LoRA on the unquantized pruned model,
QLoRA NF4, LoftQ NF4, int8 + LoRA, and the QPruner, AutoMixQ, RankAdaptor and joint plans, each
searched under the QLoRA NF4 row's predicted fine-tuning memory (``--budget nf4``, the issue's
rule), then recovered with exactly the uniform rows' training tokens. ``--budget midway`` (halfway
between the NF4 and int8 rows) is the rule the committed table was made with, when hqq and int8
layers still kept their input for the backward pass and so cost more to fine-tune than NF4 ones:
then no plan but uniform NF4 fitted NF4's memory. Since packed layers train through
:class:`qpruner.quant.frozen_matmul.FrozenMatmul`, 2- and 3-bit layers are cheaper than NF4 ones
under bf16 compute and a plan can trade them for 8-bit layers at NF4's memory, as the papers do
(under float32 compute hardly: hqq's scales and dequantization are float32 too; see the README).
``--budget weights`` searches under uniform NF4's served weights and adapters instead
(``--memory-measure weights``): the papers' regime, where weights dominate memory, which fine-tuning
a 135M model at 4 x 256 tokens is not (activations are most of its step);
``--budget weights-midway`` halfway from there to uniform int8's, where
``allocation_frontier.py`` finds room for a mixed plan (at NF4's own memory it finds none).

Columns: WikiText-2 test perplexity,
each zero-shot task's accuracy and their average (a fixed, seeded sample of items per task on
CPU), the share of the pruned -> dense gap recovered, fine-tuning memory predicted and measured,
weight MiB, trainable parameters, evaluations and wall time.

Plans are selected on WikiText-2 ``valid.txt`` (the recovery text), never on the test text or
the task items the table reports. Every row is written to the JSON file as soon as it is done
and skipped when the file already has it, so the table can be built across several runs
(rerunning with other settings is refused; use another ``--out``).

    python benchmarks/real_bench.py --quick      # <= 20 min on 2 quiet CPU cores: 20 %, 6 rows, short
    python benchmarks/real_bench.py              # the full table (2.4 h measured on 2 cores with fast bf16;
                                                 # hours more on an AVX2-only CPU: see the README)
    python benchmarks/real_bench.py --ratios 0.2 # one ratio (78 min with bf16); the rest on a later run
    python benchmarks/real_bench.py --table      # print the table from the JSON, run nothing
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from real_table import Rows, table

from qpruner import EvalConfig, PlanSource, PruneConfig, TrainConfig, evaluate_model, finetune
from qpruner.checkpoint import load_tokenizer
from qpruner.data_sources import find_shared_data
from qpruner.device import resolve_device
from qpruner.loader import load_model
from qpruner.lora.export import PLAN_FILE
from qpruner.models.catalog import resolve_model_source
from qpruner.plan import Plan
from qpruner.prune.workflow import prune_checkpoint
from qpruner.reference import resolve_corpus
from qpruner.search import SearchConfig, search_model
from qpruner.search.budget import resolve_budget
from qpruner.search.from_model import build_space
from qpruner.search.recipe import trial_training

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "real_bench.json"
TASKS = (  # the shipped offline tasks over ../shared/data/zeroshot (README "Zero-shot tasks")
    "qp_boolq", "qp_piqa", "qp_arc_easy", "qp_arc_challenge", "qp_winogrande", "qp_openbookqa", "qp_copa",
    "qp_lambada",
)  # fmt: skip
UNIFORM = (  # (row, plan source, LoftQ)
    ("LoRA", PlanSource(bits=16), False),
    ("QLoRA NF4", PlanSource(bits=4), False),
    ("LoftQ NF4", PlanSource(bits=4), True),
    ("int8 + LoRA", PlanSource(bits=8), False),
)
LOFTQ = frozenset(name for name, _, loftq in UNIFORM if loftq)  # rows whose recovery starts from LoftQ
BITS = (2, 3, 4, 8, 16)  # the searched rows' widths
SHUFFLED = " widths shuffled"  # --shuffled rows: a searched row's widths on random layers
MEASURE = {"weights": "weights", "weights-midway": "weights"}  # --budget -> what it limits (else finetune)
SEARCHED = (
    ("QPruner", "qpruner", "bits"),
    ("AutoMixQ", "automixq", "bits"),
    ("RankAdaptor", "rankadaptor", "ranks"),
    ("joint", "joint", "joint"),
)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ratio 0.2, 5 steps, 2 trials, 6 rows: a smoke run")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratios", default="0.2,0.5")
    ap.add_argument("--layer-start", type=int, default=3)
    ap.add_argument("--layer-end", type=int, default=-2)
    # Sized so both ratios fit in 3 h on 2 CPU cores with fast bf16 (issue 14): a recovery is
    # 20 x 8 x 256 = 41k tokens, the recipe whose rate --lr's default was measured on (40 steps
    # at 5e-4 made the first tables: 161 min, when the cores ran twice as fast as later), a search
    # 4 multi-fidelity trials of up to 6 steps. Float32 on AVX2 trains at 50-130 tokens/s: hours more.
    ap.add_argument("--steps", type=int, default=20, help="recovery optimizer steps (8 x 256 tokens each)")
    add_lr_arg(ap)
    ap.add_argument("--ppl-tokens", type=int, default=40_000)
    ap.add_argument(
        "--limit", type=int, default=None,
        help="items per task, a fixed seeded sample (default 100 on a CPU, all on a GPU; 0: all)",
    )  # fmt: skip
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--task-data", default=str(find_shared_data("zeroshot", files=["piqa.jsonl"]) or ""))
    ap.add_argument("--rows", default="", help="comma-separated row names to run (default: all)")
    ap.add_argument("--search-trials", type=int, default=4)
    ap.add_argument("--search-steps", type=int, default=6)
    ap.add_argument(
        "--calib-samples", type=int, default=SearchConfig.n_calib,
        help="calibration sequences (of 128 tokens) the search's layer sensitivity is measured on",
    )  # fmt: skip
    ap.add_argument(
        "--train-seeds", default="",
        help="also recover every done row with these training seeds (comma list): the seed spread",
    )  # fmt: skip
    ap.add_argument(
        "--budget", choices=("nf4", "midway", "weights", "weights-midway"), default="nf4",
        help="searched rows' memory budget: the QLoRA NF4 row's fine-tuning memory (default), halfway "
        "to int8's, or uniform NF4's served weights + LoRA (--memory-measure weights), or halfway "
        "from those to uniform int8's",
    )  # fmt: skip
    ap.add_argument(
        "--shuffled", default="",
        help="searched rows (comma list) to recover again with their widths shuffled across layers "
        "(seeded, within the row's budget): is the search's placement better than chance?",
    )  # fmt: skip
    ap.add_argument("--work", default=str(ROOT / "out" / "real_bench"))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--table", action="store_true", help="print the table from --out and stop")
    args = ap.parse_args()
    if args.limit is None:  # the rule: fixed subsets on a CPU, the full sets on a GPU
        args.limit = 100 if resolve_device().type == "cpu" else 0
    args.limit = args.limit or None  # EvalConfig's "every item"
    if args.quick:
        # Sized to the 20 minutes on the slower of our machines (AVX2 only, float32
        # compute): 8 steps at 5e-4 with AutoMixQ took 29.4 min there (a recovered row 176-267 s,
        # QPruner's row 609 s, 250 s of it measuring the layer sensitivity on 16 sequences).
        # 5 steps at the measured best rate recover more than 8 at 5e-4; AutoMixQ's two trials
        # could only pick a random plan (639.7 ppl), so it waits for the full table with
        # LoRA-unquantized, RankAdaptor and joint (--rows still picks any).
        args.ratios, args.steps, args.ppl_tokens, args.limit = "0.2", 5, 10_000, 50
        args.search_trials, args.search_steps, args.calib_samples = 2, 3, 8
        args.rows = args.rows or "dense,pruned,QLoRA NF4,LoftQ NF4,int8 + LoRA,QPruner"
        args.tasks = "qp_piqa,qp_arc_easy,qp_winogrande,qp_copa"
        if args.out == str(RESULTS):
            args.out = str(ROOT / "results" / "real_bench_quick.json")
        args.work += "_quick"
    return args


def evaluate(model, tokenizer, args: argparse.Namespace, corpus: Path) -> dict:
    t0 = time.perf_counter()
    cfg = EvalConfig(
        ppl_sources=[str(corpus / "test.txt")],
        ctx_len=512,
        max_tokens=args.ppl_tokens,
        tasks=args.tasks.split(","),
        task_data=args.task_data,
        limit=args.limit,
        progress=False,
    )
    scores = evaluate_model(model, tokenizer, cfg)
    tasks = {
        k: {"acc": v.acc, "acc_norm": v.acc_norm, "stderr": v.acc_stderr, "n": v.samples}
        for k, v in scores.zeroshot.items()
        if k in cfg.tasks
    }
    avg = sum(t["acc"] for t in tasks.values()) / max(1, len(tasks))
    ppl = next(iter(scores.ppl.values()))
    return dict(
        ppl=ppl.ppl,
        ppl_tokens=ppl.tokens,
        tasks=tasks,
        task_avg=avg,
        params=scores.size.params,
        weight_mib=scores.size.weight_bytes / 2**20,
        eval_seconds=time.perf_counter() - t0,
    )


def add_lr_arg(ap: argparse.ArgumentParser) -> None:
    """``--lr``: the recovery rate. 4e-3 since rank_trade.py measured the 20-step recipe best
    between 4e-3 and 8e-3; tables stored before the option existed were made at 5e-4
    (:data:`RECIPE_LR`) and are refused on resume, as any file with other settings."""
    ap.add_argument("--lr", type=float, default=4e-3, help="recovery learning rate (AdamW)")


RECIPE_LR = 5e-4  # train_config's rate: the stored tables' before --lr, and rank_trade's "lr x1"


def train_config(steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=8,
        micro_batch=4,
        lr=RECIPE_LR,
        warmup_steps=max(1, steps // 10),
        cutoff_len=256,
        save_every=max(1, steps // 3),
    )


def recover(pruned: Path, plan, *, loftq: bool, args, ctx: dict, name: str, **overrides) -> dict:
    """Recover ``pruned`` per ``plan`` on valid.txt (same tokens for every row) and evaluate it.
    ``overrides``: TrainConfig fields other than the recipe's (``seed``: LoRA init, data order, dropout)."""
    t0 = time.perf_counter()
    train = replace(train_config(args.steps), **overrides)
    res = finetune(
        pruned,
        ctx["corpus"] / "valid.txt",
        Path(args.work) / name,
        plan=plan,
        train_config=train,
        loftq=loftq,
        resume=True,
        export=False,
        progress=False,
    )
    train_s = time.perf_counter() - t0
    row = evaluate(load_model(res.out_dir), ctx["tokenizer"], args, ctx["corpus"])
    return row | dict(
        memory_predicted=res.predicted.total,
        memory_measured=res.measured.total,
        trainable_params=res.trainable_params,
        tokens_per_second=res.train.tokens_per_second,
        train_seconds=train_s,
        bits_per_layer=res.plan.bits_per_layer(),
        ranks=[lp.lora_rank for lp in res.plan.layers],
    )


def search(pruned: Path, method: str, space: str, *, budget: int | str, args, ctx: dict, name: str):
    cfg = SearchConfig(
        method=method,
        memory_budget=budget,
        memory_measure=MEASURE.get(args.budget, "finetune"),
        space=space,
        bits=BITS,
        ranks=(2, 4, 8, 16),
        trials=args.search_trials,
        # Trials price memory at the recovery's batch shape, so the budget means the same thing.
        train=replace(trial_training(args.search_steps, micro_batch=4), cutoff_len=256),
        train_data=str(ctx["corpus"] / "valid.txt"),
        eval_data=str(ctx["corpus"] / "valid.txt"),  # selection never sees test.txt or task items
        calib_data=str(ctx["corpus"] / "valid.txt"),
        n_calib=args.calib_samples,
    )
    found = search_model(pruned, cfg, Path(args.work) / f"search-{name}", resume=True, progress=False)
    if found.plan is None:
        raise RuntimeError(f"{method}: no plan within the budget")
    return found.plan, len(found.summary.records), found.summary.budget


def prune_and_score(model: str | Path, out: Path, cfg: PruneConfig, *, args, corpus: Path) -> dict:
    """Prune ``model`` into ``out``, calibrated on ``valid.txt`` as every table's pruned model is,
    and score it: the pruned row, with its wall time (pruning and scoring)."""
    t0 = time.perf_counter()
    prune_checkpoint(str(model), out, cfg, str(corpus / "valid.txt"), overwrite=True, progress=False)
    row = evaluate(load_model(out), load_tokenizer(out), args, corpus)
    return row | {"wall_seconds": time.perf_counter() - t0}


def weights_midway(pruned: Path) -> int:
    """Halfway between uniform NF4's and uniform int8's weights + LoRA, priced as the search
    prices plans: where the allocation frontier says a mixed plan has room to pay."""
    space = build_space(pruned, SearchConfig(memory_measure="weights", bits=BITS))
    return (resolve_budget("nf4", space).bytes + resolve_budget("int8", space).bytes) // 2


def run_ratio(ratio: float, rows: Rows, *, args, ctx: dict, wanted) -> None:
    """Prune at ``ratio``, then every recovery row; each row is skipped when already stored."""
    pruned_dir = Path(args.work) / f"pruned-{ratio}"
    key = f"{ratio}/pruned"
    if rows.get(key) is None and wanted("pruned"):
        cfg = PruneConfig(ratio=ratio, layer_start=args.layer_start, layer_end=args.layer_end)
        row = prune_and_score(ctx["model"], pruned_dir, cfg, args=args, corpus=ctx["corpus"])
        rows.put(key, row)
        print(f"{key}: ppl {row['ppl']:.2f}, task avg {row['task_avg']:.3f}", flush=True)
    for name, source, loftq in UNIFORM:
        key = f"{ratio}/{name}"
        if rows.get(key) is None and wanted(name):
            t0 = time.perf_counter()
            dirname = key.replace(" ", "_")
            row = recover(pruned_dir, source, loftq=loftq, args=args, ctx=ctx, name=dirname, lr=args.lr)
            rows.put(key, row | {"evaluations": 1, "wall_seconds": time.perf_counter() - t0})
            print(f"{key}: ppl {row['ppl']:.2f}, task avg {row['task_avg']:.3f}", flush=True)
    low, high = rows.get(f"{ratio}/QLoRA NF4"), rows.get(f"{ratio}/int8 + LoRA")
    for name, method, space in SEARCHED:
        key = f"{ratio}/{name}"
        if rows.get(key) is not None or not wanted(name):
            continue
        if low is None or (high is None and args.budget == "midway"):
            print(f"{key}: skipped, its memory budget's rows (QLoRA NF4; int8 for midway) are not done yet")
            continue
        t0 = time.perf_counter()
        budget = low["memory_predicted"]
        if args.budget == "midway":
            budget = (low["memory_predicted"] + high["memory_predicted"]) // 2
        elif args.budget == "weights":
            budget = "nf4"  # priced by the search's space, as the weights the NF4 row holds
        elif args.budget == "weights-midway":
            budget = weights_midway(pruned_dir)
        plan, n, budget = search(
            pruned_dir, method, space, budget=budget, args=args, ctx=ctx, name=key.replace("/", "-")
        )
        searched_s = time.perf_counter() - t0
        row = recover(pruned_dir, plan, loftq=False, args=args, ctx=ctx, name=key.replace(" ", "_"),
                      lr=args.lr)  # fmt: skip
        rows.put(
            key,
            row
            | {
                "evaluations": n,
                "search_budget": budget,
                "search_seconds": searched_s,
                "wall_seconds": time.perf_counter() - t0,
            },
        )
        print(f"{key}: ppl {row['ppl']:.2f}, task avg {row['task_avg']:.3f} ({n} trials)", flush=True)


def row_plan(work: str | Path, key: str) -> Path:
    """The plan file row ``key`` (``0.2/QPruner``) recovered: its directory is the key, spaces as _."""
    return Path(work) / key.replace(" ", "_") / PLAN_FILE


def shuffled_plan(pruned: Path, plan_file: Path, *, budget: int, measure: str, seed: int = 0):
    """``plan_file``'s widths (the same multiset) placed on layers at random, redrawn until the
    plan is within ``budget`` under ``measure``: the searched row's memory, not its choices."""
    space = build_space(pruned, SearchConfig(memory_measure=measure, bits=BITS))
    widths = [int(round(b)) for b in Plan.load(plan_file).bits_per_layer()]
    return space.plan(space.choices_from(shuffled_widths(widths, space=space, budget=budget, seed=seed)))


def shuffled_widths(widths: list[int], *, space, budget: int, seed: int = 0) -> list[int]:
    """``widths`` permuted across layers at random, redrawn until ``space`` prices them within ``budget``."""
    rng = np.random.default_rng(seed)
    for _ in range(10_000):
        out = [int(b) for b in rng.permutation(widths)]
        if space.memory(space.choices_from(out)) <= budget:
            return out
    raise RuntimeError(f"no shuffle of the widths {widths} fits {budget} bytes")


def run_shuffled(ratio: float, rows: Rows, *, args, ctx: dict, names: list[str]) -> None:
    """Each named searched row again, its widths shuffled across layers within its budget."""
    measure = MEASURE.get(args.budget, "finetune")
    for name in names:
        src, key = rows.get(f"{ratio}/{name}"), f"{ratio}/{name}{SHUFFLED}"
        if src is None or rows.get(key) is not None:
            continue
        t0 = time.perf_counter()
        plan = shuffled_plan(Path(args.work) / f"pruned-{ratio}", row_plan(args.work, f"{ratio}/{name}"),
                             budget=src["search_budget"], measure=measure)  # fmt: skip
        row = recover(Path(args.work) / f"pruned-{ratio}", plan, loftq=False, args=args, ctx=ctx,
                      name=key.replace(" ", "_"), lr=args.lr)  # fmt: skip
        rows.put(key, row | {"evaluations": 1, "wall_seconds": time.perf_counter() - t0})
        print(f"{key}: ppl {row['ppl']:.2f}, task avg {row['task_avg']:.3f}", flush=True)


def run_train_seeds(
    ratio: float, rows: Rows, *, args, ctx: dict, seeds: list[int], wanted, extra: list[str] = ()
) -> None:
    """Every recovered row again with other training seeds (LoRA init, data order, dropout),
    the same plan (read from the row's recovery) and tokens: the seed-to-seed spread that a
    searched row's lead over a uniform one must exceed. Seed-major, so a cut-off run leaves
    every row with the same seeds."""
    names = [u[0] for u in UNIFORM] + [s[0] for s in SEARCHED] + list(extra)
    for seed in seeds:
        for name in names:
            key = f"{ratio}/{name}"
            seeded = f"{key} train seed {seed}"
            chosen = wanted(name) or name in extra
            if not chosen or rows.get(key) is None or rows.get(seeded) is not None or seed == 42:
                continue  # 42: TrainConfig's seed, the row itself
            t0 = time.perf_counter()
            plan = PlanSource.from_file(row_plan(args.work, key))
            row = recover(Path(args.work) / f"pruned-{ratio}", plan, loftq=name in LOFTQ, args=args, ctx=ctx,
                          name=f"{key}_seed{seed}".replace(" ", "_"), seed=seed, lr=args.lr)  # fmt: skip
            rows.put(seeded, row | {"evaluations": 1, "wall_seconds": time.perf_counter() - t0})
            print(f"{seeded}: ppl {row['ppl']:.2f}, task avg {row['task_avg']:.3f}", flush=True)


def main() -> None:
    args = parse_args()
    skip = ("rows", "ratios", "table", "out", "work", "train_seeds", "shuffled")  # not the rows' recipe
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    rows = Rows(Path(args.out), settings, read_only=args.table)
    if args.table:
        print(table(rows.data))
        return
    wanted_rows = set(filter(None, args.rows.split(",")))

    def wanted(name: str) -> bool:
        return not wanted_rows or name in wanted_rows

    model = Path(resolve_model_source(args.model))
    ctx = {"model": str(model), "corpus": resolve_corpus(fallback=False), "tokenizer": load_tokenizer(model)}
    t_start = time.perf_counter()
    if rows.get("dense") is None and wanted("dense"):
        t0 = time.perf_counter()
        row = evaluate(load_model(model), ctx["tokenizer"], args, ctx["corpus"])
        rows.put("dense", row | {"wall_seconds": time.perf_counter() - t0})
        print(f"dense: ppl {row['ppl']:.2f}, task avg {row['task_avg']:.3f}", flush=True)
    for ratio in (float(r) for r in args.ratios.split(",")):
        run_ratio(ratio, rows, args=args, ctx=ctx, wanted=wanted)
        shuffled = [n for n in args.shuffled.split(",") if n]
        run_shuffled(ratio, rows, args=args, ctx=ctx, names=shuffled)
        seeds = [int(s) for s in args.train_seeds.split(",") if s]
        extra = [f"{n}{SHUFFLED}" for n in shuffled]
        run_train_seeds(ratio, rows, args=args, ctx=ctx, seeds=seeds, wanted=wanted, extra=extra)
    print(f"\n{time.perf_counter() - t_start:.0f} s this run; table ({args.out}):\n")
    print(table(rows.data))


if __name__ == "__main__":
    main()
