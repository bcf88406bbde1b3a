"""What a quantization backend must say about the formats it owns.

A backend (one file: ``bnb.py``, ``hqq.py``) owns a set of packed formats and answers five
questions about them: how to build a packed module from a dense linear, how to recognise one,
which format it holds, what weight it computes with, and which tensors (and so how many
bytes) it keeps alive. The registry (:mod:`qpruner.quant.registry`) dispatches to it.

Format declarations are plain class attributes so that the plan (which needs the format
names and bit widths) can read them without importing bitsandbytes or hqq; those libraries
load only when a module is built or recognised.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import nn

from qpruner.errors import QPrunerError
from qpruner.quant.frozen_matmul import WeightFn


class Backend(ABC):
    """A family of packed formats backed by one library's linear module."""

    #: Short name, for messages.
    name: ClassVar[str]
    #: Packed formats this backend owns and their bits per weight (before scales).
    formats: ClassVar[Mapping[str, int]]
    #: Formats that ``--bits N`` picks for their bit width (at most one per width, all backends).
    defaults: ClassVar[tuple[str, ...]] = ()
    #: Module that must already be imported for any module of this backend to exist.
    library_module: ClassVar[str]

    @abstractmethod
    def quantize(self, linear: nn.Linear, fmt: str, compute_dtype: torch.dtype) -> nn.Module:
        """A packed replacement for ``linear`` on the same device, holding its weight in ``fmt``."""

    @abstractmethod
    def module_classes(self) -> tuple[type[nn.Module], ...]:
        """The library's packed module classes (imports the library)."""

    def owns(self, module: nn.Module) -> bool:
        """Whether ``module`` is one of ours, by class, never by name.

        peft's LoRA wrappers reuse the wrapped module's names. An instance can only exist once
        its library is imported, so for a library nobody imported yet the answer is no, without
        paying for the import.
        """
        if self.library_module not in sys.modules:
            return False
        return isinstance(module, self.module_classes())

    @abstractmethod
    def format_of(self, module: nn.Module) -> str:
        """The format an owned module holds."""

    @abstractmethod
    def dequantize(self, module: nn.Module) -> torch.Tensor:
        """The float32 ``out x in`` weight an owned module computes with."""

    def held_tensors(self, module: nn.Module) -> list[torch.Tensor]:
        """Every tensor an owned module keeps alive: its own plus its quantization state."""
        return own_tensors(module) + self.state_tensors(module)

    @abstractmethod
    def state_tensors(self, module: nn.Module) -> list[torch.Tensor]:
        """Scales, codes and offsets that ``parameters()``/``buffers()`` do not list."""

    @abstractmethod
    def packed_bytes(self, fmt: str, out_features: int, in_features: int, scale_bytes: int) -> int:
        """Exact bytes of a packed ``out x in`` weight incl. its scales, without building it.

        ``scale_bytes``: the size of the compute dtype, for backends that keep scales in it.
        """

    def frozen_weight(self, module: nn.Module) -> WeightFn | None:
        """How to rebuild an owned module's ``out x in`` weight in a given dtype, for training
        through :class:`~qpruner.quant.frozen_matmul.FrozenMatmul` (which keeps nothing of the
        input); None where the library's own forward keeps nothing of it either."""
        return None

    def dequant_bytes(self, fmt: str, weight_bytes: int, compute_bytes: int) -> int:
        """Bytes per weight element that dequantizing a ``fmt`` weight holds at once (memory
        model); ``weight_bytes``: the plan dtype's size."""
        return compute_bytes

    def prepare_autocast(self, module: nn.Module, dtype: torch.dtype) -> Callable[[], None] | None:
        """Make ``module`` work under ``dtype`` autocast (forward and backward); return the undo.

        Nothing to do for most backends: their matmuls autocast like any other, and a module
        with a :meth:`frozen_weight` computes in its input's dtype.
        """
        return None

    def check_format(self, fmt: str) -> None:
        """Refuse a format this backend does not own (a registry bug, not a user error)."""
        if fmt not in self.formats:
            raise QPrunerError(f"{fmt!r} is not a {self.name} format; it has {', '.join(self.formats)}")


def own_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The parameters and buffers ``module`` itself holds (not its children's)."""
    return list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))


def as_out_in(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a detached float32 ``out x in`` matrix (backends store it flattened or cast)."""
    return weight.detach().to(torch.float32).reshape(module.out_features, module.in_features)
