"""The reference-model builder, on a tiny model and a toy corpus (seconds, no shared data)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qpruner.errors import QPrunerError
from qpruner.reference import ReferenceConfig, build_reference, cache_key, resolve_corpus
from qpruner.reference.corpus import describe_corpus, pydoc_texts

SUBJECTS = ["the cat", "a dog", "the old farmer", "my sister", "the small bird", "a tired soldier"]
VERBS = ["sees", "likes", "follows", "finds", "watches", "paints"]
OBJECTS = ["the river", "a red ball", "the green house", "an apple", "the tall tree", "the <unk> ship"]

TINY = ReferenceConfig(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    seq_len=32,
    batch_size=8,
    steps=40,
    lr=1e-2,
    warmup_steps=5,
)


def _sentences(rng: random.Random, n: int) -> str:
    return "".join(
        f" {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} . \n" for _ in range(n)
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wikitext-2")
    rng = random.Random(0)
    (d / "valid.txt").write_text(_sentences(rng, 300))  # ~9 KB
    (d / "test.txt").write_text(_sentences(rng, 80))
    return d


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return build_reference(TINY, corpus_dir=corpus, cache_dir=cache, progress=False), cache


def test_saved_dir_loads_with_auto_classes(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res, cache = built
    assert res.path.parent == cache / "reference"
    assert {"config.json", "model.safetensors", "tokenizer.json", "reference.json"} <= {
        p.name for p in res.path.iterdir()
    }
    assert not list(res.path.rglob("*.bin")) and not list(res.path.rglob("*.pt"))  # no pickles
    model = AutoModelForCausalLM.from_pretrained(res.path)
    tok = AutoTokenizer.from_pretrained(res.path)
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    assert model.model.layers[0].self_attn.k_proj.out_features == 2 * (32 // 4)
    assert sum(p.numel() for p in model.parameters()) == res.params
    assert len(tok) == model.config.vocab_size == res.vocab_size
    assert {tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token} == {
        "<|bos|>",
        "<|eos|>",
        "<|unk|>",
        "<|pad|>",
    }
    text = " the cat follows the <unk> ship . \n"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text  # exact, readable round trip
    assert len(ids) < len(text) / 2  # BPE merged whole words


def test_beats_unigram_baseline(built):
    res, _ = built
    assert not res.cached
    assert res.test_ppl < 0.5 * res.unigram_ppl
    metrics = json.loads((res.path / "reference.json").read_text())
    assert metrics["result"]["test_ppl"] == pytest.approx(res.test_ppl)
    assert metrics["config"]["num_key_value_heads"] == 2


def test_second_call_hits_cache(built, corpus):
    res, cache = built
    mtime = (res.path / "model.safetensors").stat().st_mtime_ns
    again = build_reference(TINY, corpus_dir=corpus, cache_dir=cache, progress=False)
    assert again.cached
    assert again.path == res.path
    assert again.test_ppl == res.test_ppl and again.train_seconds == res.train_seconds
    assert (res.path / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in res.path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_deterministic_rebuild(built, corpus, tmp_path):
    res, _ = built
    rng_before = torch.get_rng_state()
    other = build_reference(TINY, corpus_dir=corpus, cache_dir=tmp_path, force=True, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert not other.cached
    a = load_file(res.path / "model.safetensors")
    b = load_file(other.path / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (res.path / "tokenizer.json").read_text() == (other.path / "tokenizer.json").read_text()
    assert other.test_ppl == res.test_ppl


def test_force_replaces_entry(corpus, tmp_path):
    cfg = ReferenceConfig(**{**TINY.__dict__, "steps": 5})
    first = build_reference(cfg, corpus_dir=corpus, cache_dir=tmp_path, progress=False)
    second = build_reference(cfg, corpus_dir=corpus, cache_dir=tmp_path, force=True, progress=False)
    assert not second.cached and second.path == first.path
    assert [p.name for p in (tmp_path / "reference").iterdir()] == [first.path.name]


def test_cache_key_tracks_config_and_corpus(corpus, tmp_path):
    key = cache_key(TINY, corpus)
    assert key == cache_key(ReferenceConfig(**TINY.__dict__), corpus)
    assert key != cache_key(ReferenceConfig(**{**TINY.__dict__, "seed": 1}), corpus)
    changed = tmp_path / "wikitext-2"
    changed.mkdir()
    (changed / "valid.txt").write_text((corpus / "valid.txt").read_text() + " one more line .\n")
    (changed / "test.txt").write_text((corpus / "test.txt").read_text())
    assert cache_key(TINY, changed) != key


def test_missing_corpus_is_a_user_error(tmp_path, monkeypatch):
    """An explicit corpus folder that is not there is an error, never silently replaced."""
    with pytest.raises(QPrunerError, match="not found"):
        build_reference(TINY, corpus_dir=tmp_path / "nowhere", cache_dir=tmp_path, progress=False)
    monkeypatch.setenv("QPRUNER_DATA", str(tmp_path / "data"))
    with pytest.raises(QPrunerError, match=str(tmp_path / "data" / "wikitext-2")):
        resolve_corpus(fallback=False)


def test_pydoc_fallback_without_wikitext(corpus, tmp_path, monkeypatch):
    """A fresh clone (no shared data) trains on Python's help texts, and says so."""
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("QPRUNER_DATA", str(empty))
    cache = tmp_path / "cache"
    found = resolve_corpus(cache_dir=cache)
    assert found.parent == cache / "corpus" and found.name.startswith("pydoc_data-")
    assert describe_corpus(found).startswith("pydoc_data (Python ")
    train, test = (found / "valid.txt").read_text(), (found / "test.txt").read_text()
    assert len(train.split()) > 30_000 and len(test.split()) > 7_000  # ~43k and ~10k words (3.11)
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.25
    paragraphs = {p.strip() for p in train.split("\n\n")}
    assert not [p for p in test.split("\n\n") if p.strip() in paragraphs]  # held out
    # Deterministic: resolving again rewrites nothing and gives the same bytes.
    mtime = (found / "valid.txt").stat().st_mtime_ns
    assert resolve_corpus(cache_dir=cache) == found
    assert (found / "valid.txt").stat().st_mtime_ns == mtime
    assert pydoc_texts()[:2] == (train, test)
    assert cache_key(TINY, found) != cache_key(TINY, corpus)


def test_reference_records_the_fallback_corpus(tmp_path, monkeypatch):
    import qpruner.reference.corpus as pydoc_corpus

    full = pydoc_corpus.pydoc_texts

    def shortened():  # the plumbing, not the size: a full-corpus evaluation takes ~20 s here
        train, test, info = full()
        return train[:12_000], test[:3_000], info

    monkeypatch.setattr(pydoc_corpus, "pydoc_texts", shortened)
    monkeypatch.setenv("QPRUNER_DATA", str(tmp_path / "absent"))
    cfg = ReferenceConfig(**{**TINY.__dict__, "steps": 2})
    res = build_reference(cfg, cache_dir=tmp_path, progress=False)
    assert res.corpus_name.startswith("pydoc_data") and res.corpus == str(resolve_corpus(cache_dir=tmp_path))
    assert res.train_tokens > 1_000 and res.test_tokens > 200
    stored = json.loads((res.path / "reference.json").read_text())["result"]
    assert stored["corpus_name"] == res.corpus_name
    assert build_reference(cfg, cache_dir=tmp_path, progress=False).corpus_name == res.corpus_name


def test_corpus_found_walking_up_from_cwd(corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("QPRUNER_DATA", raising=False)
    data = tmp_path / "shared" / "data" / "wikitext-2"
    data.mkdir(parents=True)
    for name in ("valid.txt", "test.txt"):
        (data / name).write_text((corpus / name).read_text())
    work = tmp_path / "main" / "src"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert resolve_corpus() == data


def test_bad_config_is_a_user_error():
    with pytest.raises(QPrunerError):
        ReferenceConfig(num_attention_heads=8, num_key_value_heads=3)
    with pytest.raises(QPrunerError):
        ReferenceConfig(seq_len=512, max_position_embeddings=256)


def test_corpus_found_beside_the_package_from_any_cwd(corpus, tmp_path, monkeypatch):
    """`qpruner reference` run from outside the checkout still finds ../shared of the checkout."""
    import qpruner.data_sources as data_sources

    monkeypatch.delenv("QPRUNER_DATA", raising=False)
    data = tmp_path / "checkout-parent" / "shared" / "data" / "wikitext-2"
    data.mkdir(parents=True)
    for name in ("valid.txt", "test.txt"):
        (data / name).write_text((corpus / name).read_text())
    package = tmp_path / "checkout-parent" / "main" / "src" / "qpruner"
    package.mkdir(parents=True)
    monkeypatch.setattr(data_sources, "__file__", str(package / "data_sources.py"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_corpus() == data
