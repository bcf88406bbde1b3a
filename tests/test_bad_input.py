"""Every bad input is one line on stderr and a non-zero exit, found before the work starts,
with nothing written or moved: one table of inputs x commands (issue 16). New commands add
their rows here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import make_model, make_text, make_tokenizer

from qpruner.cli import main
from qpruner.device import fast_bf16
from qpruner.plan import Plan


@dataclass(frozen=True)
class Env:
    """Inputs good and bad, made once; every case runs in its own empty working directory."""

    root: Path
    text: Path

    def __getattr__(self, name: str) -> Path:
        return self.root / name


def _dir_with_pickle_weights(path: Path) -> Path:
    make_model("gqa", layers=2).save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(make_model("gqa", layers=2).state_dict(), path / "pytorch_model.bin")
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_dir, text_file) -> Env:
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(model_dir, root / "model")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(root / "gpt2")
    make_tokenizer().save_pretrained(root / "gpt2")
    shutil.copytree(model_dir, root / "corrupt")
    blob = (root / "corrupt" / "model.safetensors").read_bytes()
    (root / "corrupt" / "model.safetensors").write_bytes(blob[:100])
    _dir_with_pickle_weights(root / "pickled")
    recovered = root / "recovered"  # a recovered directory whose adapter is a pickle
    (recovered / "adapter").mkdir(parents=True)
    (recovered / "recovery.json").write_text(json.dumps({"base_model": str(root / "model")}))
    Plan.uniform(6, "nf4", rank=4, dtype="fp32").save(recovered / "plan.json")
    (recovered / "adapter" / "adapter_config.json").write_text("{}")
    (recovered / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04 not a real pickle")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 64)
    (root / "binary.txt").write_bytes(b"plain start\x00\x00\x00 then zeros")
    (root / "empty.txt").write_text("")
    (root / "malformed.json").write_text("{not json")
    Plan.uniform(7, "nf4", rank=4, dtype="fp32").save(root / "plan7.json")
    (root / "text.txt").write_text(make_text(50))
    (root / "existing").mkdir()
    (root / "existing" / "keep.txt").write_text("earlier results")
    return Env(root, root / "text.txt")


def _search(e: Env, *extra, model: Path | None = None, out: str | Path = "s") -> list:
    return ["search", "--model", model or e.model, "--out", out, "--train-data", e.text,
            "--eval-data", e.text,
            "--trials", "2", "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def _finetune(
    e: Env, *extra, model: Path | None = None, data: Path | None = None, out: str | Path = "f"
) -> list:
    return ["finetune", "--model", model or e.model, "--data", data or e.text, "--out", out, "--steps", "1",
            "--batch-size", "2", "--micro-batch", "2", "--cutoff-len", "16", "--no-progress",
            "--device", "cpu", *extra]  # fmt: skip


def _prune(model: Path, *extra, out: str | Path = "p") -> list:
    return ["prune", "--model", model, "--out", out, "--importance", "l1", "--no-progress", *extra]


def _eval(model: Path, *extra) -> list:
    return ["eval", "--model", model, "--no-progress", *extra]


BUDGET = ("--memory-budget", "1GiB")

# (id, argv built from the inputs, words the one line must hold, exit code)
CASES: list[tuple[str, Callable[[Env], list], str, int]] = [
    # ---- the table: these printed a traceback, left a directory, or trained on bytes
    ("prune-corrupt-safetensors", lambda e: _prune(e.corrupt), "corrupt safetensors", 1),
    ("eval-corrupt-safetensors", lambda e: _eval(e.corrupt), "corrupt safetensors", 1),
    ("prune-pickle-only", lambda e: _prune(e.pickled), "only pickle weights (pytorch_model.bin)", 1),
    ("eval-pickle-only", lambda e: _eval(e.pickled), "only pickle weights (pytorch_model.bin)", 1),
    (
        "finetune-pickle-only",
        lambda e: _finetune(e, model=e.pickled),
        "only pickle weights (pytorch_model.bin)",
        1,
    ),
    (
        "eval-recovered-pickle-adapter",
        lambda e: _eval(e.recovered),
        "only pickle weights (adapter_model.bin)",
        1,
    ),
    (
        "search-pickle-only",
        lambda e: _search(e, *BUDGET, model=e.pickled),
        "only pickle weights (pytorch_model.bin)",
        1,
    ),
    (  # opted in: the pickle check passes and the search gets as far as its budget
        "search-allow-pickle",
        lambda e: _search(e, "--memory-budget", "1KiB", "--allow-pickle", model=e.pickled),
        "below the cheapest",
        1,
    ),
    ("plan-gpt2", lambda e: ["plan", "--model", e.gpt2], "unsupported architecture 'gpt2'", 1),
    ("finetune-gpt2", lambda e: _finetune(e, model=e.gpt2), "unsupported architecture 'gpt2'", 1),
    ("search-gpt2", lambda e: _search(e, *BUDGET, model=e.gpt2), "unsupported architecture 'gpt2'", 1),
    ("prune-out-cwd", lambda e: _prune(e.model, "--overwrite", out="."), "working directory", 1),
    ("prune-out-parent", lambda e: _prune(e.model, "--overwrite", out=".."), "working directory", 1),
    (
        "prune-out-is-model",
        lambda e: _prune(e.model, "--overwrite", out=e.model),
        "is or contains the input",
        1,
    ),
    (
        "finetune-out-holds-data",
        lambda e: _finetune(e, "--overwrite", out=e.root),
        "is or contains the input",
        1,
    ),
    ("finetune-binary-data", lambda e: _finetune(e, data=e.root / "binary.bin"), "not UTF-8 text", 1),
    ("finetune-nul-data", lambda e: _finetune(e, data=e.root / "binary.txt"), "NUL bytes", 1),
    (
        "search-budget-below-cheapest",
        lambda e: _search(e, "--memory-budget", "1KiB"),
        "below the cheapest",
        1,
    ),
    ("search-zero-trials", lambda e: _search(e, *BUDGET, "--trials", "0"), "--trials", 1),
    (
        "search-bad-storage-url",
        lambda e: _search(e, *BUDGET, "--storage", "study.db"),
        "unsupported storage",
        1,
    ),
    (
        "search-unreachable-storage",
        lambda e: _search(e, *BUDGET, "--storage", "postgresql://u@127.0.0.1:1/db"),
        "cannot open storage",
        1,
    ),  # fmt: skip
    (
        "search-missing-driver",
        lambda e: _search(e, *BUDGET, "--storage", "mysql://u@h/db"),
        "driver missing",
        1,
    ),
    ("eval-json-is-a-directory", lambda e: _eval(e.model, "--json", e.existing), "is a directory", 1),
    # ---- cases that already worked, and stay so
    ("prune-ratio-above-1", lambda e: _prune(e.model, "--ratio", "1.5"), "must be in [0, 1)", 1),
    ("prune-ratio-negative", lambda e: _prune(e.model, "--ratio", "-0.2"), "must be in [0, 1)", 1),
    (
        "prune-ratio-empties-a-layer",
        lambda e: _prune(e.model, "--ratio", "0.9", "--layer-start", "0"),
        "would remove every head",
        1,
    ),  # fmt: skip
    ("prune-ratio-not-a-number", lambda e: _prune(e.model, "--ratio", "lots"), "invalid float value", 2),
    ("prune-gpt2", lambda e: _prune(e.gpt2), "unsupported architecture 'gpt2'", 1),
    ("prune-missing-model", lambda e: _prune(e.root / "nope"), "not found", 1),
    (
        "prune-taylor-without-calib",
        lambda e: _prune(e.model, "--importance", "taylor"),
        "needs calibration",
        1,
    ),
    ("prune-missing-calib", lambda e: _prune(e.model, "--calib-data", e.root / "nope.txt"), "not found", 1),
    ("prune-out-exists", lambda e: _prune(e.model, out=e.existing), "--overwrite", 1),
    ("eval-missing-model", lambda e: _eval(e.root / "nope"), "not found", 1),
    ("eval-binary-ppl", lambda e: _eval(e.model, "--ppl", e.root / "binary.bin"), "not UTF-8", 1),
    ("eval-unknown-task", lambda e: _eval(e.model, "--tasks", "nope_task"), "nope_task", 1),
    (
        "plan-malformed",
        lambda e: ["plan", "--model", e.model, "--plan", e.root / "malformed.json"],
        "not valid JSON",
        1,
    ),  # fmt: skip
    (
        "plan-mismatched",
        lambda e: ["plan", "--model", e.model, "--plan", e.root / "plan7.json"],
        "plan has 7 layers but the model has 6",
        1,
    ),  # fmt: skip
    (
        "finetune-mismatched-plan",
        lambda e: _finetune(e, "--plan", e.root / "plan7.json"),
        "plan has 7 layers",
        1,
    ),
    ("finetune-empty-data", lambda e: _finetune(e, data=e.root / "empty.txt"), "no training examples", 1),
    ("finetune-bad-bits", lambda e: _finetune(e, "--bits", "5"), "no format for 5-bit", 1),
    (
        "run-gpt2",
        lambda e: [
            "run",
            "--model",
            e.gpt2,
            "--out",
            "r",
            "--train-data",
            e.text,
            "--eval-data",
            e.text,
            "--importance",
            "l1",
        ],
        "unsupported architecture 'gpt2'",
        1,
    ),  # fmt: skip
    ("run-out-cwd", lambda e: ["run", "--model", e.model, "--out", ".", "--resume"], "working directory", 1),
    ("search-bad-budget", lambda e: _search(e, "--memory-budget", "lots"), "cannot read memory size", 1),
    (
        "search-bad-reference-budget",
        lambda e: _search(e, "--memory-budget", "uniform:5"),
        "no format for 5-bit weights",
        1,
    ),
    ("report-nothing", lambda e: ["report", e.root / "nowhere"], "no search found", 1),
    ("import-missing-gguf", lambda e: ["import", e.root / "nope.gguf", "--out", "g"], "not found", 1),
    ("reference-missing-corpus", lambda e: ["reference", "--corpus-dir", e.root / "nowhere"], "not found", 1),
    ("no-command", lambda e: [], "required", 2),
]


def _tree(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


@pytest.mark.parametrize("case,argv,words,code", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(case, argv, words, code, env, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("QPRUNER_CACHE", str(tmp_path / "cache"))
    # The machine's bf16 timing is kept in the cache by the first pricing of this process: a fact
    # about the CPU, not an output of the command, so it is settled before the snapshot.
    fast_bf16("cpu")
    before = _tree(env.root, tmp_path)
    with pytest.raises(SystemExit) if code == 2 else _nothing() as raised:
        rc = main([str(a) for a in argv(env)])
    if code == 2:
        rc = raised.value.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert err.count("\n") == 1 and err.startswith("qpruner: error:"), err
    assert words in err
    assert _tree(env.root, tmp_path) == before  # no output, no temporary file, nothing moved


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _without_dac_override() -> list[str]:
    """A command prefix under which a read-only directory refuses writes, even for root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only directory cannot refuse a write")
    return [setpriv, "--inh-caps=-dac_override", "--bounding-set=-dac_override"]


READ_ONLY_CASES = {
    "prune": lambda e, ro: _prune(e.model, out=ro / "p"),
    "finetune": lambda e, ro: _finetune(e, out=ro / "f"),
    "search": lambda e, ro: _search(e, *BUDGET, out=ro / "s"),
    "plan": lambda e, ro: ["plan", "--model", e.model, "--out", ro / "plan.json"],
    "eval-json": lambda e, ro: _eval(e.model, "--ppl", e.text, "--json", ro / "r.json"),
}


@pytest.mark.parametrize("command", list(READ_ONLY_CASES))
def test_read_only_output_is_refused_before_the_work(command, env, tmp_path):
    prefix = _without_dac_override()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if subprocess.run([*prefix, "touch", str(ro / "x")], capture_output=True).returncode == 0:
            pytest.skip("this machine lets the test write into a read-only directory")
        argv = [str(a) for a in READ_ONLY_CASES[command](env, ro)]
        before = _tree(env.root, tmp_path)
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "qpruner.cli", *argv],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("qpruner: error: cannot write in")
        assert str(ro) in proc.stderr
        assert _tree(env.root, tmp_path) == before
    finally:
        ro.chmod(0o755)


def test_resume_falls_back_to_the_previous_checkpoint(env, tmp_path, capsys):
    """The one input that is repaired rather than refused: a corrupted last checkpoint. Two are
    kept; the older one is used, saying so, and the result equals an uninterrupted run."""
    from safetensors.torch import load_file

    out = tmp_path / "f"
    argv = [str(a) for a in _finetune(env, "--steps", "4", "--save-every", "2", "--no-export", out=out)]
    assert main(argv) == 0, capsys.readouterr().err
    straight = load_file(out / "adapter" / "adapter_model.safetensors")
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000002", "step-0000004"]
    (ckpts / "step-0000004" / "adapter.safetensors").write_bytes(b"garbage")
    capsys.readouterr()

    assert main([*argv, "--resume"]) == 0
    shown = capsys.readouterr()
    assert "resuming from the previous checkpoint, step-0000002" in shown.err
    assert "resumed from step 2" in shown.out
    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (ckpts / "corrupt-step-0000004").is_dir()  # kept aside for a look, never used again

    for step in ("step-0000002", "step-0000004"):
        blob = (ckpts / step / "optimizer.safetensors").read_bytes()
        (ckpts / step / "optimizer.safetensors").write_bytes(blob[: len(blob) // 2])
    before = _tree(tmp_path)
    assert main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qpruner: error: no readable checkpoint"), err
    assert _tree(tmp_path) == before
