"""How a forward pass computes: bfloat16 autocast where bf16 matmuls are fast, float32 elsewhere.

Training and evaluation both run their forward passes inside :func:`autocast` and the whole
loop (forward and backward) inside :func:`prepared`. Under bf16 compute the matmuls run in
bfloat16 while the residual stream, RMSNorm statistics, the loss and every LoRA weight,
gradient and AdamW state stay float32 (QLoRA's recipe on CUDA; on CPUs with AVX512-BF16 or
AMX the same). Weights keep the plan's dtype: float32 weights are cast per forward by
autocast, bfloat16 ones are used as they are (faster, see ``benchmarks/throughput_bench.py``).

On CPU, attention runs in float32 even under bf16 compute: torch's CPU flash-attention
backward is about twice as slow in bf16 as in float32 at 128-2048 tokens (forward: the same),
and q/k/v are small next to the weights, so the cast costs little. LoRA dropout becomes
:class:`MaskDropout` (a 1-byte mask instead of float32 noise, and a cheaper draw).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from qpruner.quant.frozen_matmul import use_frozen_matmul
from qpruner.quant.registry import backend_of

ATTN_FP32 = "qpruner_sdpa_fp32"


def _sdpa_fp32(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with autocast off and q/k/v in float32; output in v's dtype."""
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(value.dtype), weights


# Registered under our own name, with SDPA's mask builder: a name transformers' mask
# registry does not know would silently get no padding mask at all.
AttentionInterface.register(ATTN_FP32, _sdpa_fp32)
AttentionMaskInterface.register(ATTN_FP32, sdpa_mask)


class MaskDropout(nn.Dropout):
    """``nn.Dropout`` that keeps a 1-byte mask for backward and returns the compute dtype.

    torch's CPU dropout draws a float per element (``bernoulli_``: 14 % of a bf16 LoRA step at
    SmolLM2's shapes) and autograd keeps that float32 noise, 4 bytes per element of every LoRA
    input. Here each element gets a 16-bit uniform integer (two per 32-bit draw; ``p`` is
    rounded to 1/65536) and ``torch.where`` keeps only the boolean mask. Under autocast the
    output is already in the dtype ``lora_A`` would cast it to.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        cut = round(self.p * 65536)
        if cut >= 65536:
            return torch.zeros_like(x)
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        n = x.numel()
        draws = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_(-(2**31), 2**31)
        keep = draws.view(torch.int16)[:n].view(x.shape) >= cut - 32768
        return torch.where(keep, x.to(dtype) * (65536 / (65536 - cut)), 0)


class _SharedCast:
    """Forward pre-hook: a packed module's input in the compute dtype, one cast per tensor.

    Packed modules then compute in ``dtype`` like autocast linears do and return it, and
    q/k/v (gate/up), which share their input, share its cast too: one cast instead of three.
    The cast hangs off its source tensor, so it lives no longer than the source or a module
    that kept it.
    """

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, _module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if x.dtype == self.dtype or not x.is_floating_point():
            return None
        cast = getattr(x, "_qpruner_cast", None)
        if cast is None or cast.dtype != self.dtype:
            cast = x.to(self.dtype)
            x._qpruner_cast = cast
        return (cast, *args[1:])


def _swap_dropout(model: nn.Module) -> Callable[[], None]:
    """Replace peft's LoRA dropout modules by :class:`MaskDropout`; return the undo."""
    swapped = []
    for module in model.modules():
        table = getattr(module, "lora_dropout", None)
        if isinstance(table, nn.ModuleDict):
            for name, drop in table.items():
                if type(drop) is nn.Dropout:
                    swapped.append((table, name, drop))
                    table[name] = MaskDropout(drop.p)
                    table[name].train(drop.training)

    def undo() -> None:
        for table, name, drop in swapped:
            drop.train(table[name].training)
            table[name] = drop

    return undo


def autocast(dtype: torch.dtype, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; nothing for float32 (today's exact float32 path)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _config(model: nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "config", None)


@contextlib.contextmanager
def prepared(model: nn.Module, dtype: torch.dtype, device: torch.device | str) -> Iterator[None]:
    """Ready ``model`` for ``dtype`` compute for the length of the block (forward and backward).

    Spans the backward pass too: activation checkpointing re-runs each layer's forward there
    and must take the same path as the first forward did. Packed int8 and hqq modules train
    through :class:`~qpruner.quant.frozen_matmul.FrozenMatmul` (keeping nothing of their
    input) on every compute path. Under bf16: float32 attention on
    CPU, :class:`MaskDropout`, packed modules fed their input in ``dtype`` (one shared cast)
    and computing in it, and peft's cast of LoRA inputs to the adapters' float32 turned off
    (autocast casts for the matmul; a float32 copy of a bf16 input would only cost time and
    memory).
    """
    # peft deferred: importing it imports bitsandbytes, whose log filter qpruner.quant installs.
    from peft.helpers import disable_input_dtype_casting

    with contextlib.ExitStack() as stack:
        cast = None if dtype == torch.float32 else _SharedCast(dtype)
        if cast is not None:
            config = _config(model)
            if torch.device(device).type == "cpu" and getattr(config, "_attn_implementation", None) == "sdpa":
                config._attn_implementation = ATTN_FP32
                stack.callback(setattr, config, "_attn_implementation", "sdpa")
            stack.callback(_swap_dropout(model))
            stack.enter_context(disable_input_dtype_casting(model))
        for module in model.modules():
            backend = backend_of(module)
            if backend is None:
                continue
            weight_of = backend.frozen_weight(module)
            if weight_of is not None:
                stack.callback(use_frozen_matmul(module, weight_of))
            if cast is not None:
                stack.callback(module.register_forward_pre_hook(cast).remove)
                restore = backend.prepare_autocast(module, dtype)
                if restore is not None:
                    stack.callback(restore)
        yield
