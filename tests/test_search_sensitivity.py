"""Measured layer sensitivity: each layer alone quantized, the model restored exactly afterwards."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_model

from qpruner.errors import QPrunerError
from qpruner.search.layer_importance import layer_importance, layer_profile
from qpruner.search.sensitivity import Sensitivity, mean_loss, measure_sensitivity, spearman


def _samples(seed: int = 0) -> torch.Tensor:
    return torch.randint(5, VOCAB, (8, 32), generator=torch.Generator().manual_seed(seed))


def test_the_sweep_restores_every_layer_exactly():
    model = make_model("gqa", layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = {name: m for name, m in model.named_modules()}
    sens = measure_sensitivity(model, _samples())
    assert len(sens.delta) == 3 and all(len(row) == 2 for row in sens.delta)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {name: m for name, m in model.named_modules()} == modules  # the very same module objects
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))


def test_delta_is_the_loss_of_that_layer_alone_quantized():
    """The same figure through the plan path: a plan with layer 1 at 2 bits, the rest at 16."""
    from qpruner.plan import Plan
    from qpruner.quant.apply import quantize_model

    model = make_model("gqa", layers=3)
    samples = _samples()
    sens = measure_sensitivity(model, samples, bits=(2,))
    base = mean_loss(model, samples)[0]
    assert sens.base_loss == pytest.approx(base, rel=1e-6) and sens.tokens == 8 * 31
    plan = Plan.uniform(3, "fp32", dtype="fp32")
    plan.layers[1].weight_format = "hqq2"
    quantize_model(model, plan)
    assert sens.delta[1][0] == pytest.approx(mean_loss(model, samples)[0] - base, rel=1e-5, abs=1e-7)
    assert sens.delta[1][0] != 0.0


def test_a_layer_that_adds_nothing_costs_nothing_to_quantize():
    model = make_model("gqa", layers=3)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    sens = measure_sensitivity(model, _samples())
    assert sens.delta[1] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert max(abs(x) for x in sens.delta[0]) > 1e-4
    assert layer_importance(model, _samples(), "sensitivity")[1] == pytest.approx(0.0, abs=1e-6)


def test_profile_puts_the_proxies_beside_the_measurement():
    model = make_model("gqa", layers=4)
    prof = layer_profile(model, _samples())
    sens = Sensitivity.from_dict(prof["sensitivity"])
    assert sens.bits == [2, 3] and len(prof["mi"]) == len(prof["taylor"]) == 4
    assert set(prof["spearman"]) == {"mi vs 2-bit", "mi vs 3-bit", "taylor vs 2-bit", "taylor vs 3-bit"}
    assert prof["spearman"]["taylor vs 2-bit"] == spearman(prof["taylor"], sens.column(2))
    assert set(prof["seconds"]) == {"mi", "taylor", "sensitivity"}


def test_spearman_and_bad_widths():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) is None  # constant: undefined
    assert spearman([1, 2], [1, 2]) is None
    with pytest.raises(QPrunerError, match="packed"):
        measure_sensitivity(make_model("gqa", layers=2), _samples(), bits=(2, 16))
