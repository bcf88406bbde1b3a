"""Layer importance: a layer that adds nothing scores zero; an informative one scores highest."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_model

import qpruner.search.layer_importance as importance
from qpruner.errors import QPrunerError
from qpruner.search.layer_importance import layer_importance, mutual_information


def _samples(seed: int = 0) -> torch.Tensor:
    return torch.randint(5, VOCAB, (8, 32), generator=torch.Generator().manual_seed(seed))


def test_scores_are_finite_and_seeded():
    model = make_model("gqa", layers=4)
    for method in ("mi", "taylor", "random"):
        s = layer_importance(model, _samples(), method)
        assert len(s) == 4 and all(x >= 0 and x == x for x in s)
        assert s == layer_importance(model, _samples(), method)
    assert layer_importance(model, _samples(), "random", seed=1) != layer_importance(
        model, _samples(), "random"
    )
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_a_layer_that_adds_nothing_scores_zero():
    model = make_model("gqa", layers=4)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    mi = layer_importance(model, _samples(), "mi")
    taylor = layer_importance(model, _samples(), "taylor")
    assert mi[1] == 0.0 and mi[0] > 0.0
    assert taylor[1] == 0.0 and taylor[0] > 0.0


def test_only_the_contributing_layer_is_important():
    model = make_model("gqa", layers=4)
    with torch.no_grad():  # layers 0, 1, 3 add nothing; layer 2 alone shapes the prediction
        for i in (0, 1, 3):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    for method in ("mi", "taylor"):
        s = layer_importance(model, _samples(), method)
        assert s[2] > 0 and s[0] == s[1] == s[3] == 0.0, (method, s)


def test_subsampled_tokens_stay_aligned_with_predictions(monkeypatch):
    """Only MAX_TOKENS positions are kept (memory bound), the same ones for every layer and
    for the predictions, whatever the micro-batching: shuffled pairs would score ~0.3."""
    model = make_model("gqa", layers=4)
    monkeypatch.setattr(importance, "MAX_TOKENS", 200)
    seen = []
    kmeans = importance._kmeans
    monkeypatch.setattr(importance, "_kmeans", lambda x, *a: seen.append(x.shape[0]) or kmeans(x, *a))
    s = layer_importance(model, _samples(), "mi", micro_batch=3)
    assert seen == [200] * 4
    assert s == layer_importance(model, _samples(), "mi", micro_batch=8)
    assert s[3] > 0.8, s


def test_mutual_information_estimator():
    y = torch.arange(400) % 4
    assert mutual_information(y, y) == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=0.02)
    assert mutual_information(torch.zeros(400, dtype=torch.long), y) == 0.0
    noise = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(0))
    assert mutual_information(noise, y) < 0.05


def test_bad_method_and_samples():
    model = make_model("gqa", layers=2)
    with pytest.raises(QPrunerError, match="unknown layer importance"):
        layer_importance(model, _samples(), "fisher")
    with pytest.raises(QPrunerError, match="calibration samples"):
        layer_importance(model, torch.zeros(4, dtype=torch.long), "mi")
