"""Layer sensitivity on the real model (issue 15 item 2): is the cheap measurement, or a proxy, right?

SmolLM2-135M (dense, or pruned with ``--model DIR``): each decoder layer alone at 2 and 3 bits
(the real hqq kernels, every other layer unquantized), Δ loss without training, measured twice:

- **cheap**: on the calibration tokens a search uses (16 x 128 from WikiText-2 ``valid.txt``,
  the default of ``qpruner search --calib-data``), what ``--layer-importance sensitivity`` costs;
- **held out**: on ``--heldout-tokens`` of WikiText-2 ``test.txt`` (the reference figure).

Beside them QPruner's proxies on the same calibration tokens: MI and Taylor importance. The
table gives, per layer, Δ perplexity (held out) and each measure; under it each measure's
Spearman ρ against the held-out Δ at each width, and each measure's seconds. JSON beside it
(``results/sensitivity_bench.json``) and the report's figure (``results/sensitivity_bench.png``).

    python benchmarks/sensitivity_bench.py          # ~10 min on 2 quiet CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from qpruner.checkpoint import load_tokenizer
from qpruner.loader import load_model
from qpruner.models.catalog import resolve_model_source
from qpruner.prune.calibration import calibration_samples
from qpruner.reference import resolve_corpus
from qpruner.search.figures import sensitivity_png
from qpruner.search.layer_importance import layer_profile
from qpruner.search.sensitivity import Sensitivity, measure_sensitivity, spearman

ROOT = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="catalog name or model directory")
    ap.add_argument("--calib", type=int, default=16, help="calibration windows of 128 tokens")
    ap.add_argument("--heldout-tokens", type=int, default=4096, help="test.txt tokens (windows of 512)")
    ap.add_argument("--out", default=str(ROOT / "results" / "sensitivity_bench.json"))
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    src = Path(resolve_model_source(args.model))
    corpus = resolve_corpus(fallback=False)
    tok = load_tokenizer(src)
    model = load_model(src)
    calib = calibration_samples(corpus / "valid.txt", tok, args.calib, 128, seed=0)
    heldout = calibration_samples(corpus / "test.txt", tok, max(1, args.heldout_tokens // 512), 512, seed=0)
    t0 = time.perf_counter()
    profile = layer_profile(model, calib, progress=True)  # cheap sensitivity, MI and Taylor
    reference = measure_sensitivity(model, heldout, progress=True)
    cheap = Sensitivity.from_dict(profile["sensitivity"])
    measures = {"cheap sensitivity": cheap.scores(), "mi": profile["mi"], "taylor": profile["taylor"]}
    rho = {
        f"{name} vs held-out {b}-bit": spearman(scores, reference.column(b))
        for name, scores in measures.items()
        for b in reference.bits
    }
    seconds = {**profile["seconds"], "held-out sensitivity": reference.seconds}
    result = {
        "model": str(args.model),
        "layers": len(reference.delta),
        "calib_tokens": int(calib.numel()),
        "heldout_tokens": reference.tokens,
        "heldout": reference.to_dict(),
        "profile": profile,
        "spearman_vs_heldout": rho,
        "seconds": seconds,
        "wall_seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    write_figure(result, out.with_suffix(".png"))
    print(table(result))


def write_figure(r: dict, path: Path) -> None:
    """The report's figure over the held-out measurement, with the proxies' ρ against it."""
    rho = {
        k.replace(" held-out", ""): v for k, v in r["spearman_vs_heldout"].items() if "sensitivity" not in k
    }
    figure = {
        "sensitivity": r["heldout"],
        "mi": r["profile"]["mi"],
        "taylor": r["profile"]["taylor"],
        "spearman": rho,
    }
    path.write_bytes(sensitivity_png(figure))


def table(r: dict) -> str:
    ref, prof = r["heldout"], r["profile"]
    base = math.exp(ref["base_loss"])
    lines = [
        f"{r['model']}: held-out perplexity {base:.2f} on {r['heldout_tokens']} tokens; "
        f"calibration {r['calib_tokens']} tokens",
        "| layer | Δppl 2-bit | Δppl 3-bit | cheap Δloss 2/3-bit | MI | Taylor |",
        "|---|---|---|---|---|---|",
    ]
    cheap = prof["sensitivity"]["delta"]
    for i, row in enumerate(ref["delta"]):
        d2, d3 = (base * (math.exp(d) - 1) for d in row)
        lines.append(
            f"| {i} | {d2:+.2f} | {d3:+.2f} | {cheap[i][0]:+.4f} / {cheap[i][1]:+.4f} "
            f"| {prof['mi'][i]:.3f} | {prof['taylor'][i]:.3g} |"
        )
    lines += ["", "| measure | Spearman ρ vs held-out Δ |", "|---|---|"]
    lines += [f"| {k} | {'n/a' if v is None else f'{v:.2f}'} |" for k, v in r["spearman_vs_heldout"].items()]
    lines += ["", "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
