"""The first plan of an importance-led search: greedy by rank, or least damage by measured sensitivity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from search_helpers import make_space, new_study, sensitivity

from qpruner.search.allocation import GRID, allocate_bits, initial_bits, least_damage_bits
from qpruner.search.budget import resolve_budget
from qpruner.search.searchers.joint import JointSearcher
from qpruner.search.searchers.qpruner import ALLOCATION_ATTR, QPrunerSearcher
from qpruner.search.sensitivity import Sensitivity

BITS = (2, 3, 4, 8, 16)


def _fragile_first(layers: int) -> Sensitivity:
    """Layer 0 loses a lot at few bits, the others almost nothing."""
    return sensitivity([[2.0, 0.6]] + [[0.01, 0.004]] * (layers - 1))


def _space(layers: int, measure: str = "weights"):
    return make_space("bits", layers, bits=BITS, measure=measure)


def test_at_nf4_s_budget_greedy_returns_nf4_and_least_damage_trades():
    """Greedy raises every layer level by level, so at uniform NF4's price it stops at uniform
    NF4 whatever the importance; the knapsack pays for the fragile layer's 8 bits with 2-bit
    layers that the sensitivity says cost nothing, and predicts less damage."""
    space, sens = _space(6), _fragile_first(6)
    budget = resolve_budget("nf4", space).bytes
    greedy = initial_bits(space, sens.scores(), budget)
    assert greedy == [4] * 6
    least = least_damage_bits(space, sens, budget)
    assert least[0] >= 8 and 2 in least[1:]
    assert space.memory(space.choices_from(least)) <= budget
    assert sens.predicted_delta(least) < sens.predicted_delta(greedy)


@pytest.mark.parametrize("share", [0.15, 0.5, 0.85])
def test_least_damage_is_the_best_plan_within_budget(share):
    """Against every plan of a 3-layer space: nothing that fits predicts less damage (up to
    plans within a few grid steps of the budget, which the grid's rounding may exclude)."""
    space = _space(3)
    sens = sensitivity([[1.5, 0.5], [0.2, 0.05], [0.8, 0.1]])
    plans = [list(p) for p in itertools.product(BITS, repeat=3)]
    price = {tuple(p): space.memory(space.choices_from(p)) for p in plans}
    lo, hi = min(price.values()), max(price.values())
    budget = int(lo + share * (hi - lo))
    found = least_damage_bits(space, sens, budget)
    assert price[tuple(found)] <= budget
    step = (budget - lo) / GRID
    safe = [p for p in plans if price[tuple(p)] <= budget - 3 * step]
    assert sens.predicted_delta(found) <= min(sens.predicted_delta(p) for p in safe) + 1e-12


@pytest.mark.parametrize("share", [0.0, 0.15, 0.5, 0.85])
def test_where_the_price_is_not_a_sum_the_plan_still_fits_or_greedy_decides(share):
    """Fine-tuning memory on tiny shapes is not additive (SearchSpace._additive is false):
    whatever the knapsack finds is checked against the full price, else greedy decides."""
    space = _space(3, "finetune")
    sens = sensitivity([[1.5, 0.5], [0.2, 0.05], [0.8, 0.1]])
    prices = [space.memory(space.choices_from(list(p))) for p in itertools.product(BITS, repeat=3)]
    low = space.memory(space.cheapest())  # what the search itself refuses below
    budget = int(low + share * (max(prices) - low))
    found = least_damage_bits(space, sens, budget)
    assert found is None or space.memory(space.choices_from(found)) <= budget
    bits = allocate_bits(space, sens.scores(), budget, sensitivity=sens)
    assert space.memory(space.choices_from(bits)) <= budget


@pytest.mark.parametrize("seed", range(5))
def test_at_a_reference_plan_s_budget_least_damage_never_predicts_more_damage_than_it(seed):
    """The budget is exactly uniform NF4's price, so NF4 itself must stay a candidate (the
    grid rounds costs down): with any sensitivity the plan found is at most NF4's damage."""
    rng = np.random.default_rng(seed)
    space = _space(8)
    sens = sensitivity([sorted(rng.uniform(0.01, 2.0, size=2), reverse=True) for _ in range(8)])
    budget = resolve_budget("nf4", space).bytes
    found = least_damage_bits(space, sens, budget)
    assert space.memory(space.choices_from(found)) <= budget
    assert sens.predicted_delta(found) <= sens.predicted_delta([4] * 8) + 1e-12


def test_on_equal_damage_the_cheaper_width_is_kept():
    """A layer that loses nothing at any width costs only memory: its cheapest width, which in
    a float32 plan may be NF4 rather than hqq3 (a float32 scale and zero per group; here on
    the even layers, whose width packs worse), never the narrower one by default."""
    space = make_space("bits", 4, bits=(3, 4, 8), measure="weights")
    cheapest = [min((3, 4, 8), key=lambda b, i=i: space.layer_cost(i, b, 8)) for i in range(4)]
    assert cheapest == [4, 3, 4, 3]
    free = sensitivity([[0.0, 0.0]] * 4)
    assert least_damage_bits(space, free, resolve_budget("int8", space).bytes) == cheapest


def test_without_sensitivity_the_allocation_is_the_papers_greedy():
    space, sens = _space(6), _fragile_first(6)
    budget = resolve_budget("nf4", space).bytes
    assert allocate_bits(space, sens.scores(), budget) == initial_bits(space, sens.scores(), budget)
    least = least_damage_bits(space, sens, budget)
    assert allocate_bits(space, sens.scores(), budget, sensitivity=sens) == least != [4] * 6
    wrong = _fragile_first(4)  # measured on another model: not used
    assert allocate_bits(space, sens.scores(), budget, sensitivity=wrong) == [4] * 6


@pytest.mark.parametrize("cls", [QPrunerSearcher, JointSearcher])
def test_the_searchers_start_from_least_damage_when_sensitivity_was_measured(cls):
    space, sens = _space(6), _fragile_first(6)
    budget = resolve_budget("nf4", space).bytes
    profile = {"scores": sens.scores(), "profile": {"sensitivity": sens.to_dict()}}
    kw = {"importance_method": "sensitivity"} if cls is QPrunerSearcher else {"n_initial": 2}
    searcher = cls(space, budget, importance=lambda: profile, **kw)
    study = new_study()
    searcher.setup(study)
    assert space.layer_bits(searcher.allocation) == least_damage_bits(space, sens, budget)
    if cls is QPrunerSearcher:
        assert study.user_attrs[ALLOCATION_ATTR] == searcher.allocation
        mi = QPrunerSearcher(space, budget, importance=lambda: profile, importance_method="mi")
        mi.setup(new_study())  # another importance: the paper's greedy rule on its scores
        assert space.layer_bits(mi.allocation) == [4] * 6
