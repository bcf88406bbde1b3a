import math

import pytest
import torch
from conftest import VOCAB, make_model

from qpruner.data_sources import load_text
from qpruner.errors import QPrunerError
from qpruner.eval.perplexity import _windows, perplexity


@pytest.mark.parametrize("n,ctx,stride", [(100, 16, 16), (100, 16, 5), (17, 16, 8), (16, 16, 16), (5, 16, 4)])
def test_windows_score_every_token_once(n, ctx, stride):
    scored = []
    for b, e, first in _windows(n, ctx, stride):
        assert e - b <= ctx and b < first
        scored += list(range(first, e))
    if stride < ctx or n <= ctx:
        assert scored == list(range(1, n))
    else:  # non-overlapping (LLM-Pruner): each window's first token has no context
        assert scored == [t for t in range(1, n) if t % ctx]


def test_matches_the_models_own_loss_on_one_window():
    model = make_model("gqa")
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=ids[None]).loss.item()
    r = perplexity(model, ids, ctx_len=40, progress=False, compute_dtype="fp32")
    assert r.tokens == 39 and r.windows == 1
    assert math.isclose(r.ppl, math.exp(loss), rel_tol=1e-5)


def test_uniform_model_has_perplexity_vocab_size():
    model = make_model("mha")
    with torch.no_grad():
        model.lm_head.weight.zero_()
    ids = torch.randint(0, VOCAB, (50,))
    r = perplexity(model, ids, ctx_len=8, stride=3, progress=False)
    assert math.isclose(r.ppl, VOCAB, rel_tol=1e-5)


def test_batching_and_overlap():
    model = make_model("gqa")
    ids = torch.randint(0, VOCAB, (101,), generator=torch.Generator().manual_seed(2))
    a = perplexity(model, ids, ctx_len=16, batch_size=1, progress=False)
    b = perplexity(model, ids, ctx_len=16, batch_size=5, progress=False)
    assert math.isclose(a.ppl, b.ppl, rel_tol=1e-6) and a.tokens == b.tokens == 100 - 6
    c = perplexity(model, ids, ctx_len=16, stride=4, progress=False)
    assert c.tokens == 100 and c.windows > a.windows and c.ppl != a.ppl


def test_bad_arguments():
    model = make_model("mha")
    with pytest.raises(QPrunerError):
        perplexity(model, torch.tensor([1]), ctx_len=8, progress=False)
    with pytest.raises(QPrunerError):
        perplexity(model, torch.arange(10), ctx_len=8, stride=9, progress=False)


def test_eval_text_sources(tmp_path):
    import datasets

    (tmp_path / "a.txt").write_text("hello world")
    assert load_text(tmp_path / "a.txt") == "hello world"
    datasets.Dataset.from_dict({"text": ["one", "two"]}).save_to_disk(str(tmp_path / "ds"))
    assert load_text(tmp_path / "ds") == "one\n\ntwo"
    with pytest.raises(QPrunerError, match="not found"):
        load_text(tmp_path / "missing.txt")
