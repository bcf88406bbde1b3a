"""Slow: the real reference model (trained once, then cached) and Taylor vs random on it.

Needs ../shared/data/wikitext-2; skipped with that reason where it is absent. Run with
``python -m pytest -m slow`` (the first run trains the model, ~12 min on 2 cores).
"""

import copy

import pytest

from qpruner import calibration_samples, load_model, load_tokenizer, prune_model
from qpruner.data_sources import load_tokens
from qpruner.errors import QPrunerError
from qpruner.eval.perplexity import perplexity
from qpruner.prune import PruneConfig
from qpruner.reference import TEST_FILE, TRAIN_FILE, build_reference, resolve_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus():
    try:
        return resolve_corpus(fallback=False)
    except QPrunerError as exc:
        pytest.skip(f"shared data absent: {exc}")


def test_reference_beats_unigram_and_taylor_beats_random(corpus):
    ref = build_reference(progress=False)
    assert ref.test_ppl < 0.5 * ref.unigram_ppl
    dense, tok = load_model(ref.path), load_tokenizer(ref.path)
    ids = load_tokens(corpus / TEST_FILE, tok)[:20_000]
    samples = calibration_samples(corpus / TRAIN_FILE, tok)

    def pruned_ppl(importance: str, seed: int = 0) -> float:
        model = copy.deepcopy(dense)
        cfg = PruneConfig(ratio=0.5, layer_start=1, layer_end=-1, importance=importance, seed=seed)
        prune_model(model, cfg, samples, progress=False)
        return perplexity(model, ids, ctx_len=256, progress=False).ppl

    taylor = pruned_ppl("taylor")
    randoms = [pruned_ppl("random", seed) for seed in range(3)]
    assert taylor < min(randoms), (taylor, randoms)
