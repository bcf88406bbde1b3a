"""The meters behind 'measured': tensor-level peak and resident-set peak."""

from __future__ import annotations

import sys

import pytest
import torch

from qpruner.memory import MemoryReport, PeakMeter, TensorPeakMeter, format_memory_table


def test_tensor_peak_counts_live_storages_once():
    kept = torch.zeros(10_000)  # exists before: updated in place, not an allocation of the block
    with TensorPeakMeter(exclude=[kept]) as meter:
        a = torch.ones(1000)  # 4,000 bytes
        view = a[:10]  # same storage: not counted again
        b = torch.ones(2000)  # live: 12,000
        del a, view
        c = torch.ones(500)  # a freed: 8,000 + 2,000 = 10,000 < 12,000
        kept.add_(1.0)
        del b, c
    assert meter.peak == 12_000
    assert meter.live == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/clear_refs")
def test_rss_peak_sees_a_transient_allocation():
    with PeakMeter(torch.device("cpu")) as meter:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    assert meter.growth is not None and meter.growth >= 60 * 2**20


def test_memory_table_lists_every_component():
    pred = MemoryReport({"packed_weights": 2**20, "dense_weights": 0, "lora_params": 1, "optimizer_states": 2,
                         "step_peak": 3 * 2**20})  # fmt: skip
    text = format_memory_table(pred, MemoryReport.from_dict(pred.to_dict()))
    assert "packed weights" in text and "AdamW states" in text and text.count("4.00 MiB") == 2
