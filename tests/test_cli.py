import json
import subprocess
import sys

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


def test_prune_then_eval_end_to_end(model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
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
    model = qpruner.load_pruned(out)
    assert [s.num_key_value_heads for s in layer_shapes(model)] == [2, 1, 1, 1, 1, 2]
    record = json.loads((out / "pruning.json").read_text())
    assert record["params_after"] == sum(p.numel() for p in model.parameters())
    # the saved model equals the original with the removed structures zeroed
    original = qpruner.load_model(model_dir)
    pr = qpruner.PruneResult(**{**record, "layers": []})
    from qpruner.architecture import LayerShape
    from qpruner.prune.pruner import LayerPruning

    pr.layers = [
        LayerPruning(**{**lp, "before": LayerShape(**lp["before"]), "after": LayerShape(**lp["after"])})
        for lp in record["layers"]
    ]
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model(x).logits, mask_like(original, pr)(x).logits, atol=1e-5)

    report = tmp_path / "r.json"
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
