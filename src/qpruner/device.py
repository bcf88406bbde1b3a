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


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 matmuls beat float32 on ``device``.

    True on CUDA GPUs with bf16 support and on CPUs with AVX512-BF16 or AMX (oneDNN then runs
    bf16 GEMMs at about 2.3x the float32 rate on the model's shapes, measured in
    ``benchmarks/throughput_bench.py``). Elsewhere bf16 is emulated and slower than float32.
    torch has no public CPU-feature query; its private probes are read defensively.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


COMPUTE_DTYPES = ("auto", "fp32", "bf16")


def resolve_compute_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """``auto``: bfloat16 where :func:`fast_bf16` says it is fast, else float32.

    The compute dtype is what matmuls run in (``torch.autocast``); weights keep the plan's
    dtype and LoRA weights, gradients and optimizer states stay float32.
    """
    if name not in COMPUTE_DTYPES:
        raise QPrunerError(f"unknown compute dtype {name!r}; choose from {', '.join(COMPUTE_DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    return _DTYPES[name]
