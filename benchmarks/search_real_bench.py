"""Does search pay for itself on a real model? Every searcher at equal time on SmolLM2-135M.

Issue 15 item 3. SmolLM2-135M Taylor-pruned at ``--ratio`` (layers 3..L-2), then per method and
seed one search with the same time budget (``--minutes`` of trial time, ``--time-budget``) in
the bits space (2/3/4/8/16 bits, rank 8), multi-fidelity trials, selection on WikiText-2
``valid.txt``. Methods: QPruner (measured-sensitivity allocation + GP), AutoMixQ (performance
model + NSGA-II on it), ``nsga2`` (optuna's NSGA-II directly on measured trials: the method of
AutoMixQ's released code), random search, and random search with full trials
(``--no-multi-fidelity``) to price what multi-fidelity saves. The best plan of each search is
recovered exactly like real_bench's uniform rows (same tokens, same seed) and scored on
WikiText-2 test perplexity and the task average; uniform QLoRA NF4 / LoftQ NF4 / int8 rows are
recovered beside them, NF4 with several training seeds for the seed-to-seed spread.

The memory budget is uniform QLoRA NF4's predicted memory (``--budget nf4``, the issue's
rule); ``--budget midway`` (halfway to uniform int8) is the rule of the committed quick run,
made when hqq and int8 layers still kept their input for backward and nothing but uniform NF4
fitted NF4's memory (see real_bench.py).

Reported per method: test perplexity and task average as mean ± standard error over seeds,
the search's best valid error, evaluations, hypervolume (error x memory, one reference point)
at 25/50/100 % of the time budget, and over all studies the performance model's Spearman ρ on
held-out plans (fit on every study but one, predict that one's plans).

    python benchmarks/search_real_bench.py --quick   # 2 seeds x 5 min per method (measured 100 min)
    python benchmarks/search_real_bench.py --quick --seeds 0,1,2  # a third seed (49 min more)
    python benchmarks/search_real_bench.py           # 3 seeds x 8 min per method (~4 h)
    python benchmarks/search_real_bench.py --table   # print the table from the JSON
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import real_bench as rb
import search_rho
from real_table import Rows, mean_se

from qpruner.checkpoint import load_tokenizer
from qpruner.data_sources import find_shared_data
from qpruner.models.catalog import resolve_model_source
from qpruner.reference import resolve_corpus
from qpruner.search import SearchConfig, search_model
from qpruner.search.from_model import build_space
from qpruner.search.pareto import hypervolume
from qpruner.search.recipe import trial_training

ROOT = Path(__file__).resolve().parent
#: What a search is run with: a searched row is kept only while these are unchanged (the uniform
#: rows do not depend on them, so changing them keeps those).
SEARCH_SETTINGS = ("minutes", "search_steps", "trial_eval_tokens", "screen_tokens")
#: label -> (method, multi-fidelity)
METHODS = {
    "QPruner": ("qpruner", True),
    "AutoMixQ": ("automixq", True),
    "AutoMixQ + prior": ("automixq", True),  # --performance-prior: the measured sensitivity
    "NSGA-II (AutoMixQ's code)": ("nsga2", True),
    "random": ("random", True),
    "random (full trials)": ("random", False),  # a label without a comma: --methods splits on them
}
UNIFORM = ("QLoRA NF4", "LoftQ NF4", "int8 + LoRA")
WITH_PRIOR = {"AutoMixQ + prior"}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="2 seeds, 5 min per search of 4-step trials, no full-trial random, 20 recovery steps, 4 tasks",
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--layer-start", type=int, default=3)
    ap.add_argument("--layer-end", type=int, default=-2)
    ap.add_argument("--minutes", type=float, default=8.0, help="trial time per search")
    ap.add_argument("--seeds", default=None, help="search seeds (default 0,1,2; --quick: 0,1)")
    ap.add_argument("--methods", default=None, help=f"default: all of {', '.join(METHODS)}")
    ap.add_argument("--steps", type=int, default=40, help="recovery steps (8 x 256 tokens), as real_bench")
    rb.add_lr_arg(ap)
    ap.add_argument("--search-steps", type=int, default=10, help="steps of a full trial")
    ap.add_argument("--trial-eval-tokens", type=int, default=20_000, help="valid tokens scoring a full trial")
    ap.add_argument(
        "--screen-tokens", type=int, default=4096, help="valid tokens scoring a trial's early rungs"
    )
    ap.add_argument("--ppl-tokens", type=int, default=40_000)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--tasks", default=",".join(rb.TASKS))
    ap.add_argument("--task-data", default=str(find_shared_data("zeroshot", files=["piqa.jsonl"]) or ""))
    ap.add_argument("--work", default=str(ROOT / "out" / "search_real_bench"))
    ap.add_argument("--out", default=str(ROOT / "results" / "search_real_bench.json"))
    ap.add_argument("--table", action="store_true")
    ap.add_argument(
        "--budget", choices=("nf4", "midway"), default="nf4",
        help="memory budget: uniform QLoRA NF4's predicted memory (default) or halfway to int8's",
    )  # fmt: skip
    ap.add_argument(
        "--seeded-uniform", default="QLoRA NF4", help="uniform rows also trained with more seeds (comma list)"
    )
    args = ap.parse_args()
    if args.quick:
        # Measured: a 10-step trial took 163-181 s on the 2 cores (load, quantize, 3 screens, 10
        # steps of 4 x 256 tokens at ~11 s each, 20k scored tokens), so 3 minutes bought one plan
        # per search. 4 steps and 8k scored tokens make a full trial about a minute.
        args.minutes, args.search_steps, args.trial_eval_tokens, args.screen_tokens = 5.0, 4, 8000, 2048
        args.limit, args.steps = 50, 20
        args.seeds = args.seeds or "0,1"
        args.methods = args.methods or "QPruner,AutoMixQ,AutoMixQ + prior,NSGA-II (AutoMixQ's code),random"
        args.tasks = "qp_piqa,qp_arc_easy,qp_winogrande,qp_copa"
        args.ppl_tokens = 20_000
        args.work += "_quick"
        args.out = args.out.replace(".json", "_quick.json")
    args.seeds = args.seeds or "0,1,2"
    args.methods = args.methods or ",".join(METHODS)
    args.ratios, args.rows = str(args.ratio), ""  # what real_bench.run_ratio reads
    lists = (("--methods", args.methods, METHODS), ("--seeded-uniform", args.seeded_uniform, UNIFORM))
    for flag, names, known in lists:
        if unknown := [n for n in names.split(",") if n not in known]:
            ap.error(f"{flag}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    return args


def search_cfg(
    args, method: str, *, seed: int, budget: int, multi_fidelity: bool, corpus: Path, prior: bool = False
) -> SearchConfig:
    return SearchConfig(
        performance_prior=prior,
        method=method,
        memory_budget=budget,
        space="bits",
        bits=(2, 3, 4, 8, 16),
        trials=10_000,  # the time budget ends each search
        time_budget=args.minutes * 60,
        eval_max_tokens=args.trial_eval_tokens,
        screen_tokens=args.screen_tokens,
        seed=seed,
        multi_fidelity=multi_fidelity,
        train=replace(trial_training(args.search_steps, micro_batch=4), cutoff_len=256),
        train_data=str(corpus / "valid.txt"),
        eval_data=str(corpus / "valid.txt"),
        calib_data=str(corpus / "valid.txt"),
    )


def timeline(study_dir: Path, method: str) -> list[dict]:
    """Every finished trial in completion order: cumulative trial seconds, error, memory."""
    import optuna

    study = optuna.load_study(study_name=method, storage=f"sqlite:///{study_dir / 'study.db'}")
    done = sorted((t for t in study.get_trials() if t.datetime_complete), key=lambda t: t.datetime_complete)
    out, spent = [], 0.0
    for t in done:
        spent += (t.datetime_complete - t.datetime_start).total_seconds()
        if t.user_attrs.get("status") == "evaluated":
            out.append({"seconds": spent, "error": t.user_attrs["error"], "params": t.params,
                        "memory": t.user_attrs["memory_predicted"]})  # fmt: skip
    return out


def study_dir(args, label: str, seed: int) -> Path:
    method, mf = METHODS[label]
    tag = f"{args.search_steps}steps-{args.minutes:g}min-{args.trial_eval_tokens}tok"
    kind = ("mf" if mf else "full") + ("-prior" if label in WITH_PRIOR else "")
    return Path(args.work) / f"search-{method}-{kind}-{seed}-{tag}"


def search_settings(args) -> dict:
    return {k: getattr(args, k) for k in SEARCH_SETTINGS}


def searched(data: dict) -> dict[str, dict]:
    """The searched rows made with the file's current search settings."""
    return {k: r for k, r in data["rows"].items() if "/seed" in k and r.get("search") == data.get("search")}


def run_one(label: str, seed: int, rows: Rows, *, args, ctx: dict, budget: int) -> None:
    key = f"{label}/seed{seed}"
    if key in searched(rows.data):
        return
    method, mf = METHODS[label]
    work = study_dir(args, label, seed)
    t0 = time.perf_counter()
    cfg = search_cfg(args, method, seed=seed, budget=budget, multi_fidelity=mf, corpus=ctx["corpus"],
                     prior=label in WITH_PRIOR)  # fmt: skip
    found = search_model(ctx["pruned"], cfg, work, resume=True, progress=False)
    searched_s = time.perf_counter() - t0
    row = rb.recover(ctx["pruned"], found.plan, loftq=False, args=args, ctx=ctx, name=f"rec-{work.name}",
                     lr=args.lr)  # fmt: skip
    trials = timeline(work, method)
    rows.put(key, row | {"search_seconds": searched_s, "trials": trials, "evaluations": len(trials),
                         "best_valid_error": min(t["error"] for t in trials),
                         "trial_definition": search_rho.trial_definition(work),
                         "search": search_settings(args)})  # fmt: skip
    print(f"{key}: test ppl {row['ppl']:.2f}, avg {row['task_avg']:.3f}, {len(trials)} plans", flush=True)


def summary(data: dict, minutes: float) -> list[str]:
    rows = searched(data)
    trials = [t for r in rows.values() for t in r.get("trials", [])]
    if not trials:
        return ["no searched rows yet"]
    ref = (max(t["error"] for t in trials) * 1.001, float(data["budget"]) * 1.001)
    head = ("| method | test ppl (mean ± se) | task avg % | memory MiB | best valid error | plans | "
            "hypervolume (ppl x MiB) at 25 / 50 / 100 % of time | search wall s | seeds |")  # fmt: skip
    out = [head, "|---|---|---|---|---|---|---|---|---|"]
    for label in METHODS:
        runs = [r for k, r in rows.items() if k.startswith(f"{label}/seed")]
        if not runs:
            continue
        ppl, avg = mean_se([r["ppl"] for r in runs]), mean_se([100 * r["task_avg"] for r in runs])
        best = mean_se([r["best_valid_error"] for r in runs])
        hv = [
            mean_hv(
                [r["trials"] for r in runs],
                ref,
                lambda ts, c=share * minutes * 60: [t for t in ts if t["seconds"] <= c],
            )
            for share in (0.25, 0.5, 1.0)
        ]
        out.append(
            f"| {label} | {ppl[0]:.2f} ± {ppl[1]:.2f} | {avg[0]:.1f} ± {avg[1]:.1f} "
            f"| {sum(r['memory_predicted'] for r in runs) / len(runs) / 2**20:.0f} "
            f"| {best[0]:.2f} ± {best[1]:.2f} "
            f"| {sum(r['evaluations'] for r in runs) / len(runs):.1f} | "
            + " / ".join(f"{h:.1f}" for h in hv)
            + f" | {sum(r['search_seconds'] for r in runs) / len(runs):.0f} | {len(runs)} |"
        )
    for key in [k for k in data["rows"] if k.startswith(f"{data['settings']['ratio']}/")]:  # pruned, uniform
        r = data["rows"][key]
        mib = f"{r['memory_predicted'] / 2**20:.0f}" if r.get("memory_predicted") else ""
        out.append(f"| {key} | {r['ppl']:.2f} | {100 * r['task_avg']:.1f} | {mib} | | | | | |")
    for name in UNIFORM:
        runs = [r for k, r in data["rows"].items() if k.split(" train seed")[0].endswith(f"/{name}")]
        if len(runs) > 1:
            p, pse = mean_se([r["ppl"] for r in runs])
            a, ase = mean_se([100 * r["task_avg"] for r in runs])
            label = f"{name} over {len(runs)} training seeds"
            out.append(f"| {label} | {p:.2f} ± {pse:.2f} | {a:.1f} ± {ase:.1f} | | | | | | |")
    return out


def mean_hv(runs: list[list[dict]], ref: tuple[float, float], cut) -> float:
    """Mean over seeds of the hypervolume (MiB units) of ``cut(trials)`` of each run."""
    hv = [hypervolume([(t["error"], t["memory"]) for t in cut(ts)], ref) for ts in runs]
    return sum(hv) / len(hv) / 2**20


def figure(data: dict, minutes: float, path: Path) -> None:
    """Hypervolume (mean over seeds) against trial time and against evaluations, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = searched(data)
    trials = [t for r in rows.values() for t in r.get("trials", [])]
    ref = (max(t["error"] for t in trials) * 1.001, float(data["budget"]) * 1.001)
    fig, (by_time, by_count) = plt.subplots(1, 2, figsize=(10, 4))
    grid = [minutes * 60 * i / 40 for i in range(41)]
    for label in METHODS:
        runs = [r["trials"] for k, r in rows.items() if k.startswith(f"{label}/seed")]
        if not runs:
            continue
        within = [mean_hv(runs, ref, lambda ts, g=g: [t for t in ts if t["seconds"] <= g]) for g in grid]
        by_time.plot([g / 60 for g in grid], within, label=label)
        counts = range(1, max(len(ts) for ts in runs) + 1)
        by_count.plot(counts, [mean_hv(runs, ref, lambda ts, n=n: ts[:n]) for n in counts], marker=".")
    by_time.set(xlabel="trial time (min)", ylabel="hypervolume (ppl x MiB), mean over seeds")
    by_count.set(xlabel="plans evaluated to the end", ylabel="hypervolume (ppl x MiB)")
    by_time.legend(fontsize=8)
    rule = data["settings"].get("budget", "midway")  # runs before --budget were all midway
    budget = "halfway NF4 -> int8" if rule == "midway" else "uniform NF4"
    fig.suptitle(f"search_real_bench: SmolLM2-135M pruned 30 %, budget {budget}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish(rows: Rows, args, corpus: Path) -> None:
    """The performance model's held-out ρ, the table and the figure, from the stored rows."""
    pruned, budget = Path(args.work) / f"pruned-{args.ratio}", rows.data.get("budget")
    if args.table and not (pruned.is_dir() and budget):  # the work folder is gone: print what was stored
        stored = rows.get("_summary")
        print("\n".join(stored["table"]) if stored else f"{args.out}: no summary stored yet")
        print(f"(the stored summary: {pruned} is not here to recompute ρ from)")
        return
    cfg = search_cfg(args, "random", seed=0, budget=budget, multi_fidelity=True, corpus=corpus)
    space = build_space(pruned, cfg)
    done = searched(rows.data)
    for key, r in done.items():  # rows made before the definition was recorded: read the study
        if "trial_definition" not in r:
            label, seed = key.rsplit("/seed", 1)
            r["trial_definition"] = search_rho.trial_definition(study_dir(args, label, int(seed)))
    sens = measured_sensitivity(args)
    prior_space = None if sens is None else replace(space, sensitivity=sens)
    table = search_rho.rho_table(done, space, prior_space)
    rows.data["performance_model_rho_held_out"] = table
    lines = [*summary(rows.data, args.minutes), "", *search_rho.rho_lines(table)]
    rows.put("_summary", {"table": lines})
    figure(rows.data, args.minutes, Path(args.out).with_suffix(".png"))
    print("\n".join(lines))


def measured_sensitivity(args):
    """The layer sensitivity a QPruner or prior-led study measured on the pruned model first."""
    from qpruner.search.sensitivity import Sensitivity

    for label, seed in ((k, int(s)) for k in ("QPruner", *WITH_PRIOR) for s in args.seeds.split(",")):
        path = study_dir(args, label, seed) / "search.json"
        if path.is_file():
            profile = json.loads(path.read_text())["extra"]["importance"].get("profile") or {}
            if "sensitivity" in profile:
                return Sensitivity.from_dict(profile["sensitivity"])
    return None


def main() -> None:
    args = parse_args()
    skip = ("table", "out", "work", "methods", "seeds", "seeded_uniform", *SEARCH_SETTINGS)
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    rows = Rows(Path(args.out), settings, read_only=args.table)
    rows.data["search"] = search_settings(args)
    corpus = resolve_corpus(fallback=False)
    if args.table:
        finish(rows, args, corpus)
        return
    model = Path(resolve_model_source(args.model))
    ctx = {"model": str(model), "corpus": corpus, "tokenizer": load_tokenizer(model)}
    uniform = {"pruned", *UNIFORM}
    rb.run_ratio(args.ratio, rows, args=args, ctx=ctx, wanted=lambda name: name in uniform)
    ctx["pruned"] = Path(args.work) / f"pruned-{args.ratio}"
    low, high = (rows.get(f"{args.ratio}/{n}")["memory_predicted"] for n in ("QLoRA NF4", "int8 + LoRA"))
    budget = rows.data["budget"] = (low + high) // 2 if args.budget == "midway" else low
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:  # seed-major: with a cut-off run every method has the same seeds done
        for label in args.methods.split(","):
            run_one(label, seed, rows, args=args, ctx=ctx, budget=budget)
    extra = [1, 2][: max(1, len(seeds) - 1)]
    names = args.seeded_uniform.split(",")  # uniform rows also trained with more seeds: the spread
    rb.run_train_seeds(args.ratio, rows, args=args, ctx=ctx, seeds=extra, wanted=lambda name: name in names)
    finish(rows, args, corpus)


if __name__ == "__main__":
    main()
