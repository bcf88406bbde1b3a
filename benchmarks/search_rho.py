"""The performance model's Spearman ρ on held-out plans, over search_real_bench's studies.

Leave-one-study-out: the model is fitted on every other study's plans and predicts the held-out
study's. A plan evaluated in several studies (AutoMixQ's random start and random search share
their seeded draws) counts once, in the first study that evaluated it: otherwise the model would
be scored on plans it was fitted on.

Three predictors side by side, each over all plans and within each trial definition:

* the model as AutoMixQ fits it without a prior (every feature or the summary, chosen by CV);
* the same with the measured sensitivity's additive prior as a column and a third candidate;
* the prior alone (no fitting, so no plan's error is used to make it).

A *trial definition* is what a trial's error means. Trials made before commit 69272b5 trained
nothing at their first step (transformers' warm-up gave it learning rate 0), so a 4-step trial
trained 3: their errors are higher by a level the plan does not cause, and pooling them with
later trials mixes two objectives. It is read from the study itself: such a trial's first
trained rung scores exactly its untrained screen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qpruner.search.performance import PerformanceModel, PerformanceModelConfig, rank_correlation

#: Model seeds each fitted predictor is scored over: on 20-odd plans one seed's ρ is noise
#: (the same 28 plans read 0.63 to 0.89 across these five seeds' initial weights).
MODEL_SEEDS = (0, 1, 2, 3, 4)

UNTRAINED_FIRST_STEP = "first step untrained (before 69272b5)"
TRAINED_FIRST_STEP = "first step trained"


def trial_definition(study_dir: Path) -> str | None:
    """Which trial definition made the study in ``study_dir`` (None: no multi-fidelity curve)."""
    path = study_dir / "search.json"
    if not path.is_file():
        return None
    curves = [r["curve"] for r in json.loads(path.read_text())["records"] if len(r.get("curve") or []) >= 2]
    if not curves:
        return None
    same = all(c[1][1] == c[0][1] for c in curves)  # 1-step rung == screen: the step trained nothing
    return UNTRAINED_FIRST_STEP if same else TRAINED_FIRST_STEP


def distinct_studies(rows: dict[str, dict]) -> list[tuple[str | None, list[dict]]]:
    """Each searched row's trials not already seen in an earlier row, with its trial definition."""
    seen, out = set(), []
    for r in rows.values():
        fresh = []
        for t in r.get("trials", []):
            if (k := json.dumps(t["params"], sort_keys=True)) not in seen:
                seen.add(k)
                fresh.append(t)
        if fresh:
            out.append((r.get("trial_definition"), fresh))
    return out


def held_out(studies: list[list[dict]], space, *, prior: bool, seed: int) -> tuple[list[float], list[float]]:
    """Leave-one-study-out predictions and the measured errors, in the same order."""
    pred, meas = [], []
    for i, held in enumerate(studies):
        train = [t for j, s in enumerate(studies) if j != i for t in s]
        X = np.stack([space.features(t["params"]) for t in train])
        y = np.array([t["error"] for t in train])
        cols = [space.prior_column] if prior and space.prior_column is not None else None
        model = PerformanceModel(PerformanceModelConfig(seed=seed))
        model.fit(X, y, summary=space.summary_columns, prior=cols)
        pred += list(model.predict(np.stack([space.features(t["params"]) for t in held])))
        meas += [t["error"] for t in held]
    return pred, meas


def rho_table(rows: dict[str, dict], plain_space, prior_space) -> dict[str, dict]:
    """ρ of each predictor over all plans and within each trial definition (≥2 studies)."""
    studies = distinct_studies(rows)
    groups = {"all plans": [s for _, s in studies]}
    for name in sorted({d for d, _ in studies if d is not None}):
        groups[name] = [s for d, s in studies if d == name]
    out: dict[str, dict] = {}
    for name, group in groups.items():
        if len(group) < 2:
            continue
        plans = [t for s in group for t in s]
        entry = {"plans": len(plans), "studies": len(group)}
        entry["model"] = _over_seeds(group, plain_space, prior=False)
        if prior_space is not None:
            entry["model + prior"] = _over_seeds(group, prior_space, prior=True)
            col = prior_space.prior_column
            alone = [prior_space.features(t["params"])[col] for t in plans]
            entry["prior alone"] = rank_correlation(alone, [t["error"] for t in plans])
        out[name] = entry
    return out


def _over_seeds(group: list[list[dict]], space, *, prior: bool) -> list[float]:
    """Mean and standard error of ρ over MODEL_SEEDS."""
    rhos = [rank_correlation(*held_out(group, space, prior=prior, seed=s)) for s in MODEL_SEEDS]
    mean = float(np.mean(rhos))
    return [mean, float(np.std(rhos, ddof=1) / np.sqrt(len(rhos)))]


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value[0]:.3f} ± {value[1]:.3f}" if isinstance(value, list) else f"{value:.3f}"


def rho_lines(table: dict[str, dict]) -> list[str]:
    head = "| plans (trial definition: count) | studies | model | model + prior | prior alone (unfitted) |"
    lines = [
        "performance model Spearman ρ on held-out studies "
        f"(fitted: mean ± se over {len(MODEL_SEEDS)} model seeds):",
        head,
        "|---|---|---|---|---|",
    ]
    for name, e in table.items():
        cells = [_cell(e.get(k)) for k in ("model", "model + prior", "prior alone")]
        lines.append(f"| {name}: {e['plans']} | {e['studies']} | " + " | ".join(cells) + " |")
    return lines
