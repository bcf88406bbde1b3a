import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, make_model, make_tokenizer, mask_like

import qpruner
from qpruner.architecture import layer_shapes
from qpruner.cli import main


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _prune_by_taylor(
    capsys: pytest.CaptureFixture[str], model_dir: Path, text_file: Path, *, out: Path
) -> None:
    """Prune layers 1-4 of ``model_dir`` at ratio 0.5 by Taylor scores through the CLI, as a user
    would, so that the checks after it test what a user gets."""
    rc, stdout, err = run(
        capsys,
        "prune",
        "--model",
        model_dir,
        "--ratio",
        "0.5",
        "--importance",
        "taylor",
        "--calib-data",
        text_file,
        "--seq-len",
        "32",
        "--layer-start",
        "1",
        "--layer-end",
        "5",
        "--out",
        out,
        "--no-progress",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    assert "params:" in stdout and "saved to" in stdout


def _check_pruned_equals_masked_original(out: Path, model_dir: Path) -> dict:
    """Slicing must only remove: the saved model computes what the original does with the removed
    structures zeroed. Returns the pruning record, which the evaluation is checked against."""
    from qpruner.architecture import LayerShape
    from qpruner.prune.pruner import LayerPruning

    model = qpruner.load_pruned(out)
    assert [s.num_key_value_heads for s in layer_shapes(model)] == [2, 1, 1, 1, 1, 2]
    record = json.loads((out / "pruning.json").read_text())
    assert record["params_after"] == sum(p.numel() for p in model.parameters())
    # the saved model equals the original with the removed structures zeroed
    original = qpruner.load_model(model_dir)
    pr = qpruner.PruneResult(**{**record, "layers": []})
    pr.layers = [
        LayerPruning(**{**lp, "before": LayerShape(**lp["before"]), "after": LayerShape(**lp["after"])})
        for lp in record["layers"]
    ]
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model(x).logits, mask_like(original, pr)(x).logits, atol=1e-5)
    return record


def _check_eval_of_pruned(
    capsys: pytest.CaptureFixture[str], out: Path, text_file: Path, *, record: dict, report: Path
) -> None:
    """``eval`` must load the pruned checkpoint and size it as ``prune`` recorded it."""
    rc, stdout, err = run(
        capsys,
        "eval",
        "--model",
        out,
        "--ppl",
        text_file,
        "--ctx-len",
        "32",
        "--no-progress",
        "--json",
        report,
    )
    assert rc == 0, err
    assert "perplexity" in stdout and "ctx 32" in stdout
    data = json.loads(report.read_text())
    ppl = data["ppl"][str(text_file)]["ppl"]
    assert 1 < ppl < 10 * VOCAB
    assert data["size"]["params"] == record["params_after"]
    assert data["size"]["weight_bytes"] == 4 * record["params_after"]  # fp32, untied


def test_prune_then_eval_end_to_end(model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    _prune_by_taylor(capsys, model_dir, text_file, out=out)
    record = _check_pruned_equals_masked_original(out, model_dir)
    _check_eval_of_pruned(capsys, out, text_file, record=record, report=tmp_path / "r.json")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ratio", "1.5"], "must be in [0, 1)"),
        (["--ratio", "-0.2"], "must be in [0, 1)"),
        (["--ratio", "0.9", "--layer-start", "0"], "would remove every head"),
        (["--importance", "taylor"], "needs calibration text"),
    ],
)
def test_bad_prune_input_gives_one_line_error(model_dir, tmp_path, capsys, args, message):
    rc, _, err = run(
        capsys,
        "prune",
        "--model",
        model_dir,
        "--out",
        tmp_path / "o",
        "--importance",
        "l1",
        "--no-progress",
        *args,
    )
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("qpruner: error:") and message in err
    assert not (tmp_path / "o").exists()


def test_missing_model_and_unsupported_architecture(tmp_path, capsys):
    rc, _, err = run(
        capsys, "prune", "--model", tmp_path / "nope", "--out", tmp_path / "o", "--importance", "l1"
    )
    assert rc == 1 and "not found" in err and err.count("\n") == 1
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(
        tmp_path / "gpt2"
    )
    make_tokenizer().save_pretrained(tmp_path / "gpt2")
    rc, _, err = run(
        capsys, "prune", "--model", tmp_path / "gpt2", "--out", tmp_path / "o", "--importance", "l1"
    )
    assert rc == 1 and "unsupported architecture 'gpt2'" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "eval", "--model", tmp_path / "nope")
    assert rc == 1 and "not found" in err


def test_existing_output_is_not_clobbered(model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    args = [
        "prune",
        "--model",
        model_dir,
        "--out",
        out,
        "--importance",
        "l2",
        "--layer-start",
        "1",
        "--no-progress",
    ]
    rc, _, err = run(capsys, *args)
    assert rc == 1 and "--overwrite" in err and (out / "precious.txt").read_text() == "keep me"
    rc, _, err = run(capsys, *args, "--overwrite")
    assert rc == 0, err
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").is_file()


def test_console_script_exit_code(tmp_path):
    """The installed entry point exits non-zero with one line on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "qpruner.cli", "eval", "--model", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr


def test_qwen2_and_mistral_prune_via_api(tmp_path):
    for kind in ("qwen2", "mistral"):
        model = make_model(kind)
        res = qpruner.prune_model(
            model, qpruner.PruneConfig(ratio=0.5, layer_start=0, layer_end=4, importance="l1"), progress=False
        )
        assert res.params_after < res.params_before
        qpruner.save_pruned(model, tmp_path / kind)
        assert layer_shapes(qpruner.load_pruned(tmp_path / kind)) == layer_shapes(model)


def test_reference_without_corpus_is_a_one_line_error(tmp_path, capsys):
    rc, _, err = run(capsys, "reference", "--corpus-dir", tmp_path / "nowhere", "--cache-dir", tmp_path)
    assert rc == 1 and err.count("\n") == 1 and "not found" in err


CONFIGS = [
    "qpruner.prune.config:PruneConfig",
    "qpruner.lora.train:TrainConfig",
    "qpruner.eval.evaluate:EvalConfig",
    "qpruner.pipeline:RunConfig",
    "qpruner.plan_sources:PlanSource",
]


@pytest.mark.parametrize("target", CONFIGS)
def test_flags_read_from_source_equal_the_dataclass(target):
    """The flags are read from the config's source (no torch at --help): they must say what the
    imported dataclass says, field by field."""
    import dataclasses
    import importlib

    from qpruner.cli.flags import read_config

    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    spec = read_config(target)
    assert list(spec) == [f.name for f in dataclasses.fields(cls)]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            assert spec[f.name].default == f.default, f.name
        elif f.default_factory in (list, dict):
            assert spec[f.name].default == f.default_factory(), f.name
        assert spec[f.name].help == f.metadata.get("help", ""), f.name


def test_parser_imports_no_torch_and_help_shows_defaults():
    code = (
        "import sys; from qpruner.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'optuna') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stderr
    for command in ("prune", "eval", "plan", "finetune", "run", "reference", "search", "report", "import"):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "qpruner.cli", command, "--help"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0 and "usage: qpruner" in proc.stdout
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
        assert not imported & {"torch", "transformers", "peft", "optuna"}, command
    help_text = subprocess.run(
        [sys.executable, "-m", "qpruner.cli", "prune", "--help"], capture_output=True, text=True
    ).stdout
    assert "(default: 0.2)" in help_text and "(default: taylor)" in help_text


def test_each_config_gets_only_its_own_flags():
    """``run`` holds three configs; each is built from its own flags only, with RunConfig's defaults."""
    from qpruner.cli import build_parser
    from qpruner.cli.flags import config_from_args
    from qpruner.cli.run import recovery_config
    from qpruner.eval.evaluate import EvalConfig
    from qpruner.pipeline import RunConfig
    from qpruner.prune.config import PruneConfig

    args = build_parser().parse_args(["run", "--out", "r", "--micro-batch", "2", "--eval-max-tokens", "5"])
    assert config_from_args(PruneConfig, args).micro_batch == PruneConfig().micro_batch
    train, default = recovery_config(args, "cpu"), RunConfig().train
    assert (train.micro_batch, train.steps, train.batch_size) == (2, default.steps, default.batch_size)
    gpu = recovery_config(args, "cuda")  # alpaca-lora's recipe, with the flag given
    assert (gpu.micro_batch, gpu.steps, gpu.epochs, gpu.batch_size, gpu.lr) == (2, None, 2.0, 128, 1e-4)
    assert config_from_args(EvalConfig, args).max_tokens == 5
    args = build_parser().parse_args(["run", "--out", "r"])
    assert recovery_config(args, "cpu") == RunConfig().train  # the CLI and the API recover alike
    assert config_from_args(EvalConfig, args).max_tokens == RunConfig().eval.max_tokens


def test_flag_names_mean_one_thing_across_commands():
    """A flag name takes the same kind of value in every command that has it."""
    from qpruner.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    seen: dict[str, tuple] = {}
    clashes = []
    for command, parser in sub.choices.items():
        for action in parser._actions:
            for option in action.option_strings:
                kind = (getattr(action.type or str, "__name__", None), type(action).__name__, action.dest)
                if seen.setdefault(option, (command, kind))[1] != kind:
                    clashes.append((option, seen[option][0], command))
    assert clashes == []


def test_search_bits_flags():
    """``--bits N`` is one width in ``search`` as everywhere (the width not searched); the list
    of searched widths is ``--search-bits``; ``--fixed-bits`` still reads as ``--bits``."""
    from qpruner.cli import build_parser
    from qpruner.cli.search import search_config

    base = ["search", "--model", "m", "--out", "o", "--train-data", "t", "--memory-budget", "1GiB"]
    cfg = search_config(build_parser().parse_args([*base, "--bits", "8", "--search-bits", "2,4"]))
    assert (cfg.fixed_bits, cfg.bits) == (8, (2, 4))
    assert search_config(build_parser().parse_args([*base, "--fixed-bits", "8"])).fixed_bits == 8
    assert search_config(build_parser().parse_args(base)).fixed_bits == 4
    with pytest.raises(SystemExit):  # a list is --search-bits' now
        build_parser().parse_args([*base, "--bits", "4,8"])


def test_one_place_turns_failures_into_one_line(model_dir, monkeypatch, capsys):
    import qpruner.cli.eval as eval_cmd
    from qpruner.errors import QPrunerError

    def fails(exc):
        def run(args):
            raise exc

        return run

    argv = ["eval", "--model", str(model_dir)]
    monkeypatch.setattr(eval_cmd, "run", fails(QPrunerError("bad\ninput")))
    assert main(argv) == 1 and capsys.readouterr().err == "qpruner: error: bad input\n"
    monkeypatch.setattr(eval_cmd, "run", fails(PermissionError(13, "Permission denied", "/x")))
    assert main(argv) == 1 and capsys.readouterr().err == "qpruner: error: Permission denied: /x\n"
    monkeypatch.setattr(eval_cmd, "run", fails(FileNotFoundError(2, "No such file", str(model_dir / "x"))))
    assert main(argv) == 1  # under a path the user named
    monkeypatch.setattr(eval_cmd, "run", fails(FileNotFoundError(2, "No such file", "/qpruner/internal")))
    with pytest.raises(FileNotFoundError):  # elsewhere: a bug, with its traceback
        main(argv)
    monkeypatch.setattr(eval_cmd, "run", fails(KeyError("bug")))
    with pytest.raises(KeyError):
        main(argv)
    monkeypatch.setenv("QPRUNER_DEBUG", "1")
    monkeypatch.setattr(eval_cmd, "run", fails(QPrunerError("ours")))
    with pytest.raises(QPrunerError):
        main(argv)


def test_library_noise_is_silenced():
    """peft's FutureWarning about transformers' ``is_gradient_checkpointing`` and bitsandbytes'
    int8 cast and missing-kernels lines say nothing a user can act on: none reaches stderr."""
    code = (
        "import sys, torch; sys.path.insert(0, 'tests'); from conftest import make_model\n"
        "from qpruner.lora.apply import apply_plan; from qpruner.plan import Plan\n"
        "m = apply_plan(make_model('gqa', layers=2), Plan.uniform(2, 'int8', rank=4, dtype='fp32'))\n"
        "m(torch.randint(0, 10, (1, 5))); print('ran')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "ran", proc.stderr
    for noise in ("is_gradient_checkpointing", "MatMul8bitLt", "gemm_4bit_forward", "FutureWarning"):
        assert noise not in proc.stderr


def test_allow_pickle_is_an_explicit_opt_in(tmp_path, capsys):
    from test_checkpoint import save_pickle_only

    save_pickle_only(make_model("gqa", layers=2), tmp_path / "m")
    make_tokenizer().save_pretrained(tmp_path / "m")
    rc, _, err = run(capsys, "eval", "--model", tmp_path / "m", "--no-progress")
    assert rc == 1 and "only pickle weights (pytorch_model.bin)" in err and "--allow-pickle" in err
    rc, out, err = run(capsys, "eval", "--model", tmp_path / "m", "--no-progress", "--allow-pickle")
    assert rc == 0, err
    assert "params:" in out


def test_reference_build_is_announced_before_it_starts(tmp_path, capsys):
    from qpruner.cli.reference import announce_build
    from qpruner.reference import TEST_FILE, TRAIN_FILE, ReferenceConfig, cache_key

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / TRAIN_FILE).write_text("some training text")
    (corpus / TEST_FILE).write_text("some test text")
    announce_build(corpus_dir=str(corpus), cache_dir=str(tmp_path / "cache"))
    assert "training the reference model" in capsys.readouterr().err
    entry = tmp_path / "cache" / "reference" / cache_key(ReferenceConfig(), corpus)
    entry.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "reference.json"):
        (entry / name).write_text("{}")
    announce_build(corpus_dir=str(corpus), cache_dir=str(tmp_path / "cache"))
    assert capsys.readouterr().err == ""
