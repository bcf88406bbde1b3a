"""Load any model qpruner writes or reads, by what its directory holds.

Sits above every stage: a recovered directory needs ``qpruner.lora`` (quantized base plus
adapter), while the stages themselves only ever load base models through
:func:`qpruner.checkpoint.load_base_model`. Keeping the dispatch here, not in
``checkpoint``, is what keeps ``checkpoint`` below ``lora`` (no import circle).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qpruner.checkpoint import RECOVERY_FILE, load_base_model


def is_recovered_dir(source: str | Path) -> bool:
    path = Path(str(source)).expanduser()
    return path.is_dir() and (path / RECOVERY_FILE).is_file()


def load_model(
    source: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """A recovered directory (quantized base + adapter, as trained), a pruned qpruner directory,
    a HF model directory, a GGUF file, a catalog name (``smollm2-135m``) or a hub model id."""
    if is_recovered_dir(source):
        from qpruner.lora.export import load_recovered

        return load_recovered(source, device=device)
    return load_base_model(source, dtype=dtype, device=device)
