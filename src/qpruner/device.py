"""Device and dtype choice, one place so that CPU and CUDA runs share every other line."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import time
from pathlib import Path

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

    CUDA: GPUs with bf16 support. CPU: one with AVX512-BF16 or AMX, *and* where a timed GEMM
    says so (:func:`_bf16_gemm_wins`). The flag alone misleads: on the AMD EPYC this project was
    first measured on, oneDNN ran bf16 GEMMs at 4.4x the float32 rate at the model's shapes, but
    on an Intel Xeon reporting the same AVX512-BF16 flag they ran at half the float32 rate
    (164 vs 313 GFLOP/s), and a SmolLM2-shaped training step ran at 203 tokens/s under bf16
    autocast against 360 in float32. Without
    the flag bf16 is emulated and slower. torch has no public CPU-feature query; its private
    probes are read defensively.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if not any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes):
        return False
    return _bf16_gemm_wins()


#: bf16 must beat float32 by this factor to be chosen: near a tie float32 is as fast and exact.
BF16_MARGIN = 1.25
_PROBED = (torch.float32, torch.bfloat16)


@functools.cache
def _bf16_gemm_wins() -> bool:
    """Whether bf16 GEMMs beat float32 here, measured once per machine.

    Kept in ``$QPRUNER_CACHE/cpu_bf16.json`` under the CPU model, torch version and thread
    count, so every process on the machine makes the same choice: the memory model prices
    activations by it, and two search workers that timed it differently on busy cores priced
    one budget differently (seen: a worker refused its study, "budget differ").
    """
    from qpruner.models.catalog import default_cache_dir

    path, key = default_cache_dir() / "cpu_bf16.json", _machine_key()
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    stored = stored if isinstance(stored, dict) else {}
    if isinstance(stored.get(key), bool):
        return stored[key]
    wins = _time_bf16_against_fp32()
    with contextlib.suppress(OSError):  # a read-only cache: measured again next process
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**stored, key: wins}, indent=1))
        os.replace(tmp, path)
    return wins


def _machine_key() -> str:
    model = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = found.group(1).strip() if found else model
    return f"{model} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _time_bf16_against_fp32() -> bool:
    """A 512 x 1024 x 1024 GEMM in each dtype, interleaved, best of five (~0.1 s); busy cores
    slow both alike, so the ratio holds where the rates do not."""
    pairs = {dt: (torch.randn(512, 1024, dtype=dt), torch.randn(1024, 1024, dtype=dt)) for dt in _PROBED}
    best = dict.fromkeys(_PROBED, float("inf"))
    for a, b in pairs.values():
        a @ b  # oneDNN's first call picks and compiles its kernel
    for _ in range(5):
        for dt, (a, b) in pairs.items():
            start = time.perf_counter()
            a @ b
            best[dt] = min(best[dt], time.perf_counter() - start)
    return best[torch.float32] > BF16_MARGIN * best[torch.bfloat16]


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
