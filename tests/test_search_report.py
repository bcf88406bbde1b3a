"""The search report: figures really drawn, the front marked, the summary round-trips."""

from __future__ import annotations

import json
import re

from qpruner.plan import Plan
from qpruner.search.records import TrialRecord
from qpruner.search.report import SearchSummary, write_report

MIB = 2**20


def _summary(n_pred: int = 4) -> SearchSummary:
    plan = Plan.uniform(4, "nf4", rank=8, dtype="fp32")
    plan.layers[0].weight_format, plan.layers[0].lora_rank = "int8", 16
    plan.layers[1].prune_ratio = 0.25
    # (error, memory MiB): trials 0, 2, 4 form the front; 5 is refused; 6 failed
    pts = [(3.0, 10), (3.5, 12), (2.0, 14), (2.5, 16), (1.5, 20), None, None, (2.2, 18)]
    recs = []
    for i, p in enumerate(pts):
        if i == 5:
            recs.append(TrialRecord(i, "rejected", {"bits_0": 16}, memory_predicted=40 * MIB))
        elif i == 6:
            recs.append(TrialRecord(i, "failed", {"bits_0": 4}, retry_of=None))
        else:
            recs.append(
                TrialRecord(
                    i,
                    "evaluated",
                    {"bits_0": 4},
                    error=p[0],
                    memory_predicted=p[1] * MIB,
                    memory_measured=p[1] * MIB,
                    plan=plan.to_dict(),
                    proposed_by="random",
                    predicted_error=p[0] * 1.1 if i < n_pred else None,
                )
            )
    return SearchSummary(
        "automixq",
        "perplexity",
        30 * MIB,
        recs,
        chosen=4,
        study_name="s",
        storage="sqlite:///x",
        extra={"importance": {"scores": [0.9, 0.1, 0.5, 0.25], "method": "mi"}, "seed": 3},
    )


def test_report_draws_every_figure_and_marks_the_front(tmp_path):
    import matplotlib.image

    s = _summary()
    assert s.front() == [0, 2, 4]
    page = write_report(s, tmp_path).read_text()
    for name in ("pareto.png", "plan.png", "progress.png", "performance_model.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(tmp_path / name).shape[0] > 100
    assert page.count("data:image/png;base64,") == 4
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\w+)</td><td>(✓?)</td>", page)
    assert {int(n) for n, _, mark in rows if mark} == {0, 2, 4}
    assert len(rows) == 8 and "trial 4: perplexity 1.5" in page
    assert "int8" in page and "25.0%" in page  # the chosen plan's table
    assert "importance (mi)" in page and "<td>0.9</td>" in page


def test_report_escapes_text_and_says_when_no_plan_was_chosen(tmp_path):
    s = _summary()
    s.metric, s.storage, s.chosen = "1 - acc <cloze>", "postgresql://u:***@h/db?a=1&b=2", None
    page = write_report(s, tmp_path).read_text()
    assert "1 - acc &lt;cloze&gt;" in page and "<cloze>" not in page
    assert "a=1&amp;b=2" in page
    assert "No plan was chosen" in page and page.count("data:image/png;base64,") == 3


def test_summary_round_trips_through_json():
    s = _summary()
    again = SearchSummary.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s


def test_empty_search_and_missing_predictions(tmp_path):
    empty = SearchSummary("random", "perplexity", None, [], None)
    page = write_report(empty, tmp_path / "e").read_text()
    assert "No trial was evaluated" in page
    write_report(_summary(), tmp_path / "p")
    assert (tmp_path / "p" / "performance_model.png").exists()
    # Re-rendered into the same folder with one prediction: the stale figure goes with it.
    page = write_report(_summary(n_pred=1), tmp_path / "p").read_text()
    assert "fewer than 2 trials carry a model prediction" in page
    assert not (tmp_path / "p" / "performance_model.png").exists()
    assert page.count("data:image/png;base64,") == 3


def test_the_report_draws_each_trials_curve(tmp_path):
    """Multi-fidelity: every trial's error against its training steps, stopped ones included."""
    s = _summary()
    s.records[0].curve = [[0, 9.0], [5, 4.0], [10, 3.2], [20, 3.0]]
    s.records[7].curve = [[0, 9.0], [5, 4.0], [10, 3.2], [20, 3.0]]
    s.records.append(
        TrialRecord(8, "pruned", {"bits_0": 8}, curve=[[0, 12.0], [5, 6.5]], fidelities=[0, 5, 10, 20])
    )
    page = write_report(s, tmp_path).read_text()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Learning curves" in page and page.count("data:image/png;base64,") == 5
    assert "<td>0: 12 · 5: 6.5</td>" in page and "<td>pruned</td>" in page
    assert "evaluated / stopped early / refused / failed</td><td>6 / 1 / 1 / 1" in page
    again = SearchSummary.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again.records[8].curve == [[0, 12.0], [5, 6.5]]
    # scored once per trial: no curve figure, and none left from an earlier render
    page = write_report(_summary(), tmp_path).read_text()
    assert "each trial was scored once" in page and not (tmp_path / "curves.png").exists()
