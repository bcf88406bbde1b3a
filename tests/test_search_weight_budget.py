"""A budget on served weights (``--memory-measure weights``) beside the fine-tuning one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from search_helpers import SyntheticEvaluator, make_space

from qpruner.errors import QPrunerError
from qpruner.memory import MemoryReport, estimate
from qpruner.plan import Plan
from qpruner.search.budget import resolve_budget
from qpruner.search.evaluator import Evaluation
from qpruner.search.loop import _measured
from qpruner.search.space import WEIGHT_PARTS

LAYERS = 6


def _weights(space, fmt: str, rank: int = 8) -> int:
    shapes = [lp.shape for lp in space.base.layers]
    plan = Plan.uniform(LAYERS, fmt, rank, dtype=space.base.dtype, shapes=shapes)
    parts = estimate(space.model_config, plan, space.batch, space.seq_len).components
    return parts["packed_weights"] + parts["dense_weights"] + parts["lora_params"]


def test_a_weight_budget_is_the_reference_plans_weights_and_adapters():
    space = make_space("bits", LAYERS, bits=(2, 3, 4, 8, 16), measure="weights")
    budget = resolve_budget("nf4", space)
    assert budget.bytes == _weights(space, "nf4")
    assert budget.describe().endswith("in weights + LoRA (serving) (the uniform nf4 plan, rank 8)")
    finetune = make_space("bits", LAYERS, bits=(2, 3, 4, 8, 16))
    assert resolve_budget("nf4", finetune).bytes > budget.bytes  # no optimizer, no activations


def test_under_a_weight_budget_an_8_bit_layer_is_bought_with_2_bit_ones():
    """Served bytes rank 2 < 4 < 8 < 16 bits on every layer, so at uniform NF4's weight memory
    a plan can trade a sensitive layer's 8 bits for robust layers' 2. Not 3 against 4 in float32:
    hqq keeps a scale and zero per 64 weights in the plan's dtype, which makes hqq3 cost what NF4
    does (0.5 byte per weight) unless the plan is bf16."""
    space = make_space("bits", LAYERS, bits=(2, 3, 4, 8, 16), measure="weights")
    for layer in range(LAYERS):
        costs = [space.layer_cost(layer, b, 8) for b in (2, 4, 8, 16)]
        assert costs == sorted(costs) and len(set(costs)) == 4
        assert space.layer_cost(layer, 3, 8) == pytest.approx(space.layer_cost(layer, 4, 8), rel=0.01)
    budget = resolve_budget("nf4", space).bytes
    traded = space.choices_from(bits=[8, 2, 2, 2, 2, 4])
    assert space.memory(traded) <= budget < space.memory(space.choices_from(bits=[8, 4, 4, 4, 4, 4]))
    assert space.memory(traded) == space.memory_exact(traded)


def test_a_weight_budget_is_part_of_the_study_and_its_report(model_dir, tmp_path):
    from qpruner.search.from_model import SearchConfig, search_model

    cfg = SearchConfig(
        method="random", memory_budget="nf4", memory_measure="weights", bits=(2, 3, 4, 8), trials=3,
        train_data="unused",
    )  # fmt: skip
    res = search_model(model_dir, cfg, tmp_path / "s", evaluator=SyntheticEvaluator(LAYERS), progress=False)
    assert res.summary.memory_measure == "weights" and res.summary.extra["space"]["measure"] == "weights"
    chosen = res.summary.chosen_trial
    assert chosen is not None and chosen.memory_predicted <= res.summary.budget
    saved = json.loads((tmp_path / "s" / "search.json").read_text())
    assert "in weights + LoRA (serving)" in saved["budget_text"]
    assert "weights + LoRA (serving) memory" in (tmp_path / "s" / "report.html").read_text()
    again = SearchConfig(method="random", memory_budget="nf4", bits=(2, 3, 4, 8), train_data="unused")
    with pytest.raises(QPrunerError):  # the same folder under a fine-tuning budget is another study
        search_model(model_dir, again, tmp_path / "s", resume=True, evaluator=SyntheticEvaluator(LAYERS),
                     progress=False)  # fmt: skip


def test_a_trial_measures_the_weights_it_holds_not_its_step_peak():
    measured = {"packed_weights": 100, "dense_weights": 20, "lora_params": 3, "optimizer_states": 6,
                "step_peak": 1000}  # fmt: skip
    ev = Evaluation(1.0, 1129, {"memory_measured": measured})
    weights = SimpleNamespace(space=make_space("bits", LAYERS, measure="weights"))
    finetune = SimpleNamespace(space=make_space("bits", LAYERS))
    assert _measured(weights, ev) == 123 == weights.space.amount(MemoryReport.from_dict(measured))
    assert _measured(finetune, ev) == 1129
    assert set(WEIGHT_PARTS) < set(measured)


def test_an_unknown_measure_is_one_line():
    with pytest.raises(QPrunerError, match="unknown memory measure 'activations'"):
        make_space("bits", LAYERS, measure="activations")


@pytest.mark.parametrize("command", ["search", "run"])
def test_the_flag_reaches_the_search(command):
    from qpruner.cli import build_parser
    from qpruner.cli.search import search_config

    base = [command, "--model", "m", "--out", "o", "--train-data", "t", "--memory-budget", "nf4"]
    assert search_config(build_parser().parse_args(base)).memory_measure == "finetune"
    parsed = build_parser().parse_args([*base, "--memory-measure", "weights"])
    assert search_config(parsed).memory_measure == "weights"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--memory-measure", "activations"])
