"""A training corpus that every Python installation carries: the ``pydoc_data`` help topics.

The reference model is trained on WikiText-2, which lives outside the repository
(``../shared/data``). A user's fresh clone has no such folder and no hub to fetch it from,
yet ``qpruner reference`` should still produce a trained model to prune. Python ships the
text of its language reference as ``pydoc_data.topics.topics`` (~80 topics, ~460 KB of
English prose and code), so that is the fallback.

The split is deterministic and held out at the paragraph level: topics repeat each other
verbatim (``numeric-types`` is part of ``specialnames``), so a paragraph is kept only where
it first occurs, and whole topics, taken in an order fixed by hashing their names, go to the
test text until it holds about a fifth of the characters. Test paragraphs therefore never
occur in the training text. The text differs between Python versions; the folder name
carries the version and the reference cache key hashes the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

NAME = "pydoc_data"
SOURCE_FILE = "corpus.json"  # marks a generated corpus folder and says what it is
TEST_SHARE = 0.2


def pydoc_texts() -> tuple[str, str, dict]:
    """(train text, test text, description) from this interpreter's help topics."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    unique: dict[str, str] = {}
    for name in sorted(topics):
        paragraphs = []
        for para in topics[name].split("\n\n"):
            key = para.strip()
            if key and key not in seen:
                seen.add(key)
                paragraphs.append(para.strip("\n"))
        if paragraphs:
            unique[name] = "\n\n".join(paragraphs)
    total = sum(len(t) for t in unique.values())
    test: list[str] = []
    size = 0
    for name in sorted(unique, key=lambda n: hashlib.sha256(n.encode()).hexdigest()):
        if size + len(unique[name]) <= TEST_SHARE * total:
            test.append(name)
            size += len(unique[name])
    train = [n for n in sorted(unique) if n not in test]
    info = {
        "name": NAME,
        "python": platform.python_version(),
        "train_topics": len(train),
        "test_topics": sorted(test),
        "note": "Python's own help texts (pydoc_data.topics), used because WikiText-2 was not found",
    }
    join = "\n\n".join
    return join(unique[n] for n in train) + "\n", join(unique[n] for n in sorted(test)) + "\n", info


def write_pydoc_corpus(root: Path, train_file: str, test_file: str) -> Path:
    """Write the corpus under ``root/corpus/pydoc_data-<python version>/`` (once) and return it."""
    train, test, info = pydoc_texts()
    folder = Path(root) / "corpus" / f"{NAME}-{info['python']}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {train_file: train, test_file: test, SOURCE_FILE: json.dumps(info, indent=2) + "\n"}
    for name, text in files.items():
        path = folder / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=folder)  # atomic: readers never see half a file
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return folder


def describe_corpus(folder: Path) -> str:
    """Human name of a corpus folder: ``pydoc_data (Python 3.11.7)`` or the folder's name."""
    try:
        info = json.loads((Path(folder) / SOURCE_FILE).read_text())
        return f"{info['name']} (Python {info['python']})"
    except (OSError, ValueError, KeyError, TypeError):
        return Path(folder).name
