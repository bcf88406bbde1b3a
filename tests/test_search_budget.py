"""Memory budgets a user can state: a size, a reference plan, a share of the 16-bit plan."""

from __future__ import annotations

import json

import pytest
from search_helpers import SyntheticEvaluator, make_space

from qpruner.errors import QPrunerError
from qpruner.memory import estimate
from qpruner.plan import Plan
from qpruner.search.budget import parse_budget, resolve_budget
from qpruner.search.space import InfeasibleBudget

LAYERS = 6


def _priced(space, fmt: str, rank: int) -> int:
    """A uniform plan priced directly by the memory model, at the space's batch and length."""
    shapes = [lp.shape for lp in space.base.layers]
    plan = Plan.uniform(LAYERS, fmt, rank, dtype=space.base.dtype, shapes=shapes)
    return estimate(space.model_config, plan, space.batch, space.seq_len).total


@pytest.mark.parametrize(
    "text,fmt,rank,share",
    [
        ("nf4", "nf4", 8, 1.0),
        ("INT8", "int8", 8, 1.0),
        ("hqq3", "hqq3", 8, 1.0),
        ("uniform:4", "nf4", 8, 1.0),
        ("uniform:8:16", "int8", 16, 1.0),
        ("uniform:16:2", "fp32", 2, 1.0),  # 16: unquantized, in the plan's dtype
        ("70%", "fp32", 8, 0.7),
        ("150 %", "fp32", 8, 1.5),
    ],
)
def test_each_form_is_that_plan_priced_directly(text, fmt, rank, share):
    space = make_space("joint", LAYERS)
    budget = resolve_budget(text, space)
    assert budget.bytes == int(share * _priced(space, fmt, rank))
    assert budget.basis == "at 1 × 64 tokens" and f"rank {rank}" in budget.reference
    assert budget.describe().endswith(f"at 1 × 64 tokens ({budget.reference})")


def test_sizes_stay_sizes():
    space = make_space("bits", LAYERS)
    assert resolve_budget("6GiB", space).bytes == 6 * 2**30
    assert resolve_budget(123456, space).bytes == 123456
    assert resolve_budget("210 MiB", space).reference is None


def test_a_budget_follows_the_trials_batch_shape():
    small, large = make_space("bits", LAYERS), make_space("bits", LAYERS)
    large.batch, large.seq_len = 4, 256
    assert resolve_budget("nf4", large).bytes == _priced(large, "nf4", 8) > resolve_budget("nf4", small).bytes


@pytest.mark.parametrize(
    "bad", ["lots", "nf5", "uniform:", "uniform:5", "uniform:4:0", "0%", "-5%", "%", "4:8"]
)
def test_bad_budgets_are_one_line(bad):
    with pytest.raises(QPrunerError, match="cannot read memory size") as raised:
        parse_budget(bad)
    assert "\n" not in str(raised.value) and "nf4" in str(raised.value) and "70%" in str(raised.value)


def test_a_reference_no_plan_meets_is_the_one_line_error():
    space = make_space("bits", LAYERS, bits=(8, 16))
    with pytest.raises(InfeasibleBudget, match="below the cheapest plan") as raised:
        space.check_budget(resolve_budget("nf4", space).bytes, resolve_budget("nf4", space).stated())
    message = str(raised.value)
    assert (
        "\n" not in message and "nf4: the uniform nf4 plan, rank 8" in message and "1 × 64 tokens" in message
    )


def test_the_search_names_batch_and_length_wherever_it_prints_memory(model_dir, tmp_path, capsys):
    from qpruner.cli.search import print_result
    from qpruner.search.from_model import SearchConfig, search_model

    cfg = SearchConfig(method="random", memory_budget="int8", trials=2, train_data="unused")
    res = search_model(model_dir, cfg, tmp_path / "s", evaluator=SyntheticEvaluator(LAYERS), progress=False)
    tokens = f"{cfg.train.micro_batch} × {cfg.train.cutoff_len} tokens"
    space = res.summary.extra["space"]
    assert (space["batch"], space["seq_len"]) == (cfg.train.micro_batch, cfg.train.cutoff_len)
    print_result(res)
    shown = capsys.readouterr().out
    assert (
        f"budget: {res.summary.budget_text()}\n" in shown and f"at {tokens} (int8: the uniform int8" in shown
    )
    assert shown.count(f"at {tokens}") == 2  # the budget and the best plan's memory
    saved = json.loads((tmp_path / "s" / "search.json").read_text())
    assert saved["memory_at"] == tokens and tokens in saved["budget_text"]
    assert saved["extra"]["budget_stated"]["text"] == "int8"
    assert tokens in (tmp_path / "s" / "report.html").read_text()
