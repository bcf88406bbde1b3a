"""The quantization backends, and the format-generic functions the rest of qpruner calls.

Nothing outside the backend files switches on a format name: callers ask the registry, the
registry asks the backend that owns the format (or the module). The plan takes its packed
formats and its ``--bits N`` defaults from here, so a backend's formats exist everywhere
(validation, search, memory model) as soon as it is listed in :data:`BACKENDS`.

Importing this module loads torch but neither bitsandbytes nor hqq: format declarations are
class attributes, and the libraries load when a module is quantized or recognised.
"""

from __future__ import annotations

import torch
from torch import nn

from qpruner.errors import QPrunerError
from qpruner.quant.backend import Backend, as_out_in, own_tensors
from qpruner.quant.bnb import BnbBackend
from qpruner.quant.hqq import HqqBackend

#: Every backend; a new one is a new file with a :class:`Backend` subclass, listed here.
BACKENDS: tuple[Backend, ...] = (BnbBackend(), HqqBackend())


def _format_owners(backends: tuple[Backend, ...]) -> dict[str, Backend]:
    owners: dict[str, Backend] = {}
    for backend in backends:
        for fmt in backend.formats:
            if fmt in owners:
                raise QPrunerError(
                    f"format {fmt!r} is declared by both {owners[fmt].name} and {backend.name}"
                )
            owners[fmt] = backend
    return owners


def _bit_defaults(backends: tuple[Backend, ...]) -> dict[int, str]:
    defaults: dict[int, str] = {}
    for backend in backends:
        for fmt in backend.defaults:
            bits = backend.formats[fmt]
            if bits in defaults:
                raise QPrunerError(f"both {defaults[bits]!r} and {fmt!r} claim to be the {bits}-bit default")
            defaults[bits] = fmt
    return dict(sorted(defaults.items(), reverse=True))


_OWNERS = _format_owners(BACKENDS)
#: Packed formats and their bits per weight (before scales), in backend order.
PACKED_FORMATS: dict[str, int] = {fmt: b.formats[fmt] for fmt, b in _OWNERS.items()}
#: What ``--bits N`` means: the format a user gets when they ask for a bit width.
BITS_TO_FORMAT: dict[int, str] = _bit_defaults(BACKENDS)


def backend_for_format(fmt: str) -> Backend:
    """The backend that owns packed format ``fmt``."""
    try:
        return _OWNERS[fmt]
    except KeyError:
        raise QPrunerError(f"{fmt!r} is not a packed format") from None


def backend_of(module: nn.Module) -> Backend | None:
    """The backend whose packed module ``module`` is, or None for anything else."""
    return next((b for b in BACKENDS if b.owns(module)), None)


def quantize_linear(linear: nn.Linear, fmt: str, compute_dtype: torch.dtype) -> nn.Module:
    """A packed replacement for ``linear`` (same device) holding its weight in ``fmt``.

    ``linear``'s own weight is left to the caller to drop; the new module owns new storage.
    """
    if linear.weight.device.type == "meta":
        raise QPrunerError("cannot quantize a module on the meta device; load the weights first")
    return backend_for_format(fmt).quantize(linear, fmt, compute_dtype)


def is_packed_module(module: nn.Module) -> bool:
    return backend_of(module) is not None


def packed_format(module: nn.Module) -> str | None:
    """The format a packed module holds, or None for anything else."""
    backend = backend_of(module)
    return backend.format_of(module) if backend is not None else None


def dequantize_weight(module: nn.Module) -> torch.Tensor:
    """The float32 ``out x in`` weight a packed (or plain) linear module computes with."""
    backend = backend_of(module)
    if backend is not None:
        return backend.dequantize(module)
    return as_out_in(module, module.weight)


def held_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every tensor a (packed) linear module keeps alive: weight, bias, scales and codes.

    ``parameters()`` misses the quantization state (bitsandbytes keeps it on the weight,
    hqq in ``meta``), which is part of what the weights cost.
    """
    backend = backend_of(module)
    return backend.held_tensors(module) if backend is not None else own_tensors(module)


def dequant_bytes(fmt: str, weight_bytes: int, compute_bytes: int) -> int:
    """Bytes per weight element a ``fmt`` weight's dequantization holds at once (see :class:`Backend`)."""
    return backend_for_format(fmt).dequant_bytes(fmt, weight_bytes, compute_bytes)


def packed_weight_bytes(fmt: str, out_features: int, in_features: int, scale_bytes: int) -> int:
    """Bytes of a packed ``out x in`` weight incl. its scales; ``scale_bytes``: compute dtype size.

    Exact, not approximate: the memory model prices plans with it before anything is built.
    """
    return backend_for_format(fmt).packed_bytes(fmt, out_features, in_features, scale_bytes=scale_bytes)
