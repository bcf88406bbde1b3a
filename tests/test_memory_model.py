"""The memory model against measurement: the fine-tuning step's predicted peak within 5 %.

For every weight format, with and without activation checkpointing, on both compute paths
(float32, and bf16 autocast as the CPU default takes it where bf16 is fast), one real
training step of a tiny model is metered (TensorPeakMeter, the tensors alive at once) and
compared with ``qpruner.memory.estimate`` for the same plan and batch shape.
"""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_model

from qpruner import Plan, apply_plan
from qpruner.lora.data import Example
from qpruner.lora.train import TrainConfig, train
from qpruner.memory import estimate

FORMATS = ["fp32", "nf4", "fp4", "int8", "hqq4", "hqq3", "hqq2"]
BATCH, SEQ = 4, 64


def _examples(n: int) -> list[Example]:
    rows = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(0)).tolist()
    return [Example(r, list(r)) for r in rows]


def _measure(fmt: str, *, checkpointing: bool, compute: str, tmp_path) -> tuple[int, int]:
    torch.manual_seed(0)
    model = make_model("gqa", layers=3)
    plan = Plan.uniform(3, fmt, rank=8, dtype="fp32")
    cfg = TrainConfig(
        steps=2, batch_size=BATCH, micro_batch=BATCH, cutoff_len=SEQ, warmup_steps=1, save_every=2,
        gradient_checkpointing=checkpointing, compute_dtype=compute,
    )  # fmt: skip
    res = train(apply_plan(model, plan), _examples(2 * BATCH), cfg, tmp_path, pad_id=0, progress=False)
    predicted = estimate(model.config, plan, BATCH, SEQ, checkpointing, compute_dtype=compute,
                         loss_chunk=cfg.loss_chunk)  # fmt: skip
    return predicted.components["step_peak"], res.step_tensor_peak


@pytest.mark.parametrize("compute", ["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_predicted_step_peak_is_within_5_percent(fmt, checkpointing, compute, tmp_path):
    predicted, measured = _measure(fmt, checkpointing=checkpointing, compute=compute, tmp_path=tmp_path)
    assert measured > 0
    assert abs(predicted / measured - 1) <= 0.05, f"predicted {predicted:,} vs measured {measured:,}"
