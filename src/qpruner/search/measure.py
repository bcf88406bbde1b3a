"""What a memory budget counts, and how its bytes are named wherever they are printed.

Kept apart from :mod:`qpruner.search.space` (which prices plans with the memory model, and so
loads torch) because the summary and the report name the measure too and load neither.
"""

from __future__ import annotations

#: What a budget limits. "finetune": the whole fine-tuning step (weights, LoRA, AdamW, step
#: peak) at the trials' batch shape, the papers' measure. "weights": what serving the adapted
#: model holds, the packed base plus its unmerged adapters. A layer's width changes only its
#: weights, so both price the same trades between layers; they differ in what the bytes say
#: (on a 135M model at 4 × 256 tokens activations are most of a fine-tuning step, so its
#: figure says little about the served size) and, once, in the step's dequantization transient.
MEASURES = ("finetune", "weights")
WEIGHT_PARTS = ("packed_weights", "dense_weights", "lora_params")


def basis_of(measure: str, tokens: str | None) -> str:
    """``at 4 × 256 tokens`` (fine-tuning) or ``in weights + LoRA (serving)``: said beside bytes."""
    if measure == "weights":
        return "in weights + LoRA (serving)"
    return f"at {tokens}" if tokens else ""
