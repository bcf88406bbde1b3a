"""What every benchmark on the reference model starts from, and how it writes its results."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from qpruner.checkpoint import load_tokenizer
from qpruner.data_sources import load_tokens
from qpruner.eval.evaluate import EvalConfig, ModelScores, evaluate_model
from qpruner.loader import load_model
from qpruner.reference import TEST_FILE, ReferenceResult, build_reference


@dataclass
class ReferenceSetup:
    """The reference model (built once, cached), its corpus, and the test tokens to score on."""

    ref: ReferenceResult
    corpus: Path
    tokenizer: object
    dense: torch.nn.Module
    ctx: int
    test_ids: torch.Tensor

    def scores(self, model: torch.nn.Module, tasks: list[str] = (), limit: int | None = None) -> ModelScores:
        """Test perplexity (windows of the model's context, non-overlapping) and ``tasks``."""
        cfg = EvalConfig(ctx_len=self.ctx, tasks=list(tasks), limit=limit, progress=False)
        return evaluate_model(model, self.tokenizer, cfg, tokens={"test": self.test_ids})

    def ppl(self, model: torch.nn.Module) -> float:
        return self.scores(model).ppl["test"].ppl


def reference_setup(max_eval_tokens: int | None) -> ReferenceSetup:
    ref = build_reference()
    corpus = Path(ref.corpus)
    tok = load_tokenizer(ref.path)
    dense = load_model(ref.path)
    ctx = dense.config.max_position_embeddings
    test_ids = load_tokens(corpus / TEST_FILE, tok)[:max_eval_tokens]
    return ReferenceSetup(ref, corpus, tok, dense, ctx, test_ids)


def write_results(path: str | Path, setup: ReferenceSetup, payload: dict) -> Path:
    """The results JSON: the reference model, the scoring set-up, then the benchmark's own payload."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = {
        "reference": setup.ref.to_dict(),
        "threads": torch.get_num_threads(),
        "eval_tokens": setup.test_ids.numel(),
        "ctx_len": setup.ctx,
    }
    out.write_text(json.dumps({**head, **payload}, indent=1, default=str))
    print(f"wrote {out}")
    return out
