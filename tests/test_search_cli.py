"""`qpruner search`, `report` and the search stage of `run`, on a tiny model, for real."""

from __future__ import annotations

import json
import re

from qpruner.cli import main
from qpruner.plan import Plan


def _data(text_file) -> list[str]:
    return ["--train-data", str(text_file), "--eval-data", str(text_file), "--no-progress", "--device", "cpu"]


def test_search_then_report_end_to_end(model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "search"
    args = ["search", "--model", str(model_dir), "--out", str(out), "--method", "qpruner"]
    args += [
        "--search-bits",
        "4,8",
        "--memory-budget",
        "64MiB",
        "--trials",
        "3",
        "--trial-steps",
        "1",
    ]
    args += ["--calib-data", str(text_file), "--layer-importance", "taylor", *_data(text_file)]
    assert main(args) == 0, capsys.readouterr().err
    shown = capsys.readouterr().out
    # multi-fidelity (the default): each plan screened untrained, then trained; some may stop early
    evaluated, stopped = map(
        int, re.search(r"qpruner: (\d+) plans evaluated, (\d+) stopped early", shown).groups()
    )
    assert evaluated >= 1 and evaluated + stopped == 3 and "best: trial" in shown
    plan = Plan.load(out / "plan.json")
    plan.validate(num_layers=6)
    assert {lp.weight_format for lp in plan.layers} <= {"nf4", "int8"}
    assert plan.memory["predicted"]["total"] <= 64 * 2**20 and plan.memory["measured"]["total"] > 0
    summary = json.loads((out / "search.json").read_text())
    first = min(summary["records"], key=lambda r: r["number"])
    assert first["proposed_by"] == "initial allocation" and first["metrics"]["ppl"] > 1
    imp = summary["extra"]["importance"]
    assert len(imp["scores"]) == 6 and imp["scores"] == imp["profile"]["taylor"]  # what allocated
    assert len(imp["profile"]["sensitivity"]["delta"]) == 6 and (out / "sensitivity.png").is_file()
    assert "Layer sensitivity" in (out / "report.html").read_text()
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file() and "report:" in capsys.readouterr().out
    # again without --resume: refused; with --resume and more trials: continues the study
    assert main(args) == 1 and "--resume" in capsys.readouterr().err
    assert main([*args[: -len(_data(text_file))], *_data(text_file), "--resume", "--trials", "4"]) == 0
    evaluated, stopped = map(
        int, re.search(r"(\d+) plans evaluated, (\d+) stopped", capsys.readouterr().out).groups()
    )
    assert evaluated + stopped == 4
    curves = [r["curve"] for r in json.loads((out / "search.json").read_text())["records"] if r["curve"]]
    assert len(curves) == 4 and all([s for s, _ in c] in ([0], [0, 1]) for c in curves)


def test_search_errors_are_one_line(model_dir, text_file, tmp_path, capsys):
    base = [
        "search",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "s"),
        "--trials",
        "2",
        *_data(text_file),
    ]
    assert main([*base, "--memory-budget", "1KiB", "--method", "random"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "below the cheapest plan" in err
    assert main([*base, "--memory-budget", "lots"]) == 1
    assert "cannot read memory size" in capsys.readouterr().err
    assert main([*base, "--memory-budget", "1GiB", "--storage", "study.db"]) == 1
    assert "unsupported storage URL" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 1
    assert "no search found" in capsys.readouterr().err


def test_run_with_a_memory_budget_searches_then_recovers(model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "r"
    args = [
        "run",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--ratio",
        "0.5",
        "--calib-data",
        str(text_file),
    ]
    args += ["--steps", "2", "--batch-size", "2", "--micro-batch", "2", "--cutoff-len", "32"]
    args += ["--eval-max-tokens", "300", "--memory-budget", "64MiB", "--method", "automixq"]
    args += ["--search-bits", "4,8", "--trials", "2", "--trial-steps", "1", "--no-multi-fidelity"]
    args += _data(text_file)
    assert main(args) == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert list(run["stages"]) == ["dense", "prune", "search", "recover"]
    searched = Plan.load(out / "search" / "plan.json")
    records = json.loads((out / "search" / "search.json").read_text())["records"]
    assert [r["curve"] for r in records] == [[], []]  # scored once each
    recovered = Plan.load(out / "recovered" / "plan.json")
    assert [lp.weight_format for lp in recovered.layers] == [lp.weight_format for lp in searched.layers]
    assert [lp.lora_rank for lp in recovered.layers] == [lp.lora_rank for lp in searched.layers]
    assert main(["report", str(out)]) == 0 and (out / "search" / "report.html").is_file()
