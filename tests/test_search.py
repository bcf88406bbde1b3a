"""Searchers on a priced space with a cheap synthetic evaluator: budget, validity, determinism."""

from __future__ import annotations

import json

import pytest
from search_helpers import SyntheticEvaluator, budget_between, make_space

from qpruner.errors import QPrunerError
from qpruner.plan import Plan
from qpruner.search.allocation import initial_bits
from qpruner.search.pareto import hypervolume, pareto_front
from qpruner.search.run import run_search
from qpruner.search.search_run import SearchRun
from qpruner.search.searchers import METHODS
from qpruner.search.space import InfeasibleBudget, parse_size

LAYERS = 6
FAST = {"automixq": {"n_initial": 3, "population": 16, "generations": 4},
        "joint": {"n_initial": 3, "population": 16, "generations": 4},
        "rankadaptor": {"n_initial": 3, "n_candidates": 300, "tolerance": 0.0},
        "qpruner": {"importance": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0], "n_startup": 2},
        "nsga2": {"population": 4}}  # fmt: skip
SPACES = {"qpruner": "bits", "automixq": "bits", "rankadaptor": "ranks", "joint": "joint", "random": "joint",
          "nsga2": "bits"}  # fmt: skip


def _search(
    tmp_path, method, trials=6, seed=0, name="s", share=0.4, resume=False, evaluator=None, time_budget=None
):
    tmp_path.mkdir(parents=True, exist_ok=True)
    space = make_space(SPACES[method], LAYERS)
    budget = budget_between(space, share)
    kwargs = dict(FAST.get(method, {}))
    if method == "joint":
        kwargs["importance"] = FAST["qpruner"]["importance"]
    ev = evaluator or SyntheticEvaluator(LAYERS)
    run = SearchRun(
        space=space,
        evaluator=ev,
        budget=budget,
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        method=method,
        trials=trials,
        study_name=name,
        seed=seed,
        options=kwargs,
        time_budget=time_budget,
    )
    res = run_search(run, tmp_path / name, resume=resume, progress=False, log=lambda *_: None)
    return res, space, budget, ev


def test_parse_size():
    assert parse_size("6GiB") == 6 * 2**30
    assert parse_size("512 MiB") == 512 * 2**20
    assert parse_size("1.5GB") == 1_500_000_000
    for bad in ("6 parsecs", "-1GiB", "GiB", "0"):
        with pytest.raises(QPrunerError, match="memory size"):
            parse_size(bad)


def test_memory_table_equals_full_memory_model():
    import numpy as np

    space = make_space("joint", LAYERS)
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = space.sample(rng)
        assert space.memory(c) == space.memory_exact(c)
    # more bits and larger ranks cost more
    lo, hi = space.cheapest(), {k: max(v) for k, v in space.param_choices.items()}
    assert space.memory(lo) < space.memory(hi)
    # the cheapest plan is the cheapest of all: no sampled plan costs less
    assert all(space.memory(lo) <= space.memory(space.sample(rng)) for _ in range(200))


@pytest.mark.parametrize("bf16", [True, False])
def test_pricing_stays_exact_where_the_memory_model_is_not_additive(monkeypatch, bf16):
    """On the tiny space in float32 compute a packed weight's dequantization outgrows the
    activation transients, so the per-layer sum is off (by 64 KiB here): the space notices and
    prices through the full model. In bf16 compute the sum is exact and used."""
    import numpy as np
    import torch

    import qpruner.device as device

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16, raising=False)
    monkeypatch.setattr(device, "_bf16_gemm_wins", lambda: bf16)
    space = make_space("joint", LAYERS)
    rng = np.random.default_rng(0)
    plans = [space.sample(rng) for _ in range(20)]
    assert space._additive is bf16
    assert [space.memory(c) for c in plans] == [space.memory_exact(c) for c in plans]
    if not bf16:
        assert any(space._table_price(c) != space.memory_exact(c) for c in plans)


def test_pareto_and_hypervolume():
    pts = [(3.0, 1.0), (2.0, 2.0), (2.5, 3.0), (1.0, 4.0), (1.0, 5.0)]
    assert pareto_front(pts) == [0, 1, 3]
    # strips: (4-3)*(6-1) + (3-2)*(6-2) + (2-1)*(6-4) = 5 + 4 + 2
    assert hypervolume(pts, (4.0, 6.0)) == pytest.approx(11.0)
    assert hypervolume([], (4.0, 6.0)) == 0.0


@pytest.mark.parametrize("method", list(METHODS))
def test_searcher_respects_budget_and_makes_valid_plans(tmp_path, method):
    res, space, budget, ev = _search(tmp_path, method)
    recs = [r for r in res.summary.records if r.status == "evaluated"]
    assert len(recs) == 6 or (method == "rankadaptor" and res.stopped_early)
    for r in recs:  # nothing over budget was ever trained
        assert r.memory_predicted <= budget
        assert space.memory(r.params) == r.memory_predicted
    assert len(ev.seen) == len(recs) and len(set(ev.seen)) == len(ev.seen)  # no plan trained twice
    plan = Plan.load(tmp_path / "s" / "plan.json")
    assert plan.validate(num_layers=LAYERS) is plan
    assert plan.metadata["search"]["error"] == min(r.error for r in recs)
    assert (tmp_path / "s" / "report.html").is_file()
    saved = json.loads((tmp_path / "s" / "search.json").read_text())
    assert saved["chosen"] == plan.metadata["search"]["trial"]
    if method == "rankadaptor":  # trainable parameters never above uniform LoRA at the base rank
        uniform = space.lora_params(space.choices_from(None, [8] * LAYERS))
        assert all(space.lora_params(r.params) <= uniform for r in recs)


@pytest.mark.parametrize("method", list(METHODS))
def test_searcher_is_deterministic_under_a_seed(tmp_path, method):
    a = _search(tmp_path / "a", method, trials=5)[0].summary.records
    b = _search(tmp_path / "b", method, trials=5)[0].summary.records
    assert [r.params for r in a] == [r.params for r in b]
    assert [r.error for r in a] == [r.error for r in b]


def test_qpruner_initial_allocation_favours_important_layers():
    space = make_space("bits", 2)
    low = space.memory(space.choices_from([4, 4]))
    up = space.memory(space.choices_from([8, 4])) - low  # the price of raising one layer to 8 bits
    budget = low + up + up // 2  # room to raise one layer, not both
    a, b = initial_bits(space, [10.0, 1.0], budget), initial_bits(space, [1.0, 10.0], budget)
    assert a == [8, 4] and b == [4, 8]
    assert initial_bits(space, [10.0, 1.0], space.memory(space.choices_from([16, 16]))) == [16, 16]
    with pytest.raises(InfeasibleBudget):
        initial_bits(space, [10.0, 1.0], low - 1)


def test_qpruner_first_trial_is_the_initial_allocation(tmp_path):
    res, space, budget, _ = _search(tmp_path, "qpruner", trials=3)
    first = min(res.summary.records, key=lambda r: r.number)
    assert first.proposed_by == "initial allocation"
    bits = space.layer_bits(first.params)
    assert bits == sorted(bits, reverse=True)  # importance falls with depth → bits do too
    assert res.summary.extra["importance"]["scores"] == FAST["qpruner"]["importance"]


@pytest.mark.parametrize(
    "below, message",
    [
        (1, "below the cheapest plan"),
        # Nothing to search (the NF4 budget on SmolLM2, where 2/3-bit hqq layers cost more to
        # fine-tune than NF4, let only uniform NF4 through).
        (0, "fits only the cheapest plan"),
    ],
)
def test_a_budget_with_nothing_to_search_is_refused_before_any_study(tmp_path, below, message):
    space = make_space("bits", LAYERS)
    run = SearchRun(
        space=space,
        evaluator=SyntheticEvaluator(LAYERS),
        budget=space.memory(space.cheapest()) - below,
        storage=f"sqlite:///{tmp_path / 'x.db'}",
        trials=3,
        study_name="x",
    )
    with pytest.raises(InfeasibleBudget, match=message):
        run_search(run, progress=False)
    assert not (tmp_path / "x.db").exists()
    space.check_budget(space.memory(space.cheapest()) + space.layer_cost(0, 8, 8) - space.layer_cost(0, 4, 8))


def test_model_based_searchers_beat_random_on_a_known_function(tmp_path):
    """Same evaluation budget: AutoMixQ's best is at least as good as random's (synthetic, seeded)."""
    best = {}
    for m in ("automixq", "random"):
        res = _search(tmp_path / m, m, trials=12, share=0.3)[0]
        best[m] = min(r.error for r in res.summary.records if r.status == "evaluated")
    assert best["automixq"] <= best["random"]


class _RepeatAllocation:
    """A sampler that always proposes the QPruner searcher's initial allocation: the stall
    optuna's GPSampler fell into on SmolLM2 under an NF4 budget (783 duplicates, 1 plan)."""

    def __init__(self, searcher):
        self.searcher = searcher

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return self.searcher.allocation[name]

    def before_trial(self, study, trial):
        pass

    def after_trial(self, study, trial, state, values):
        pass

    def reseed_rng(self):
        pass


def test_qpruner_steps_off_a_sampler_that_repeats_tried_plans(tmp_path, monkeypatch):
    import optuna

    from qpruner.search.searchers.base import LOCAL_MOVE, STALL_AFTER
    from qpruner.search.searchers.qpruner import QPrunerSearcher

    class Repeat(_RepeatAllocation, optuna.samplers.BaseSampler):
        pass

    monkeypatch.setattr(QPrunerSearcher, "sampler", lambda self: Repeat(self))
    res, space, budget, ev = _search(tmp_path, "qpruner", trials=6, share=0.3)
    recs = res.summary.records
    done = [r for r in recs if r.status == "evaluated"]
    assert len(done) == 6 and len(set(ev.seen)) == 6  # six different plans, none trained twice
    assert all(r.memory_predicted <= budget for r in done)
    assert sum(r.proposed_by == LOCAL_MOVE for r in done) == 5
    assert sum(r.status == "duplicate" for r in recs) <= 5 * STALL_AFTER


def _trial_times(tmp_path) -> list[float]:
    import optuna

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    return [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.get_trials()]


def test_a_time_budget_stops_the_search_and_resumes_with_more_time(tmp_path):
    ev = SyntheticEvaluator(LAYERS, delay=0.4)
    res = _search(tmp_path, "random", trials=50, evaluator=ev, time_budget=1.0)[0]
    times = _trial_times(tmp_path)
    # stopped as soon as the trials had spent the budget: not before, not a trial later
    assert res.out_of_time and sum(times) >= 1.0 > sum(times) - times[-1]
    first = len(times)
    res = _search(tmp_path, "random", trials=50, evaluator=ev, time_budget=2.5, resume=True)[0]
    times = _trial_times(tmp_path)  # the spent time is the study's: counted across runs
    assert res.out_of_time and len(times) > first and sum(times) >= 2.5 > sum(times) - times[-1]
    assert len([r for r in res.summary.records if r.status == "evaluated"]) == len(times) < 50


def test_parse_duration():
    from qpruner.units import parse_duration

    assert parse_duration("90m") == 5400 and parse_duration("2h") == 7200
    assert parse_duration("600") == parse_duration("600s") == parse_duration(600) == 600
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(QPrunerError, match="duration"):
            parse_duration(bad)
