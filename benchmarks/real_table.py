"""real_bench's results file and table: the resumable JSON of finished rows, rows as the README
shows them, the gap each row recovered, the seed spread.

Read by ``real_bench.py`` (and the benchmarks built on it: their rows are stored the same way)
and by ``--table`` (mean ± standard error); kept apart from the runs so a reader of the numbers
need not read how they were made.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class Rows:
    """The JSON file of finished rows; a row is written the moment it is done (atomic rename)."""

    def __init__(self, path: Path, settings: dict, *, read_only: bool = False) -> None:
        """``read_only`` (``--table``): any file is read, whatever settings made it; otherwise
        one made with other settings is refused, so a resumed table never mixes two recipes."""
        self.path, self.settings = path, settings
        self.data = {"settings": settings, "rows": {}}
        if path.is_file():
            earlier = json.loads(path.read_text())
            if earlier.get("settings") != settings and not read_only:
                raise SystemExit(f"{path} was made with other settings; use another --out")
            self.data = earlier

    def get(self, key: str) -> dict | None:
        return self.data["rows"].get(key)

    def put(self, key: str, row: dict) -> dict:
        self.data["rows"][key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)
        return row


def gap_recovered(row: dict, pruned: dict, dense: dict) -> dict:
    """Share of the pruned -> dense gap won back: perplexity in log space, task average as is."""
    lp, lr, ld = (math.log(r["ppl"]) for r in (pruned, row, dense))
    out = {"ppl_gap_recovered": (lp - lr) / (lp - ld) if lp != ld else None}
    span = dense["task_avg"] - pruned["task_avg"]
    out["task_gap_recovered"] = (row["task_avg"] - pruned["task_avg"]) / span if abs(span) > 1e-9 else None
    return out


def seed_spread(rows: dict) -> list[str]:
    """Test perplexity and task average, mean ± standard error over each row's training seeds."""
    out = []
    for key, r in rows.items():
        seeded = [v for k, v in rows.items() if k.startswith(f"{key} train seed ")]
        if not seeded:
            continue
        runs = [r, *seeded]
        ppl, avg = mean_se([x["ppl"] for x in runs]), mean_se([100 * x["task_avg"] for x in runs])
        out.append(f"{key}: test ppl {ppl[0]:.2f} ± {ppl[1]:.2f}, task avg {avg[0]:.1f} ± {avg[1]:.1f} "
                   f"({len(runs)} training seeds)")  # fmt: skip
    return out


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error (NaN for one value: no spread measured)."""
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else math.nan


def table(data: dict) -> str:
    rows = data["rows"]
    tasks = list(data["settings"]["tasks"].split(","))
    dense = rows.get("dense")
    head = (
        ["ratio", "row", "ppl"]
        + tasks
        + ["avg", "gap rec. (ppl/avg)", "mem pred/meas MiB", "weights MiB", "trainable", "evals", "wall s"]
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in rows.items():
        ratio, _, name = key.rpartition("/")
        pruned = rows.get(f"{ratio}/pruned")
        gap = gap_recovered(r, pruned, dense) if dense and pruned and key not in ("dense",) else {}
        cells = [ratio or "0", name, f"{r['ppl']:.2f}"]
        cells += [
            f"{100 * r['tasks'][t]['acc']:.1f} ± {100 * (r['tasks'][t]['stderr'] or 0):.1f}"
            if t in r["tasks"]
            else ""
            for t in tasks
        ]
        cells.append(f"{100 * r['task_avg']:.1f}")
        g1, g2 = gap.get("ppl_gap_recovered"), gap.get("task_gap_recovered")
        cells.append(
            "" if g1 is None else f"{100 * g1:.0f}% / " + ("n/a" if g2 is None else f"{100 * g2:.0f}%")
        )
        mp, mm = r.get("memory_predicted"), r.get("memory_measured")
        cells.append(f"{mp / 2**20:.0f} / {mm / 2**20:.0f}" if mp else "")
        cells += [
            f"{r['weight_mib']:.1f}",
            f"{r.get('trainable_params', 0):,}",
            str(r.get("evaluations", "")),
            f"{r.get('wall_seconds', r['eval_seconds']):.0f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    spread = seed_spread(rows)
    return "\n".join(out + ([""] + spread if spread else []))
