"""Device and dtype choice, one place so that CPU and CUDA runs share every other line."""

from __future__ import annotations

import torch

from qpruner.errors import QPrunerError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise QPrunerError(f"unknown device {name!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QPrunerError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA (halves memory, LLM-Pruner's setting), the checkpoint's own dtype on CPU."""
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else None
    if name not in _DTYPES:
        raise QPrunerError(f"unknown dtype {name!r}; choose from auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]
