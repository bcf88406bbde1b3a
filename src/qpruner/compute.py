"""How a forward pass computes: bfloat16 autocast where bf16 matmuls are fast, float32 elsewhere.

Training and evaluation both run their forward passes inside :func:`autocast` and the whole
loop (forward and backward) inside :func:`prepared`. Under bf16 compute the matmuls run in
bfloat16 while the residual stream, RMSNorm statistics, the loss and every LoRA weight,
gradient and AdamW state stay float32 (QLoRA's recipe on CUDA; on CPUs with AVX512-BF16 or
AMX the same). Weights keep the plan's dtype: float32 weights are cast per forward by
autocast, bfloat16 ones are used as they are (faster, see ``benchmarks/throughput_bench.py``).

On CPU, attention runs in float32 even under bf16 compute: torch's CPU flash-attention
backward is about twice as slow in bf16 as in float32 at 128-2048 tokens (forward: the same),
and q/k/v are small next to the weights, so the cast costs little.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

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
    and must take the same attention path as the first forward did.
    """
    undo: list[Callable[[], None]] = []
    config = _config(model)
    try:
        if dtype != torch.float32:
            if torch.device(device).type == "cpu" and getattr(config, "_attn_implementation", None) == "sdpa":
                config._attn_implementation = ATTN_FP32
                undo.append(lambda: setattr(config, "_attn_implementation", "sdpa"))
            for module in model.modules():
                backend = backend_of(module)
                if backend is not None:
                    restore = backend.prepare_autocast(module, dtype)
                    if restore is not None:
                        undo.append(restore)
        yield
    finally:
        for restore in reversed(undo):
            restore()
