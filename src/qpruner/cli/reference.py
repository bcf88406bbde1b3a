"""``qpruner reference``: train (or reuse) the project's small reference LLaMA model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qpruner.preflight import Checks

CHECKS = Checks(inputs=("corpus_dir",))


def add_parser(sub) -> None:
    r = sub.add_parser("reference", help="train (or reuse) the project's small reference LLaMA model")
    r.add_argument("--corpus-dir", help="folder with valid.txt (train) and test.txt (eval)")
    r.add_argument("--cache-dir", help="cache root (default $QPRUNER_CACHE or ~/.cache/qpruner)")
    r.add_argument("--force", action="store_true", help="retrain even if cached")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")


def announce_build(
    *, corpus_dir: str | None = None, cache_dir: str | None = None, force: bool = False
) -> None:
    """Say what is about to take minutes before it starts: the first use trains the model.

    Checks the cache where :func:`qpruner.reference.build_reference` will look (same corpus,
    same key), and that the cache can be written, so a read-only cache fails now, not after
    training.
    """
    from qpruner.preflight import probe_writable
    from qpruner.reference import (
        ReferenceConfig,
        cache_key,
        default_cache_dir,
        describe_corpus,
        resolve_corpus,
    )
    from qpruner.reference.model import METRICS_FILE

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    corpus = resolve_corpus(corpus_dir, cache_dir=root)
    entry = root / "reference" / cache_key(ReferenceConfig(), corpus)
    cached = all((entry / f).is_file() for f in ("config.json", "model.safetensors", METRICS_FILE))
    if cached and not force:
        return
    existing = next(d for d in (entry, *entry.parents) if d.exists())
    probe_writable(existing)
    print(
        f"qpruner: training the reference model on {describe_corpus(corpus)} (first use; about 10 minutes "
        f"on 2 CPU cores, cached afterwards in {entry.parent})",
        file=sys.stderr,
        flush=True,
    )


def run(args: argparse.Namespace) -> None:
    from qpruner.reference import build_reference

    announce_build(corpus_dir=args.corpus_dir, cache_dir=args.cache_dir, force=args.force)
    res = build_reference(
        corpus_dir=args.corpus_dir, cache_dir=args.cache_dir, force=args.force, progress=not args.no_progress
    )
    state = "cached" if res.cached else f"trained in {res.train_seconds:.0f}s"
    print(f"reference model: {res.path} ({res.params:,} params, {state})")
    print(f"corpus: {res.corpus_name} at {res.corpus}")
    if res.corpus_name.startswith("pydoc_data"):
        print("note: WikiText-2 not found; trained on Python's help texts, so figures differ from the README")
    print(f"test perplexity: model {res.test_ppl:.2f}   unigram {res.unigram_ppl:.2f}")
