"""Layer importance and measured sensitivity, computed once per study and stored in it.

QPruner and the joint search start from an allocation by importance; AutoMixQ's performance
model may take the measured sensitivity as its prior. All of them read the same study
attribute, so a resumed search or a second worker never measures again.
"""

from __future__ import annotations

from collections.abc import Callable

from qpruner.errors import QPrunerError
from qpruner.search.sensitivity import Sensitivity

IMPORTANCE_ATTR = "importance"

#: Scores, or a callable computing them (run once per study); the callable may return
#: ``{"scores": [...], "profile": {...}}`` (:func:`qpruner.search.layer_importance.layer_profile`).
ImportanceSource = list[float] | Callable[[], list[float] | dict]


def load_importance(study, source: ImportanceSource | None, method: str) -> list[float]:
    """The study's stored importance, else computed from ``source`` and stored."""
    stored = study.user_attrs.get(IMPORTANCE_ATTR)
    if stored is not None:
        return [float(x) for x in stored["scores"]]
    if source is None:
        raise QPrunerError("this searcher needs layer importance: pass calibration data (--calib-data)")
    value = source() if callable(source) else source
    record = dict(value) if isinstance(value, dict) else {"scores": value}
    record["scores"] = [float(x) for x in record["scores"]]
    study.set_user_attr(IMPORTANCE_ATTR, {**record, "method": method})
    return record["scores"]


def stored_sensitivity(study) -> Sensitivity | None:
    """The measured layer sensitivity the study stored with its importance, if it has one."""
    profile = (study.user_attrs.get(IMPORTANCE_ATTR) or {}).get("profile") or {}
    found = profile.get("sensitivity")
    return None if found is None else Sensitivity.from_dict(found)
