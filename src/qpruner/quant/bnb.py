"""bitsandbytes: NF4/FP4 (QLoRA's ``Linear4bit``) and int8 (LLM.int8's ``Linear8bitLt``).

We only choose and configure bitsandbytes' modules here; packing, kernels and backward pass
are theirs. It quantizes when a parameter is moved to its device, on CPU and CUDA alike, and
peft wraps both module types in its matching LoRA layers (see ``qpruner.lora``).

Storage layouts (as of bitsandbytes 0.50), from which :meth:`BnbBackend.packed_bytes` prices
a plan before anything is quantized; ``tests/test_quant.py`` checks the prices against the
tensors bitsandbytes really allocates, for every format:

* NF4/FP4: two weights per byte; one absmax per block of ``BNB_BLOCKSIZE`` weights. With
  double quantization (QLoRA's default, ours too) the absmaxes are stored as uint8 plus a
  float32 offset, a 16-entry float32 code, and a nested float32 absmax per 256 blocks with
  its own 256-entry code.
* int8 (LLM.int8): one byte per weight plus one float32 scale per output row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from types import ModuleType

import torch
from torch import nn

from qpruner.errors import QPrunerError
from qpruner.quant.backend import Backend, as_out_in
from qpruner.quant.frozen_matmul import WeightFn

BNB_BLOCKSIZE = 64
BNB_DOUBLE_QUANT = True
_FOUR_BIT = ("nf4", "fp4")


class _QuietBitsandbytes(logging.Filter):
    """Two bitsandbytes log lines that say nothing a user can act on, on our paths.

    At import on AVX512-BF16 CPUs it warns that the optional ``kernels`` package (a hub
    download) is missing; its portable CPU path works without it. And an int8 matmul with
    float32 inputs (our CPU compute dtype) logs that inputs are cast to float16, which is how
    LLM.int8 works. Installed when this module loads, which ``qpruner.lora`` makes happen
    before peft imports bitsandbytes.
    """

    QUIET = ("Failed to load CPU gemm_4bit_forward", "MatMul8bitLt: inputs will be cast")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.QUIET)


_quiet = _QuietBitsandbytes()
for _name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
    logging.getLogger(_name).addFilter(_quiet)


def _bnb() -> ModuleType:
    try:
        import bitsandbytes as bnb
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise QPrunerError("bitsandbytes is not installed: pip install bitsandbytes") from exc
    return bnb


class BnbBackend(Backend):
    """bitsandbytes' 4-bit (NF4, FP4) and 8-bit (LLM.int8) linear modules."""

    name = "bitsandbytes"
    formats = {"int8": 8, "nf4": 4, "fp4": 4}
    defaults = ("int8", "nf4")
    library_module = "bitsandbytes"

    def quantize(self, linear: nn.Linear, fmt: str, compute_dtype: torch.dtype) -> nn.Module:
        self.check_format(fmt)
        bias = linear.bias.detach() if linear.bias is not None else None
        q = _four_bit(linear, fmt, compute_dtype) if fmt in _FOUR_BIT else _eight_bit(linear)
        if bias is not None:
            q.bias = nn.Parameter(bias.to(compute_dtype).clone(), requires_grad=False)
        return q.to(linear.weight.device)

    def module_classes(self) -> tuple[type[nn.Module], ...]:
        bnb = _bnb()
        return (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)

    def format_of(self, module: nn.Module) -> str:
        if isinstance(module, _bnb().nn.Linear4bit):
            return module.weight.quant_type
        return "int8"

    def dequantize(self, module: nn.Module) -> torch.Tensor:
        bnb = _bnb()
        if isinstance(module, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        else:
            codes, scb = _int8_state(module)
            w = codes.float() * scb.float().unsqueeze(1) / 127.0
        return as_out_in(module, w)

    def frozen_weight(self, module: nn.Module) -> WeightFn | None:
        # int8's training forward (MatMul8bitFp on CPU) keeps its input as ``ctx.A``, outside
        # the saved tensors, so not even activation checkpointing drops it; MatMul4Bit keeps
        # nothing of it. The int8 weight as MatMul8bitFp dequantizes it: codes times row scale.
        if isinstance(module, _bnb().nn.Linear4bit):
            return None

        def weight_of(dtype: torch.dtype) -> torch.Tensor:
            codes, scb = _int8_state(module)
            return codes.to(dtype).mul_(scb.unsqueeze(1).mul(1.0 / 127.0))

        return weight_of

    def prepare_autocast(self, module: nn.Module, dtype: torch.dtype) -> Callable[[], None] | None:
        # The 4-bit matmul is a custom op whose inner linear autocasts or not depending on how
        # it is dispatched (a TorchDispatchMode such as our TensorPeakMeter changes it): set
        # its compute dtype instead, which also dequantizes straight to ``dtype`` (forward and
        # backward). int8 computes in its input's dtype, which the caller casts.
        if not isinstance(module, _bnb().nn.Linear4bit):
            return None
        state, old = module.weight.quant_state, (module.compute_dtype, module.weight.quant_state.dtype)
        module.compute_dtype = state.dtype = dtype

        def undo() -> None:
            module.compute_dtype, state.dtype = old

        return undo

    def state_tensors(self, module: nn.Module) -> list[torch.Tensor]:
        # The 4-bit absmax, code and nested state hang off the weight's ``quant_state``; the
        # int8 row scales off the weight (``SCB``) and the matmul state.
        if isinstance(module, _bnb().nn.Linear4bit):
            out: list[torch.Tensor] = []
            qs = module.weight.quant_state
            while qs is not None:
                out += [v for v in vars(qs).values() if torch.is_tensor(v)]
                qs = getattr(qs, "state2", None)
            return out
        return [t for t in (module.weight.SCB, module.state.SCB, module.state.CB) if t is not None]

    def packed_bytes(self, fmt: str, out_features: int, in_features: int, scale_bytes: int) -> int:
        self.check_format(fmt)
        n = out_features * in_features
        if fmt == "int8":
            return n + 4 * out_features
        blocks = math.ceil(n / BNB_BLOCKSIZE)
        data = math.ceil(n / 2)
        if not BNB_DOUBLE_QUANT:
            return data + 4 * blocks + 4 * 16
        nested = math.ceil(blocks / 256)
        return data + blocks + 4 + 4 * 16 + 4 * nested + 4 * 256


def _int8_state(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """An int8 module's codes and row scales, wherever bitsandbytes keeps them: on the weight
    until the module's first forward, in its matmul state after (the weight's data is then
    the state's codes)."""
    codes = module.state.CB if module.state.CB is not None else module.weight.data
    scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
    return codes, scb


def _four_bit(linear: nn.Linear, fmt: str, compute_dtype: torch.dtype) -> nn.Module:
    bnb = _bnb()
    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        compress_statistics=BNB_DOUBLE_QUANT,
        quant_type=fmt,
        device="meta",
    )
    # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for a faster kernel on
    # its first no-grad forward: the absmax is un-nested to float32 (more bytes than the
    # plan was priced at) and output widths must be multiples of 32, which pruned layers
    # often are not. Keep the portable layout, the same on every machine.
    q.support_avx512bf16_for_cpu = False
    q.weight = bnb.nn.Params4bit(
        linear.weight.detach().to("cpu", torch.float32),
        requires_grad=False,
        quant_type=fmt,
        blocksize=BNB_BLOCKSIZE,
        compress_statistics=BNB_DOUBLE_QUANT,
    )
    return q


def _eight_bit(linear: nn.Linear) -> nn.Module:
    bnb = _bnb()
    q = bnb.nn.Linear8bitLt(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,
        threshold=0.0,  # no fp16 outlier side-path: its cost is not in our memory model
        device="meta",
    )
    q.weight = bnb.nn.Int8Params(
        linear.weight.detach().to("cpu", torch.float16), requires_grad=False, has_fp16_weights=False
    )
    return q
