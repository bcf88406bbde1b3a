"""The project's own small LLaMA model and its corpus: what tests and a fresh clone prune.

``model`` trains (once, then cached) a 10 M-parameter LLaMA-layout model on WikiText-2 where
``../shared/data`` has it, else on ``corpus`` (Python's own help texts), so every command works
offline on a fresh machine. Results about the papers' methods come from a real pretrained
model (``qpruner fetch smollm2-135m``), not from this one.
"""

from qpruner.reference.corpus import describe_corpus, pydoc_texts, write_pydoc_corpus
from qpruner.reference.model import (
    TEST_FILE,
    TRAIN_FILE,
    ReferenceConfig,
    ReferenceResult,
    build_reference,
    cache_key,
    default_cache_dir,
    resolve_corpus,
)

__all__ = [
    "TEST_FILE",
    "TRAIN_FILE",
    "ReferenceConfig",
    "ReferenceResult",
    "build_reference",
    "cache_key",
    "default_cache_dir",
    "describe_corpus",
    "pydoc_texts",
    "resolve_corpus",
    "write_pydoc_corpus",
]
