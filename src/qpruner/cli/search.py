"""Command line for stage 4: ``search`` and ``report`` (and the search flags of ``run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from qpruner.cli.common import add_runtime_flags
from qpruner.search.fidelity import PRUNERS
from qpruner.search.recipe import TRIAL_STEPS


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def add_search_options(p: argparse.ArgumentParser, in_run: bool = False) -> None:
    """Flags shared by ``search`` and ``run`` (where ``--memory-budget`` switches the search on)."""
    _add_space_flags(p, in_run=in_run)
    _add_trial_flags(p)
    _add_study_flags(p)
    _add_guidance_flags(p)
    p.add_argument("--search-seed", type=int, default=0)
    p.add_argument(
        "--time-budget",
        help="stop starting trials once they have used this much time in total (600, 90m, 2h); "
        "with --trials, whichever comes first",
    )


def _add_space_flags(p: argparse.ArgumentParser, *, in_run: bool) -> None:
    """What is searched and under which budget; in ``run`` the budget is optional because it is
    what turns the search stage on."""
    from qpruner.search.searchers import METHODS

    p.add_argument("--method", choices=list(METHODS), default="qpruner", help="searcher (default qpruner)")
    p.add_argument(
        "--memory-budget",
        required=not in_run,
        help="memory budget (of what: --memory-measure): a size (6GiB), a reference plan (nf4, int8, "
        "uniform:BITS[:RANK], priced as the trials are) or a share of the 16-bit plan (70%%)"
        + (" (turns the search stage on)" if in_run else ""),
    )
    p.add_argument(
        "--memory-measure",
        choices=["finetune", "weights"],
        default="finetune",
        help="what the budget limits: fine-tuning memory at the trials' batch and length (default), "
        "or weights: the packed base plus LoRA adapters a served model holds",
    )
    p.add_argument("--space", choices=["bits", "ranks", "joint"], help="searched: default the method's")
    p.add_argument(
        "--search-bits",
        dest="search_bits",
        type=_ints,
        default=(4, 8, 16),
        help="bit widths per layer to choose from (16: unquantized)",
    )
    p.add_argument("--ranks", type=_ints, default=(2, 4, 8, 16), help="LoRA ranks per layer to choose from")


def _add_trial_flags(p: argparse.ArgumentParser) -> None:
    """How much the study may spend: trials, steps per trial, and what stops weak ones early."""
    p.add_argument(
        "--trials", type=int, default=40, help="plans tried in the whole study (evaluated or stopped early)"
    )
    p.add_argument("--trial-steps", type=int, default=TRIAL_STEPS, help="fine-tune steps per trial")
    p.add_argument(
        "--no-multi-fidelity",
        action="store_true",
        help="score each trial once, at its end (default: before training and after 1/4, 1/2 and all "
        "its steps, optuna's successive halving stopping weak plans early)",
    )
    p.add_argument(
        "--pruner",
        choices=PRUNERS,
        default="halving",
        help="what stops weak multi-fidelity trials: optuna's successive halving or Hyperband",
    )


def _add_study_flags(p: argparse.ArgumentParser) -> None:
    """Where the study lives, so several workers can share it and a dead one's trial is retried."""
    p.add_argument("--storage", help="optuna storage URL (default sqlite:///OUT/study.db); postgresql://...")
    p.add_argument("--study-name", help="study name (default: the method)")
    p.add_argument("--heartbeat", type=int, help="RDB storages: seconds between beats of a running trial")
    p.add_argument(
        "--heartbeat-grace", type=int, help="seconds without a beat before a trial is failed and retried"
    )


def _add_guidance_flags(p: argparse.ArgumentParser) -> None:
    """What a plan is scored on and what steers the bit allocation towards good ones."""
    p.add_argument("--search-metric", default="ppl", help="ppl, or an lm-eval task (error = 1 - acc)")
    p.add_argument(
        "--layer-importance",
        choices=["sensitivity", "mi", "taylor", "random"],
        default="sensitivity",
        help="layer importance for the bit allocation: measured 2/3-bit sensitivity (default), "
        "mutual information (the QPruner paper's), Taylor, or random",
    )
    p.add_argument(
        "--no-layer-profile",
        action="store_true",
        help="skip measuring each layer's 2/3-bit sensitivity beside MI and Taylor (report figure)",
    )
    p.add_argument(
        "--performance-prior",
        action="store_true",
        help="automixq: measure each layer's sensitivity first (needs --calib-data) and let the "
        "performance model rank plans by its additive prior (the joint search always may)",
    )


def search_config(args: argparse.Namespace, **fixed):
    from qpruner.search import SearchConfig
    from qpruner.search.recipe import trial_training

    return SearchConfig(
        method=args.method,
        memory_budget=args.memory_budget,
        memory_measure=args.memory_measure,
        space=args.space,
        bits=args.search_bits,
        ranks=args.ranks,
        rank=args.rank,
        fixed_bits=args.bits,
        trials=args.trials,
        seed=args.search_seed,
        storage=args.storage,
        study_name=args.study_name,
        heartbeat=args.heartbeat,
        grace=args.heartbeat_grace,
        metric=args.search_metric,
        task_dir=getattr(args, "task_dir", None),
        train=trial_training(args.trial_steps),
        importance=args.layer_importance,
        layer_profile=not args.no_layer_profile,
        performance_prior=args.performance_prior,
        multi_fidelity=not args.no_multi_fidelity,
        pruner=args.pruner,
        time_budget=args.time_budget,
        **fixed,
    )


def add_search_parsers(sub) -> None:
    s = sub.add_parser("search", help="search per-layer bits / LoRA ranks under a memory budget (optuna)")
    s.add_argument("--model", required=True, help="pruned model directory (or any model source)")
    s.add_argument("--out", required=True, help="output: plan.json, search.json, report.html, study.db")
    add_search_options(s)
    s.add_argument("--rank", type=int, default=8, help="base LoRA rank (fixed when ranks are not searched)")
    # --bits N means one width in every command (as in plan/finetune/run): here the width of
    # the layers a method does not search. The widths searched are --search-bits only.
    s.add_argument("--bits", type=int, default=4, help="every layer's bits when bits are not searched")
    s.add_argument(  # deprecated spelling of --bits, kept for old scripts
        "--fixed-bits", dest="bits", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    s.add_argument("--train-data", required=True, help="text or Alpaca JSON for each trial's fine-tune")
    s.add_argument("--eval-data", help="held-out text for the perplexity metric")
    s.add_argument("--calib-data", help="calibration text for layer importance (qpruner, joint)")
    s.add_argument("--task-dir", help="folder of local lm-eval task YAMLs (with --search-metric TASK)")
    s.add_argument("--resume", action="store_true", help="continue the study (after a crash or kill)")
    add_runtime_flags(s, dtype_help=None)

    r = sub.add_parser("report", help="HTML report (Pareto front, per-layer bits and ranks) of a search")
    r.add_argument("path", nargs="?", help="a search dir or a run dir (holding search/)")
    r.add_argument("--storage", help="optuna storage URL instead of a directory")
    r.add_argument("--study-name")
    r.add_argument("--out", help="where to write report.html (default: the search dir)")


def _cmd_search(args: argparse.Namespace) -> None:
    from qpruner.device import resolve_device
    from qpruner.search import search_model

    data = {"train_data": args.train_data, "eval_data": args.eval_data, "calib_data": args.calib_data}
    cfg = search_config(args, **data)
    device = str(resolve_device(args.device))
    res = search_model(
        args.model, cfg, args.out, resume=args.resume, device=device, progress=not args.no_progress
    )
    print_result(res)


def print_result(res) -> None:
    from qpruner.search.records import Status, count
    from qpruner.units import format_bytes

    s = res.summary
    n_ev, n_rej = count(s.records, Status.EVALUATED), count(s.records, Status.REJECTED)
    n_stop = count(s.records, Status.PRUNED)
    print(f"{s.method}: {n_ev} plans evaluated, {n_stop} stopped early, {n_rej} refused over budget")
    print(f"budget: {s.budget_text()}")
    best = s.chosen_trial
    if best is None:
        print("no plan was evaluated")
        return
    measured = format_bytes(best.memory_measured) if best.memory_measured else "n/a"
    print(
        f"best: trial {best.number}, {s.metric} {best.error:.4f}, memory predicted "
        f"{format_bytes(best.memory_predicted)} / measured {measured}{s.at()}"
    )
    if res.out_dir is not None:
        print(f"plan: {res.out_dir / 'plan.json'}   report: {res.out_dir / 'report.html'}")


def _cmd_report(args: argparse.Namespace) -> None:
    from qpruner.errors import QPrunerError
    from qpruner.search.report import write_report
    from qpruner.search.run import load_summary
    from qpruner.search.study import default_storage

    if args.storage:
        storage, where = args.storage, Path(args.out or ".")
    elif args.path:
        where = Path(args.path)
        if (where / "search" / "study.db").is_file():
            where = where / "search"
        if not (where / "study.db").is_file():
            raise QPrunerError(f"no search found in {args.path} (expected study.db); or pass --storage URL")
        storage = default_storage(where)
    else:
        raise QPrunerError("name a search directory or pass --storage URL")
    summary = load_summary(storage, args.study_name)
    print(f"report: {write_report(summary, Path(args.out) if args.out else where)}")


SEARCH_COMMANDS = {"search": _cmd_search, "report": _cmd_report}
