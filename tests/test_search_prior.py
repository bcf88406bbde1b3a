"""The measured sensitivity as the performance model's prior: extrapolated, summed, chosen only
when it ranks plans better out of fold, and handed to AutoMixQ by the study."""

from __future__ import annotations

import numpy as np
import pytest
from search_helpers import budget_between, make_space, new_study, sensitivity

from qpruner.errors import QPrunerError
from qpruner.search.performance import PerformanceModel, PerformanceModelConfig, rank_correlation
from qpruner.search.records import TrialRecord
from qpruner.search.searchers.automixq import AutoMixQSearcher

BITS = np.array([2, 3, 4, 8, 16])


def test_sensitivity_extrapolates_geometrically_per_layer():
    s = sensitivity([[0.4, 0.1], [0.2, 0.3], [-0.01, 0.0]])
    assert s.at(0, 2) == 0.4 and s.at(0, 3) == 0.1
    assert s.at(0, 4) == pytest.approx(0.1 * 0.25) and s.at(0, 8) == pytest.approx(0.1 * 0.25**5)
    assert s.at(1, 4) == pytest.approx(0.3)  # measured wider costs more: factor capped at 1
    assert s.at(2, 2) == 0.0 and s.at(2, 4) == 0.0  # a layer that quantizes for free stays free
    assert s.at(0, 16) == 0.0
    one = sensitivity([[0.8]], bits=(3,))
    assert one.at(0, 4) == pytest.approx(0.2) and one.at(0, 2) == pytest.approx(3.2)  # a quarter per bit
    assert s.predicted_delta([2, 4, 16]) == pytest.approx(0.4 + 0.3 + 0.0)
    with pytest.raises(QPrunerError, match="3 layers"):
        s.predicted_delta([2, 4])


def test_space_prior_column_is_the_plan_s_predicted_delta():
    space = make_space(
        "bits", layers=4, sensitivity=sensitivity([[0.4, 0.1], [0.2, 0.05], [0.1, 0.01], [1.0, 0.5]])
    )
    choices = space.sample(np.random.default_rng(0))
    f = space.features(choices)
    assert space.prior_column == 16 and space.prior_column in space.summary_columns
    assert f[16] == pytest.approx(space.sensitivity.predicted_delta(space.layer_bits(choices)))


def _plans(n: int, seed: int, w: np.ndarray, prior_noise: float):
    """y compounds the true per-layer costs; the prior column is their sum, measured with noise."""
    rng = np.random.default_rng(seed)
    X = 2.0 ** -BITS[rng.integers(0, len(BITS), (n, len(w)))]
    damage = X @ w
    y = np.exp(damage) * np.exp(rng.normal(0, 0.05, n))
    prior = damage + rng.normal(0, prior_noise, n)
    return np.hstack([X, X.mean(axis=1, keepdims=True), prior[:, None]]), y


@pytest.mark.parametrize("kind", ["mlp", "ridge"])
def test_a_prior_that_knows_the_layers_is_chosen_and_ranks_better(kind):
    """Layers differ 30-fold and 20 plans are measured: neither every feature nor the plain mean
    can learn that, the prior states it. Measured held-out ρ with the prior / without: ~0.99 / ~0.7."""
    w = np.geomspace(3.0, 0.1, 30)
    (X, y), (Xt, yt) = _plans(20, 0, w, 0.02), _plans(500, 100, w, 0.02)
    with_prior = PerformanceModel(PerformanceModelConfig(kind=kind)).fit(X, y, summary=[30, 31], prior=[31])
    without = PerformanceModel(PerformanceModelConfig(kind=kind)).fit(X[:, :31], y, summary=[30])
    assert with_prior.describe()["features_used"] in ("prior", "summary")  # both hold the prior column
    assert set(with_prior.cv_rho) == {"full", "summary", "prior"}
    assert (
        rank_correlation(with_prior.predict(Xt), yt) > rank_correlation(without.predict(Xt[:, :31]), yt) + 0.1
    )


def test_a_prior_that_is_noise_is_not_chosen():
    w = np.geomspace(3.0, 0.1, 12)
    X, y = _plans(40, 0, w, 0.0)
    X[:, -1] = np.random.default_rng(5).normal(size=len(y))  # a prior unrelated to the error
    model = PerformanceModel().fit(X, y, summary=[12], prior=[13])
    assert model.describe()["features_used"] != "prior" and model.cv_rho["prior"] < 0.5


def test_automixq_takes_the_study_s_sensitivity_as_its_prior(monkeypatch):
    layers = 6
    sens = sensitivity([[4.0 / (1 + i), 1.0 / (1 + i)] for i in range(layers)])
    space = make_space("bits", layers)
    budget = budget_between(space, 0.6)
    plain = AutoMixQSearcher(space, budget)
    plain.setup(new_study())
    assert plain.space.sensitivity is None and plain.prior_columns() is None

    profile = {"scores": sens.scores(), "profile": {"sensitivity": sens.to_dict()}}
    study = new_study()
    searcher = AutoMixQSearcher(space, budget, importance=lambda: profile)
    searcher.setup(study)
    assert study.user_attrs["importance"]["profile"]["sensitivity"]["delta"] == sens.delta
    assert space.sensitivity is None  # the shared space is not changed under other users
    col = searcher.space.prior_column
    assert searcher.prior_columns() == [col, len(searcher.features(space.cheapest())) - 1]
    again = AutoMixQSearcher(space, budget)  # a resumed search or second worker: read back
    again.setup(study)
    assert again.space.sensitivity.delta == sens.delta

    rng = np.random.default_rng(0)
    plans = searcher.random_feasible(rng, set(), n=12)
    records = [TrialRecord(number=i, status="evaluated", params=c, error=1 + sens.predicted_delta(
        searcher.space.layer_bits(c))) for i, c in enumerate(plans)]  # fmt: skip
    model = searcher.fit(records)
    assert "prior" in model.cv_rho and model.describe()["features_used"] == "prior"
    assert searcher.describe()["prior"] == "measured sensitivity"


def test_performance_prior_flag_makes_automixq_measure_the_profile():
    from qpruner.cli import build_parser
    from qpruner.cli.search import search_config
    from qpruner.search.from_model import measures_importance

    base = ["search", "--model", "m", "--out", "o", "--train-data", "t", "--memory-budget", "1GiB"]
    plain = search_config(build_parser().parse_args([*base, "--method", "automixq"]))
    prior = search_config(build_parser().parse_args([*base, "--method", "automixq", "--performance-prior"]))
    assert (plain.performance_prior, prior.performance_prior) == (False, True)
    assert not measures_importance(plain) and measures_importance(prior)
    random = search_config(build_parser().parse_args([*base, "--method", "random", "--performance-prior"]))
    assert not measures_importance(random)  # no performance model to hand it to
    assert measures_importance(search_config(build_parser().parse_args([*base, "--method", "qpruner"])))


@pytest.mark.parametrize(
    ("method", "calib", "message"),
    [("random", "c.txt", "is for automixq, joint, not random"), ("automixq", None, "pass --calib-data")],
)
def test_performance_prior_refused_where_it_cannot_work(tmp_path, method, calib, message):
    from qpruner.search import SearchConfig, search_model

    cfg = SearchConfig(method=method, memory_budget="1GiB", performance_prior=True, calib_data=calib)
    with pytest.raises(QPrunerError, match=message):
        search_model(tmp_path / "no-model", cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_with_few_plans_the_prior_is_trusted_and_automixq_starts_sooner():
    w = np.geomspace(3.0, 0.1, 30)
    (X, y), (Xt, yt) = _plans(5, 0, w, 0.02), _plans(300, 100, w, 0.02)
    few = PerformanceModel().fit(X, y, summary=[30, 31], prior=[31])
    assert few.describe()["features_used"] == "prior" and few.kind_used == "linear"
    assert rank_correlation(few.predict(Xt), yt) > 0.95  # it ranks as the prior does
    assert PerformanceModel().fit(X, y, summary=[30]).columns is None  # no prior: every feature

    from qpruner.search.searchers.automixq import PRIOR_INITIAL

    layers = 6
    space = make_space("bits", layers)
    sens = sensitivity([[1.0 / (1 + i), 0.2 / (1 + i)] for i in range(layers)])
    budget = budget_between(space, 0.6)
    plain = AutoMixQSearcher(space, budget)
    primed = AutoMixQSearcher(make_space("bits", layers, sensitivity=sens), budget)
    plans = plain.random_feasible(np.random.default_rng(0), set(), n=PRIOR_INITIAL)
    done = [TrialRecord(number=i, status="evaluated", params=c, error=2.0) for i, c in enumerate(plans)]
    assert plain.initial_design(done) is not None and primed.initial_design(done) is None
