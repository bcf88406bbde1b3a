"""The first plan an importance-led search tries: bits per layer that fit the budget.

Two rules. The QPruner paper's greedy one (:func:`initial_bits`) starts every layer at its
cheapest width and raises the most important layers first, level by level. It needs only a
ranking, but it cannot lower one layer to pay for another: at a budget equal to uniform NF4's
it raises every layer to 4 bits (the one level that then fits everywhere) and returns uniform
NF4, whatever the importance says (SmolLM2-135M, both memory measures). When each layer's
damage at each width was measured (:class:`~qpruner.search.sensitivity.Sensitivity`),
:func:`least_damage_bits` solves the allocation instead: the plan whose summed predicted Δ loss
is least within the budget, a multiple-choice knapsack over the space's additive layer costs,
solved by dynamic programming on a fine grid of the budget (exact up to a few grid steps).
"""

from __future__ import annotations

import numpy as np

from qpruner.errors import QPrunerError
from qpruner.search.sensitivity import Sensitivity
from qpruner.search.space import InfeasibleBudget, SearchSpace

GRID = 4000  # budget steps of the knapsack (costs rounded down; the plan found is checked)


def allocate_bits(
    space: SearchSpace, importance: list[float], budget: int, *, sensitivity: Sensitivity | None = None
) -> list[int]:
    """The least-damage plan where sensitivity was measured and the sum is exact, else greedy."""
    if sensitivity is not None and len(sensitivity.delta) == space.num_layers:
        bits = least_damage_bits(space, sensitivity, budget)
        if bits is not None:
            return bits
    return initial_bits(space, importance, budget)


def initial_bits(space: SearchSpace, importance: list[float], budget: int) -> list[int]:
    """Greedy allocation: more bits to more important layers, within ``budget``."""
    if len(importance) != space.num_layers:
        raise QPrunerError(f"importance has {len(importance)} scores for {space.num_layers} layers")
    levels = sorted(space.bits)
    ranks = space.layer_ranks({})

    def cost(b: list[int]) -> int:
        return space.memory(space.choices_from(b, ranks))

    # Start from each layer's cheapest width, which is not always the fewest bits (scales and
    # dequantization transients: see SearchSpace.cheapest), then raise important layers first.
    bits = [min(levels, key=lambda b, i=i: (space.layer_cost(i, b, ranks[i]), b)) for i in range(len(ranks))]
    if cost(bits) > budget:
        space.check_budget(budget)
        raise InfeasibleBudget("even each layer's cheapest width exceeds the budget")
    order = sorted(range(space.num_layers), key=lambda i: (-importance[i], i))
    for level in levels:
        for i in order:
            trial = list(bits)
            trial[i] = max(level, bits[i])
            if trial != bits and cost(trial) <= budget:
                bits = trial
    return bits


def least_damage_bits(space: SearchSpace, sensitivity: Sensitivity, budget: int) -> list[int] | None:
    """Bits per layer minimising ``sensitivity.predicted_delta`` within ``budget`` (ranks fixed).

    None when no plan fits, or when the space's price is not the sum the knapsack assumes for
    the plan found (``SearchSpace._costs``: a dequantization transient larger than the step's
    other peaks, on tiny shapes): the caller falls back to the greedy rule, which says why.
    """
    ranks = space.layer_ranks({})
    levels = sorted(space.bits)
    costs = np.array([[space.layer_cost(i, b, ranks[i]) for b in levels] for i in range(space.num_layers)])
    damage = np.array([[sensitivity.at(i, b) for b in levels] for i in range(space.num_layers)])
    floor = space.memory(space.choices_from([levels[0]] * space.num_layers, ranks)) + costs.min(axis=1).sum()
    room = budget - floor
    if room < 0:  # over budget even at the cheapest widths, or the price is not additive here
        return None
    units = np.floor((costs - costs.min(axis=1, keepdims=True)) * GRID / max(room, 1)).astype(int)
    best = np.zeros(GRID + 1)  # least damage of the layers so far within j grid steps
    picks = []
    for i in range(space.num_layers):
        new, pick = np.full(GRID + 1, np.inf), np.zeros(GRID + 1, dtype=int)
        # Cheapest first, so on equal damage the cheaper width stays (not always the narrower:
        # hqq3 can hold more bytes than NF4).
        for k in sorted(range(len(levels)), key=lambda k, i=i: (costs[i, k], levels[k])):
            u = units[i, k]
            if u > GRID:
                continue
            cand = np.full(GRID + 1, np.inf)
            cand[u:] = best[: GRID + 1 - u] + damage[i, k]
            better = cand < new
            new[better], pick[better] = cand[better], k
        best = new
        picks.append(pick)
    # Costs were rounded down (so a plan priced exactly at the budget, uniform NF4 at NF4's,
    # stays in), so the plan read back may be over by up to a step per layer: then the best
    # plan within one step less, until one fits.
    for top in range(GRID, max(-1, GRID - 4 * space.num_layers), -1):
        bits, j = [0] * space.num_layers, top
        for i in reversed(range(space.num_layers)):
            k = picks[i][j]
            bits[i], j = levels[k], j - units[i, k]
        if space.memory(space.choices_from(bits, ranks)) <= budget:
            return bits
    return None
