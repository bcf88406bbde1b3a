"""Pareto front and hypervolume of (error, memory) points, both minimised.

Written here rather than taken from optuna: optuna's front helpers work on a study's
trials and its hypervolume lives in a private module (``optuna._hypervolume``); ours take
plain numbers, so the report, the benchmark and the searchers share one definition, and in
two dimensions both are a sort and a sweep.
"""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, by increasing memory (second coordinate).

    A point is dominated when another is no worse in both coordinates and better in one.
    Of exact duplicates the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0], i))
    front: list[int] = []
    best_error = float("inf")
    for i in order:
        if points[i][0] < best_error:
            front.append(i)
            best_error = points[i][0]
    return front


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (worse than every point)."""
    inside = [p for p in points if p[0] < reference[0] and p[1] < reference[1]]
    area, prev_error = 0.0, reference[0]
    for i in pareto_front(inside):
        err, mem = inside[i]
        # The front is sorted by memory with falling error: each point adds a strip.
        area += (prev_error - err) * (reference[1] - mem)
        prev_error = err
    return area
