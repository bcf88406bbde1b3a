"""Regenerate the shipped zero-shot task ``wikitext_cloze`` from WikiText-2's test split.

    python benchmarks/make_wikitext_cloze.py [--corpus DIR] [--items 500] [--seed 0]

Each item is a passage of 15-50 words from a test article (the reference model never trains
on these articles) and four candidate next words: the word that really follows, and three
distractors with nearly the same corpus frequency (neighbours in the frequency ranking,
same capitalisation), drawn so that the real word is equally likely to be the most, second,
third or least frequent of the four. Knowing which words are common therefore does not
help; only reading the passage does, so a better language model scores higher and a
unigram model stays near chance (25 %). The BAND most frequent words of each
capitalisation ("the", "of", "The", ...) are never blanked: nothing is more frequent than
them, so they would always be the most frequent choice. The script prints the baselines.

Writes src/qpruner/eval/tasks/wikitext_cloze/wikitext_cloze.jsonl (deterministic: same
corpus and seed, same bytes). WikiText-2 (Merity et al., 2016) is CC BY-SA 3.0; the items
are excerpts of it and carry that licence.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

from qpruner.errors import QPrunerError
from qpruner.reference import TEST_FILE, TRAIN_FILE, resolve_corpus

OUT = Path(__file__).resolve().parents[1] / "src/qpruner/eval/tasks/wikitext_cloze/wikitext_cloze.jsonl"
WORD = re.compile(r"[A-Za-z]+")
MIN_CONTEXT, MAX_CONTEXT = 15, 50  # words of passage before the blank
BAND = 20  # distractors come from the 2 x BAND words nearest in frequency rank
N_CHOICES = 4


def _is_word(w: str) -> bool:
    return bool(WORD.fullmatch(w)) and w != "unk"


def _paragraphs(text: str) -> list[tuple[int, list[str]]]:
    """(line number, words) of article body lines; headings (`` = Title = ``) are skipped."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if words and words[0] != "=":
            out.append((n, words))
    return out


def _context_start(words: list[str], i: int) -> int:
    """Start at the latest sentence start leaving at least MIN_CONTEXT words, else cut at MAX_CONTEXT."""
    for s in range(i - MIN_CONTEXT, max(-1, i - MAX_CONTEXT - 1), -1):
        if s == 0 or words[s - 1] in (".", "!", "?"):
            return s
    return max(0, i - MAX_CONTEXT)


def _stable(word: str) -> str:
    """Tie-break for equal counts that does not sort look-alike words (same prefix) together."""
    return hashlib.sha1(word.encode()).hexdigest()


def build_items(test_text: str, n_items: int, seed: int) -> list[dict]:
    paragraphs = _paragraphs(test_text)
    counts = Counter(w for _, words in paragraphs for w in words if _is_word(w))
    # Frequency ranking per capitalisation class, so a capitalised name is never offered
    # against lower-case words (capitalisation alone would give it away).
    ranking: dict[bool, list[str]] = {}
    for cap in (False, True):
        vocab = [w for w in counts if w[0].isupper() == cap]
        ranking[cap] = sorted(vocab, key=lambda w: (-counts[w], _stable(w)))
    rank = {w: r for cap in ranking for r, w in enumerate(ranking[cap])}

    rng = random.Random(seed)
    order = list(range(len(paragraphs)))
    rng.shuffle(order)
    items = []
    for p in order:  # at most one item per paragraph: 500 different passages
        line, words = paragraphs[p]
        slots = [i for i in range(MIN_CONTEXT, len(words)) if _is_word(words[i]) and rank[words[i]] >= BAND]
        if not slots:
            continue
        i = rng.choice(slots)
        target = words[i]
        cap = target[0].isupper()
        r = rank[target]
        above = [w for w in ranking[cap][r - BAND : r] if w.lower() != target.lower()]
        below = [w for w in ranking[cap][r + 1 : r + BAND + 1] if w.lower() != target.lower()]
        if r < BAND or len(below) < N_CHOICES - 1:
            continue
        k = rng.randrange(N_CHOICES)  # how many distractors are more frequent than the target
        choices = [target, *rng.sample(above, k), *rng.sample(below, N_CHOICES - 1 - k)]
        rng.shuffle(choices)
        context = " ".join(words[_context_start(words, i) : i])
        items.append({"context": context, "choices": choices, "label": choices.index(target), "line": line})
        if len(items) == n_items:
            break
    if len(items) < n_items:
        raise QPrunerError(f"only {len(items)} items could be built, {n_items} asked")
    return items


def baselines(items: list[dict], train_text: str) -> dict[str, float]:
    """Accuracy of non-reading strategies: chance, unigram frequency (training text), and
    'pick a word already in the passage' (ties broken by frequency)."""
    train = Counter(train_text.split())
    unigram = sum(max(range(N_CHOICES), key=lambda k: train[it["choices"][k]]) == it["label"] for it in items)
    copy = 0
    for it in items:
        seen = set(it["context"].split())
        pick = max(range(N_CHOICES), key=lambda k: (it["choices"][k] in seen, train[it["choices"][k]]))
        copy += pick == it["label"]
    n = len(items)
    return {"chance": 1 / N_CHOICES, "unigram": unigram / n, "copy_then_unigram": copy / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="WikiText-2 directory (default: $QPRUNER_DATA or ../shared/data)")
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    try:
        corpus = resolve_corpus(args.corpus, fallback=False)
        items = build_items((corpus / TEST_FILE).read_text(encoding="utf-8"), args.items, args.seed)
    except QPrunerError as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
    base = baselines(items, (corpus / TRAIN_FILE).read_text(encoding="utf-8"))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    print(f"wrote {len(items)} items to {out} ({out.stat().st_size:,} bytes, sha256 {digest}...)")
    print("  ".join(f"{k} {100 * v:.1f}%" for k, v in base.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
