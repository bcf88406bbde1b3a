"""Where can a mixed-precision plan pay on a model? The measured-sensitivity frontier against uniform plans.

No training: from a layer sensitivity profile (each layer alone at 2 and 3 bits, Δ loss
untrained; ``sensitivity_bench.py`` made the default one for SmolLM2-135M), for budgets from
uniform 2-bit to uniform 8-bit weights, the plan with the least summed predicted Δ loss
(:func:`qpruner.search.allocation.least_damage_bits`, the knapsack QPruner's first trial now
uses) beside the best uniform plan within the same budget and the paper's greedy allocation.
Where the knapsack's curve lies well below the uniform one, a searched plan has room to beat
uniform ones at equal memory; where they meet (at a uniform plan's own price), it has none. The
additive prior ranked real trial errors at Spearman 0.89–0.94 on SmolLM2 (search_real_bench);
widths not measured (4, 8) are extrapolated (``Sensitivity.at``), so this is a map of where to
look, not a result.

    python benchmarks/allocation_frontier.py                  # seconds; JSON beside the table
    python benchmarks/allocation_frontier.py --dtype bf16 --measure finetune
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qpruner.models.catalog import resolve_model_source
from qpruner.search.allocation import initial_bits, least_damage_bits
from qpruner.search.budget import resolve_budget
from qpruner.search.from_model import SearchConfig, build_space
from qpruner.search.sensitivity import Sensitivity

ROOT = Path(__file__).resolve().parent
UNIFORM = (2, 3, 4, 8)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="catalog name or model directory")
    ap.add_argument("--profile", default=str(ROOT / "results" / "sensitivity_bench.json"),
                    help="sensitivity_bench.py's JSON, or a search's search.json")  # fmt: skip
    ap.add_argument("--measure", choices=("weights", "finetune"), default="weights")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--points", type=int, default=12, help="budgets between uniform 2- and 8-bit")
    ap.add_argument("--out", default=str(ROOT / "results" / "allocation_frontier.json"))
    return ap.parse_args()


def load_sensitivity(path: Path) -> Sensitivity:
    data = json.loads(path.read_text())
    profile = data.get("profile") or ((data.get("extra") or {}).get("importance") or {}).get("profile")
    if not profile or "sensitivity" not in profile:
        raise SystemExit(f"{path} holds no layer sensitivity profile")
    return Sensitivity.from_dict(profile["sensitivity"])


def frontier(space, sens: Sensitivity, points: int) -> list[dict]:
    """One row per budget: the uniform plans' own prices and ``points`` budgets between them."""
    price = {b: resolve_budget(f"uniform:{b}", space).bytes for b in UNIFORM}
    grid = [price[2] + (price[8] - price[2]) * k // points for k in range(points + 1)]
    rows = []
    for budget in sorted(set(grid) | set(price.values())):
        fits = [b for b in UNIFORM if price[b] <= budget]
        uniform = min((sens.predicted_delta([b] * space.num_layers), b) for b in fits)
        least = least_damage_bits(space, sens, budget)
        greedy = initial_bits(space, sens.scores(), budget)
        rows.append({
            "budget_mib": budget / 2**20,
            "at_uniform": next((b for b in UNIFORM if price[b] == budget), None),
            "uniform_bits": uniform[1], "uniform_delta": uniform[0],
            "least_delta": sens.predicted_delta(least), "least_bits": least,
            "greedy_delta": sens.predicted_delta(greedy), "greedy_bits": greedy,
        })  # fmt: skip
    return rows


def histogram(bits: list[int]) -> str:
    return " ".join(f"{b}b×{bits.count(b)}" for b in sorted(set(bits)))


def main() -> None:
    args = parse_args()
    model = Path(resolve_model_source(args.model))
    cfg = SearchConfig(memory_measure=args.measure, bits=(2, 3, 4, 8, 16), dtype=args.dtype)
    space = build_space(model, cfg)
    rows = frontier(space, load_sensitivity(Path(args.profile)), args.points)
    print(f"{args.measure} memory ({space.basis if args.measure == 'finetune' else 'weights + LoRA'}), "
          f"{args.dtype} plan; predicted untrained Δ loss (nats, sum over layers)\n")  # fmt: skip
    print("| budget MiB | best uniform (Δ) | least damage (Δ) | its widths | greedy (Δ) |")
    print("|---|---|---|---|---|")
    for r in rows:
        mark = f" = uniform {r['at_uniform']}-bit" if r["at_uniform"] else ""
        best = f"{r['uniform_bits']}-bit ({r['uniform_delta']:.3f})"
        least = f"{r['least_delta']:.3f} | {histogram(r['least_bits'])}"
        print(f"| {r['budget_mib']:.1f}{mark} | {best} | {least} | {r['greedy_delta']:.3f} |")
    out = {"model": str(args.model), "profile": args.profile, "measure": args.measure, "dtype": args.dtype,
           "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
