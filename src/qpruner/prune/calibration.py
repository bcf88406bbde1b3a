"""Calibration samples: N windows of L tokens drawn from user text (LLM-Pruner: 10 x 128)."""

from __future__ import annotations

from pathlib import Path

import torch

from qpruner.data_sources import load_text
from qpruner.errors import QPrunerError

# Characters per sample to tokenise before giving up on a prefix: avoids tokenising a
# multi-GB corpus to draw ten windows. Generous: even byte-level tokenisers average >1.
_CHARS_PER_TOKEN_BUDGET = 64


def calibration_samples(
    source: str | Path, tokenizer, n_samples: int = 10, seq_len: int = 128, seed: int = 0
) -> torch.Tensor:
    """``[n_samples, seq_len]`` token windows at seeded random offsets of the text."""
    text = load_text(source)
    budget = n_samples * seq_len * _CHARS_PER_TOKEN_BUDGET
    ids = tokenizer(text[:budget], return_tensors="pt", verbose=False).input_ids[0]
    if ids.numel() < seq_len + 1 and len(text) > budget:
        ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
    if ids.numel() < seq_len + 1:
        raise QPrunerError(
            f"calibration text {source} has {ids.numel()} tokens; need more than seq_len={seq_len}"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=gen)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
