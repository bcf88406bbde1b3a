"""The search report's figures, each a PNG (matplotlib).

Drawn on ``Figure`` objects with the Agg canvas, so a user's pyplot state and backend are
untouched: the Pareto front of error vs memory over every trial, the chosen plan's bits and
LoRA rank per layer, search progress (best so far), the performance model's predicted vs
measured error, and each trial's learning curve (multi-fidelity searches).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from qpruner.search.records import Status

if TYPE_CHECKING:
    from qpruner.search.summary import SearchSummary

MIB = 2**20


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def pareto_png(s: SearchSummary) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    ev = [r for r in s.evaluated() if r.memory is not None]
    on = set(s.front())
    ax.scatter(
        [r.memory / MIB for r in ev], [r.error for r in ev], s=18, c="tab:blue", alpha=0.6, label="evaluated"
    )
    front = sorted((r for r in ev if r.number in on), key=lambda r: r.memory)
    if front:
        ax.plot(
            [r.memory / MIB for r in front], [r.error for r in front], "o-", c="tab:red", label="Pareto front"
        )
    rej = [r for r in s.records if r.status == Status.REJECTED and r.memory_predicted]
    if rej and ev:
        top = max(r.error for r in ev)
        ax.scatter(
            [r.memory_predicted / MIB for r in rej],
            [top] * len(rej),
            marker="x",
            c="grey",
            label="refused (over budget, predicted memory)",
        )
    best = s.chosen_trial
    if best is not None and best.number in {r.number for r in ev}:  # a point of this chart
        ax.scatter(
            [best.memory / MIB],
            [best.error],
            marker="*",
            s=220,
            c="gold",
            edgecolors="k",
            zorder=5,
            label=f"chosen (trial {best.number})",
        )
    if s.budget:
        ax.axvline(s.budget / MIB, ls="--", c="k", lw=1, label="budget (predicted memory)")
    ax.set_xlabel(f"{s.memory_label()}, MiB (measured where measured)")
    ax.set_ylabel(s.metric)
    ax.set_title(f"{s.method}: every trial, the front highlighted")
    if ev or rej:
        ax.legend(fontsize=7)
    return _png(fig)


def plan_png(plan_dict: dict) -> bytes:
    from qpruner.plan import Plan

    plan = Plan.from_dict(plan_dict)
    layers = list(range(len(plan.layers)))
    ratios = [lp.prune_ratio for lp in plan.layers]
    panels = 3 if any(r for r in ratios if r) else 2
    fig = _figure(6.4, 1.8 * panels + 0.6)
    axes = fig.subplots(panels, 1, sharex=True)
    axes[0].bar(layers, plan.bits_per_layer(), color="tab:purple")
    axes[0].set_ylabel("bits")
    axes[1].bar(layers, [lp.lora_rank for lp in plan.layers], color="tab:green")
    axes[1].set_ylabel("LoRA rank")
    if panels == 3:
        axes[2].bar(layers, [100 * (r or 0) for r in ratios], color="tab:grey")
        axes[2].set_ylabel("pruned %")
    axes[-1].set_xlabel("decoder layer")
    axes[0].set_title("chosen plan per layer")
    return _png(fig)


def progress_png(s: SearchSummary) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    ev = s.evaluated()
    xs = list(range(1, len(ev) + 1))
    best, run = [], float("inf")
    for r in ev:
        run = min(run, r.error)
        best.append(run)
    ax.scatter(xs, [r.error for r in ev], s=14, c="tab:blue", alpha=0.6, label="trial")
    ax.step(xs, best, where="post", c="tab:red", label="best so far")
    ax.set_xlabel("evaluated trial")
    ax.set_ylabel(s.metric)
    ax.set_title("search progress")
    if ev:
        ax.legend(fontsize=7)
    return _png(fig)


def model_png(s: SearchSummary) -> bytes | None:
    """Predicted vs measured error of the performance model; None with fewer than 2 predictions."""
    from qpruner.search.performance import rank_correlation

    pts = [(r.predicted_error, r.error) for r in s.evaluated() if r.predicted_error is not None]
    if len(pts) < 2:
        return None
    fig = _figure(4.8, 4.4)
    ax = fig.add_subplot()
    p, m = zip(*pts, strict=True)
    ax.scatter(m, p, c="tab:orange")
    lo, hi = min(*p, *m), max(*p, *m)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"measured {s.metric}")
    ax.set_ylabel(f"predicted {s.metric}")
    ax.set_title(f"performance model: Spearman {rank_correlation(p, m):.2f} over {len(pts)} trials")
    return _png(fig)


def curves_png(s: SearchSummary) -> bytes | None:
    """Each trial's error against its training steps (multi-fidelity): the plans stopped early
    dashed grey, those trained to the end blue, the chosen one gold; None without curves."""
    from matplotlib.lines import Line2D

    traced = [r for r in s.records if r.curve]
    if not traced:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    styles = {
        "stopped early": {"c": "grey", "ls": "--", "alpha": 0.6, "lw": 1},
        "trained to the end": {"c": "tab:blue", "ls": "-", "alpha": 0.7, "lw": 1},
        "chosen": {"c": "gold", "ls": "-", "alpha": 1.0, "lw": 2.5},
    }
    for r in sorted(traced, key=lambda r: r.number == s.chosen):  # the chosen one on top
        kind = "chosen" if r.number == s.chosen else "stopped early" if r.status == Status.PRUNED else None
        style = styles[kind or "trained to the end"]
        steps, errors = zip(*r.curve, strict=True)
        ax.plot(steps, errors, marker="o", ms=3, **style)
    ax.set_xscale("symlog", linthresh=1)  # 0 steps (the screen), then doublings
    if all(e > 0 for r in traced for _, e in r.curve):
        ax.set_yscale("log")
    ax.set_xlabel("training steps (0: the quantized model before training)")
    ax.set_ylabel(s.metric)
    ax.set_title("each trial's curve: scored as it trains, weak plans stopped early")
    ax.legend(handles=[Line2D([], [], label=k, **v) for k, v in styles.items()], fontsize=7)
    return _png(fig)


def sensitivity_png(profile: dict | None) -> bytes | None:
    """Each layer's measured Δ loss alone at 2 and 3 bits (bars) beside MI and Taylor importance
    scaled to their maximum (lines), Spearman ρ in the title; None where it was not measured."""
    if not profile or "sensitivity" not in profile:
        return None
    sens = profile["sensitivity"]
    layers = range(len(sens["delta"]))
    fig = _figure(7.2, 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(sens["bits"])
    for j, b in enumerate(sens["bits"]):
        offset = (j - (len(sens["bits"]) - 1) / 2) * width
        heights = [row[j] for row in sens["delta"]]
        ax.bar([i + offset for i in layers], heights, width, label=f"Δ loss, {b}-bit")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("Δ loss (nats), that layer alone quantized")
    twin = ax.twinx()
    for method, style in (("mi", "k-"), ("taylor", "r--")):
        scores = profile.get(method)
        if scores and max(scores) > 0:
            scaled = [s / max(scores) for s in scores]
            twin.plot(list(layers), scaled, style, lw=1.2, label=f"{method} (scaled)")
    twin.set_ylabel("proxy importance / its max")
    rho = ", ".join(f"{k} ρ={v:.2f}" for k, v in profile.get("spearman", {}).items() if v is not None)
    ax.set_title(f"layer sensitivity, measured vs proxies\n{rho}", fontsize=8)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    return _png(fig)
