"""A small LLaMA-architecture reference model, trained here from scratch.

No pretrained model can be downloaded on our machines, yet pruning and quantization need a
*trained* model to be measured against: a random one has no structure to lose. So we train
one on WikiText-2 in about ten CPU minutes (on Python's own help texts where WikiText-2 is
absent, see :mod:`qpruner.reference.corpus`), with the same layout as LLaMA (RMSNorm, SwiGLU,
RoPE, grouped-query attention), so every code path that touches a real LLaMA runs on it.

Everything is deterministic (seeded init, fixed data order, deterministic kernels) and the
result is cached under a key derived from the configuration and the corpus bytes, so the
benchmarks and slow tests of every developer see the same weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qpruner.atomic_dir import replace_dir
from qpruner.data_sources import load_tokens, shared_data_candidates
from qpruner.errors import QPrunerError
from qpruner.reference.config import ReferenceConfig
from qpruner.reference.corpus import describe_corpus, write_pydoc_corpus
from qpruner.reference.training import deterministic_algorithms, train_fresh_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Bump when the training recipe or the saved layout changes, so old cache entries are not reused.
FORMAT_VERSION = 1
TRAIN_FILE = "valid.txt"  # WikiText-2's train split is not available here; valid and test are disjoint
TEST_FILE = "test.txt"
METRICS_FILE = "reference.json"
# Bracketed-pipe names, because WikiText already contains the literal text "<unk>" as a word.
SPECIAL_TOKENS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
    "unk_token": "<|unk|>",
}


@dataclass
class ReferenceResult:
    path: Path  # HF-format dir: config.json + model.safetensors + tokenizer files
    test_ppl: float
    unigram_ppl: float
    params: int
    train_seconds: float
    cached: bool  # True when loaded from the cache without training
    corpus: str  # corpus directory used
    corpus_name: str = ""  # "wikitext-2", or "pydoc_data (Python 3.x.y)" when WikiText-2 was absent
    vocab_size: int = 0
    train_tokens: int = 0
    test_tokens: int = 0
    tokens_per_second: float = 0.0
    total_seconds: float = 0.0  # tokenizer + training + evaluation of the build that made the entry
    final_loss: float = float("nan")
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def default_cache_dir() -> Path:
    return Path(os.environ.get("QPRUNER_CACHE") or Path.home() / ".cache" / "qpruner")


def resolve_corpus(
    corpus_dir: str | Path | None = None, fallback: bool = True, cache_dir: str | Path | None = None
) -> Path:
    """The WikiText-2 directory: explicit argument, else ``$QPRUNER_DATA/wikitext-2``, else the first
    ``shared/data/wikitext-2`` found walking up from the working directory or from the package
    (``../shared`` in CI).

    Without an explicit ``corpus_dir`` and with ``fallback``, a missing WikiText-2 is replaced by
    Python's help texts, written under ``cache_dir`` (default cache) in the same two-file layout,
    so a fresh clone still gets a trained reference model; :func:`describe_corpus` names it.
    """
    candidates = [Path(corpus_dir)] if corpus_dir is not None else shared_data_candidates("wikitext-2")
    for c in candidates:
        if (c / TRAIN_FILE).is_file() and (c / TEST_FILE).is_file():
            return c
    if corpus_dir is None and fallback:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return write_pydoc_corpus(root, TRAIN_FILE, TEST_FILE)
    looked = ", ".join(str(c) for c in candidates)
    raise QPrunerError(
        f"WikiText-2 corpus ({TRAIN_FILE} + {TEST_FILE}) not found; looked in: {looked}. "
        "Pass corpus_dir or set QPRUNER_DATA to the folder holding wikitext-2/"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(config: ReferenceConfig, corpus: Path) -> str:
    """Short hash of everything that determines the weights and the metrics."""
    payload = {
        "config": asdict(config),
        "corpus": {name: _sha256(corpus / name) for name in (TRAIN_FILE, TEST_FILE)},
        "format": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_tokenizer(text: str, vocab_size: int, max_length: int):
    """Byte-level BPE on the training text, wrapped as a ``PreTrainedTokenizerFast``.

    Pieces are split at spaces only (each word keeps its leading space), so WikiText's ``<unk>``
    and ``@-@`` markers become single tokens; byte-level coding means nothing is ever unknown,
    and the ByteLevel decoder gives back the exact text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="merged_with_next"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,  # keep WikiText's " , " spacing: exact round trip
        **SPECIAL_TOKENS,
    )


def unigram_ppl(train_ids: torch.Tensor, test_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of add-one-smoothed token frequencies: the floor a language model must clear.

    Scores the same tokens as :func:`perplexity` does, i.e. all test tokens but the first.
    """
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[test_ids[1:]].mean().item())


def _load_cached(path: Path) -> ReferenceResult | None:
    """The entry at ``path`` if it is complete, else None (it will be rebuilt and replaced)."""
    try:
        stored = json.loads((path / METRICS_FILE).read_text())["result"]
        fields = {k: v for k, v in stored.items() if k in ReferenceResult.__dataclass_fields__}
        fields.setdefault("corpus_name", describe_corpus(Path(fields["corpus"])))  # older entries
        result = ReferenceResult(**{**fields, "path": path, "cached": True})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        return None
    return result


def _tokenized(
    corpus: Path, cfg: ReferenceConfig
) -> tuple[PreTrainedTokenizerFast, torch.Tensor, torch.Tensor]:
    """A tokenizer trained on the training split alone (the test split stays unseen), and both
    splits in its token ids."""
    train_text = (corpus / TRAIN_FILE).read_text(encoding="utf-8")
    tokenizer = train_tokenizer(train_text, cfg.vocab_size, cfg.max_position_embeddings)
    train_ids = load_tokens(corpus / TRAIN_FILE, tokenizer)
    test_ids = load_tokens(corpus / TEST_FILE, tokenizer)
    return tokenizer, train_ids, test_ids


def build_reference(
    config: ReferenceConfig | None = None,
    corpus_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> ReferenceResult:
    """Train (or fetch from the cache) the reference model and report its test perplexity.

    The entry is written into a temporary directory beside its final place and renamed in one
    step, so an interrupted build never leaves a half-written model that a later run would trust.
    """
    from qpruner.eval.perplexity import perplexity

    cfg = config or ReferenceConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    corpus = resolve_corpus(corpus_dir, cache_dir=root)
    final = root / "reference" / cache_key(cfg, corpus)
    if not force and (hit := _load_cached(final)) is not None:
        return hit

    t0 = time.perf_counter()
    tokenizer, train_ids, test_ids = _tokenized(corpus, cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with deterministic_algorithms():
        model, (train_seconds, final_loss, tokens) = train_fresh_model(
            cfg, tokenizer, train_ids, device=device, progress=progress
        )
        res = perplexity(
            model,
            test_ids,
            ctx_len=cfg.seq_len,
            stride=cfg.seq_len // 2,
            batch_size=cfg.eval_batch_size,
            progress=progress,
        )

    vocab = len(tokenizer)
    result = ReferenceResult(
        path=final,
        test_ppl=res.ppl,
        unigram_ppl=unigram_ppl(train_ids, test_ids, vocab),
        params=sum(p.numel() for p in model.parameters()),
        train_seconds=train_seconds,
        cached=False,
        corpus=str(corpus),
        corpus_name=describe_corpus(corpus),
        vocab_size=vocab,
        train_tokens=int(train_ids.numel()),
        test_tokens=int(test_ids.numel()),
        tokens_per_second=tokens / train_seconds,
        total_seconds=time.perf_counter() - t0,
        final_loss=final_loss,
        extra={"device": device.type, "ctx_len": res.ctx_len, "stride": res.stride, "scored": res.tokens},
    )
    _save_atomically(model, tokenizer, cfg, result, final)
    return result


def _save_atomically(model, tokenizer, cfg: ReferenceConfig, result: ReferenceResult, final: Path) -> None:
    from transformers.utils import logging as hf_logging

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per save is noise here
    try:
        model.save_pretrained(tmp)  # safetensors; no pickles anywhere
        tokenizer.save_pretrained(tmp)
        metrics = {"format": FORMAT_VERSION, "config": asdict(cfg), "result": result.to_dict()}
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        for f in (tmp, *tmp.iterdir()):  # mkdtemp (and the safetensors writer) make them private
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        try:
            replace_dir(tmp, final)  # force=True, or an incomplete entry, is swapped out
        except OSError:
            if _load_cached(final) is None:
                raise  # otherwise a concurrent build of the same key won the race, with equal weights
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
        if bars:
            hf_logging.enable_progress_bar()
