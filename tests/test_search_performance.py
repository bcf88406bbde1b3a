"""The performance model fits a known function well enough to rank plans."""

from __future__ import annotations

import numpy as np
import pytest

from qpruner.errors import QPrunerError
from qpruner.search.performance import PerformanceModel, PerformanceModelConfig, rank_correlation

BITS = np.array([2, 3, 4, 8, 16])
W = np.array([4.0 / (1 + i) for i in range(12)])


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Plans of 12 layers encoded as the search space does (2^-bits per layer); error falls with depth."""
    rng = np.random.default_rng(seed)
    X = 2.0 ** -BITS[rng.integers(0, len(BITS), (n, 12))]
    y = (W * X).sum(axis=1) + rng.normal(0, 1e-3, n)
    return X, y


@pytest.mark.parametrize("kind", ["mlp", "gbt", "ridge"])
def test_fits_a_known_function(kind):
    X, y = _data(40, 0)
    Xt, yt = _data(500, 1)
    model = PerformanceModel(PerformanceModelConfig(kind=kind)).fit(X, y)
    rho = rank_correlation(model.predict(Xt), yt)
    assert rho > 0.8, (kind, rho)
    assert model.describe()["kind_used"] == kind and model.describe()["n_train"] == 40


def test_deterministic_under_a_seed_and_seed_matters():
    X, y = _data(30, 0)
    Xt, _ = _data(50, 1)
    a = PerformanceModel(PerformanceModelConfig(seed=3)).fit(X, y).predict(Xt)
    b = PerformanceModel(PerformanceModelConfig(seed=3)).fit(X, y).predict(Xt)
    c = PerformanceModel(PerformanceModelConfig(seed=4)).fit(X, y).predict(Xt)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_spread_grows_away_from_the_data():
    X, y = _data(40, 0)
    model = PerformanceModel(PerformanceModelConfig(kind="mlp")).fit(X, y)
    _, near = model.predict_with_spread(X)
    _, far = model.predict_with_spread(np.full((1, 12), 4.0))
    assert near.shape == (40,) and (near >= 0).all()
    assert far[0] > near.mean()


def test_few_points_and_bad_input():
    X, y = _data(3, 0)
    for n in (2, 3):
        model = PerformanceModel().fit(X[:n], y[:n])
        assert model.describe()["kind_used"] == "ridge"  # too few points for an MLP
        assert np.isfinite(model.predict(X)).all()
    with pytest.raises(QPrunerError, match="at least 2"):
        PerformanceModel().fit(X[:1], y[:1])
    with pytest.raises(QPrunerError, match="features for"):
        PerformanceModel().fit(X, y[:2])
    with pytest.raises(QPrunerError, match="unknown performance model"):
        PerformanceModel(PerformanceModelConfig(kind="forest"))
    assert rank_correlation([1, 1, 1], [1, 2, 3]) == 0.0
    assert rank_correlation([1, 2, 3], [2, 4, 9]) == pytest.approx(1.0)
