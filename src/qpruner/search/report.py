"""The search report: one self-contained HTML page with its figures, rebuilt from the study alone.

:class:`SearchSummary` is what the report (and ``search.json``) shows; the figures are
:mod:`qpruner.search.figures`', each also written as a PNG beside the HTML.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from qpruner.search.figures import (
    MIB,
    curves_png,
    model_png,
    pareto_png,
    plan_png,
    progress_png,
    sensitivity_png,
)
from qpruner.search.records import Status, count
from qpruner.search.summary import SearchSummary


def _mib(x: int | None) -> str:
    return "" if x is None else f"{x / MIB:.2f}"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join(out) + "</table>"


def write_report(summary: SearchSummary, out_dir: str | Path) -> Path:
    """Write ``report.html`` (figures embedded) and the PNGs into ``out_dir``; return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s, esc = summary, html.escape
    parts = [f"<h1>qpruner search report: {esc(s.method)}</h1>", _table(["", ""], _facts(s))]
    if not s.evaluated():
        parts.append("<p><b>No trial was evaluated yet.</b></p>")
    parts += _figures(s, out)
    parts += _chosen_plan(s)
    parts += ["<h2>Every trial</h2>", _trials_table(s)]
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>qpruner search: {esc(s.method)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    path = out / "report.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _facts(s: SearchSummary) -> list[list[str]]:
    n = {st: count(s.records, st) for st in (Status.EVALUATED, Status.PRUNED, Status.REJECTED, Status.FAILED)}
    facts = [
        ["method", s.method],
        ["metric (lower is better)", s.metric],
        ["memory budget", s.budget_text()],
        ["memory figures", f"{s.memory_label()}, MiB"],
        [
            "trials evaluated / stopped early / refused / failed",
            f"{n[Status.EVALUATED]} / {n[Status.PRUNED]} / {n[Status.REJECTED]} / {n[Status.FAILED]}",
        ],
        ["study", s.study_name],
        ["storage", s.storage],
    ]
    chosen = s.chosen_trial
    if chosen is not None:
        facts.append(
            [
                "chosen",
                f"trial {chosen.number}: {s.metric} {_num(chosen.error)}, memory predicted "
                f"{_mib(chosen.memory_predicted)} / measured {_mib(chosen.memory_measured)} MiB{s.at()}",
            ]
        )
    return facts


def _figures(s: SearchSummary, out: Path) -> list[str]:
    """Each figure written as a PNG into ``out`` and embedded; the HTML sections, in order."""
    esc = html.escape
    chosen = s.chosen_trial
    few = "Skipped: fewer than 2 trials carry a model prediction."
    figures: list[tuple[str, str, bytes | None, str]] = [
        ("pareto.png", "Pareto front", pareto_png(s), ""),
        ("progress.png", "Search progress", progress_png(s), ""),
        ("curves.png", "Learning curves", curves_png(s), "Skipped: each trial was scored once (no curve)."),
        ("performance_model.png", "Performance model", model_png(s), few),
        ("sensitivity.png", "Layer sensitivity", sensitivity_png(s.layer_profile()),
         "Not measured (no calibration data, or --no-layer-profile)."),
    ]  # fmt: skip
    if chosen is not None and chosen.plan:
        figures.insert(1, ("plan.png", "Chosen plan per layer", plan_png(chosen.plan), ""))
    for stale in ("plan.png", "curves.png", "performance_model.png", "sensitivity.png"):
        # A re-render into the same folder must not leave a figure the page says it skipped.
        if not any(name == stale and png is not None for name, _, png, _ in figures):
            (out / stale).unlink(missing_ok=True)
    parts = []
    for name, title, png, skipped in figures:
        if png is None:
            parts.append(f"<h2>{esc(title)}</h2><p>{esc(skipped)}</p>")
            continue
        (out / name).write_bytes(png)
        data = base64.b64encode(png).decode()
        parts.append(f'<h2>{esc(title)}</h2><img alt="{esc(title)}" src="data:image/png;base64,{data}">')
    return parts


def _chosen_plan(s: SearchSummary) -> list[str]:
    """The chosen plan per layer, with the layer importance beside it where the search stored it."""
    chosen = s.chosen_trial
    if chosen is None or not chosen.plan:
        return ["<h2>Chosen plan</h2><p>No plan was chosen (none evaluated within the budget).</p>"]
    layers = chosen.plan["layers"]
    imp = s.importance()
    show_imp = imp is not None and len(imp[0]) == len(layers)
    rows = [
        [
            i,
            "" if lp.get("prune_ratio") is None else f"{100 * lp['prune_ratio']:.1f}%",
            lp["weight_format"],
            lp["lora_rank"],
            *([_num(imp[0][i])] if show_imp else []),
        ]
        for i, lp in enumerate(layers)
    ]
    head = ["layer", "pruned", "format", "LoRA rank"]
    head += [f"importance ({imp[1]})" if imp[1] else "importance"] if show_imp else []
    return ["<h2>Chosen plan</h2>", _table(head, rows)]


def _trials_table(s: SearchSummary) -> str:
    on = set(s.front())
    rows = [
        [
            r.number,
            r.status,
            "✓" if r.number in on else "",
            r.proposed_by or "",
            _num(r.error),
            _num(r.predicted_error),
            _mib(r.memory_predicted),
            _mib(r.memory_measured),
            "" if r.retry_of is None else r.retry_of,
            " · ".join(f"{steps:g}: {error:.4g}" for steps, error in r.curve),
        ]
        for r in sorted(s.records, key=lambda r: r.number)
    ]
    head = [
        "trial",
        "status",
        "front",
        "proposed by",
        s.metric,
        "predicted",
        "memory pred MiB",
        "memory meas MiB",
        "retry of",
        "curve (steps: error)",
    ]
    return _table(head, rows)
