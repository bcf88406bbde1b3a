"""Build (or fetch from the cache) the reference model and report how well it learned.

    python benchmarks/reference_model.py [--force] [--corpus DIR] [--cache DIR]

Prints test perplexity against the unigram baseline and writes benchmarks/results/reference.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qpruner.errors import QPrunerError
from qpruner.reference import build_reference

OUT = Path(__file__).resolve().parent / "results" / "reference.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="retrain even if the cache has the model")
    ap.add_argument("--corpus", help="WikiText-2 directory (default: $QPRUNER_DATA or ../shared/data)")
    ap.add_argument("--cache", help="cache directory (default: $QPRUNER_CACHE or ~/.cache/qpruner)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        res = build_reference(corpus_dir=args.corpus, cache_dir=args.cache, force=args.force)
    except QPrunerError as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    rows = [
        ("model", f"{res.test_ppl:.2f}"),
        ("unigram baseline", f"{res.unigram_ppl:.2f}"),
    ]
    print(f"\nreference model: {res.path}{'  (cached)' if res.cached else ''}")
    print(f"{'test perplexity':<20}{res.corpus_name + ' test':>16}")
    for name, value in rows:
        print(f"{name:<20}{value:>16}")
    print(
        f"params {res.params:,} | vocab {res.vocab_size} | train {res.train_seconds:.0f} s "
        f"({res.tokens_per_second:.0f} tok/s) | build {res.total_seconds:.0f} s | this run {wall:.1f} s"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({**res.to_dict(), "wall_seconds": wall}, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
