"""Pieces of ``throughput_bench.py``: the model's shapes, its FLOPs, the GEMM limit, the old
perplexity path (before issue 13, for comparison) and the step profile."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig

from qpruner.compute import autocast, prepared
from qpruner.device import resolve_compute_dtype
from qpruner.lm_loss import causal_lm_loss
from qpruner.lora.data import BatchSchedule

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def smollm2_config(layers: int = 30) -> LlamaConfig:
    """SmolLM2-135M's architecture (HuggingFaceTB/SmolLM2-135M config.json)."""
    return LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
    )  # fmt: skip


def _dims(config) -> dict[str, tuple[int, int]]:
    """``{module: (in, out)}`` of one layer's linears, and the LM head."""
    h, i, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, i), "up": (h, i),
            "down": (i, h), "head": (h, config.vocab_size)}  # fmt: skip


def _step_gemms(config) -> list[tuple[int, tuple[int, int]]]:
    """(FLOPs per token, (k, n)) of every GEMM of a LoRA step's forward and backward (grad-input)."""
    out = []
    for name, (k, n) in _dims(config).items():
        times = 1 if name == "head" else config.num_hidden_layers
        out += [(2 * k * n * times, (k, n)), (2 * k * n * times, (n, k))]
    return out


def _rate(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """GFLOP/s of ``F.linear`` (x [m, k], w [n, k]) in ``dtype``, best of repeated timings."""
    x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    F.linear(x, w)
    best, spent = math.inf, 0.0
    while spent < seconds or best == math.inf:
        t = time.perf_counter()
        F.linear(x, w)
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return 2 * m * k * n / best / 1e9


def gemm_limits(config, tokens: int) -> dict:
    """GFLOP/s at each (k, n) shape of the step, float32 and bfloat16, ``tokens`` rows."""
    shapes = sorted({kn for _, kn in _step_gemms(config)})
    return {d: {f"{tokens}x{k}x{n}": _rate(tokens, k, n, dt) for k, n in shapes} for d, dt in _DTYPES.items()}


def weighted_limit(config, tokens: int, limits: dict, dtype: str) -> float:
    """The model's limit: its step's FLOPs over the time they take at each shape's measured rate."""
    gemms = _step_gemms(config)
    seconds = sum(f / limits[dtype][f"{tokens}x{k}x{n}"] for f, (k, n) in gemms)
    return sum(f for f, _ in gemms) / seconds


def flops_per_token(config, seq: int, eval_ctx: int, rank: int) -> dict[str, float]:
    """Useful FLOPs per token: a LoRA training step (frozen base) and an evaluation forward.

    Base GEMMs: forward and the backward's input gradient (no weight gradient); LoRA: forward,
    input and weight gradients; causal attention: QK^T and PV over (L+1)/2 keys on average,
    twice again in backward. Recomputation under checkpointing is not useful work.
    """
    dims = _dims(config)
    head = 2 * math.prod(dims.pop("head"))
    layers = config.num_hidden_layers
    linear = layers * sum(2 * k * n for k, n in dims.values()) + head
    lora = layers * sum(2 * rank * (k + n) for k, n in dims.values())

    def attn(length: int) -> float:
        return layers * 4 * config.num_attention_heads * config.head_dim * (length + 1) / 2

    return {"train": 2 * linear + 3 * lora + 3 * attn(seq), "eval": linear + attn(eval_ctx)}


@torch.no_grad()
def old_perplexity(model, ids: torch.Tensor, ctx: int, batch: int) -> float:
    """Perplexity the way ``qpruner.eval.perplexity`` computed it before issue 13: float32, full
    logits and their log-softmax per batch (non-overlapping windows)."""
    total, count = 0.0, 0
    windows = [ids[b : b + ctx] for b in range(0, ids.numel() - ctx + 1, ctx)]
    for s in range(0, len(windows), batch):
        x = torch.stack(windows[s : s + batch])
        logp = F.log_softmax(model(input_ids=x).logits.float()[:, :-1], dim=-1)
        nll = -logp.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)
        total, count = total + nll.double().sum().item(), count + nll.numel()
    return math.exp(total / count)


def profile_step(model, data, args, top: int = 14) -> dict:
    """Top operators by self CPU time of one new-path forward+backward (a step as ``train()`` runs it)."""
    model.train()
    batch = BatchSchedule(data, args.batch, 0, 0).batch(0)
    dtype = resolve_compute_dtype("auto", "cpu")

    def step() -> None:
        with autocast(dtype, "cpu"):
            loss = causal_lm_loss(model, batch, chunk=256)
        loss.backward()
        model.zero_grad(set_to_none=True)

    with prepared(model, dtype, "cpu"):
        step()  # warm-up: oneDNN builds its kernels on first use
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:top]]  # fmt: skip
    text = "\n".join(f"  {r['op'][:48]:<48} {r['self_ms']:8.1f} ms {100 * r['share']:5.1f}%  x{r['calls']}"
                     for r in rows)  # fmt: skip
    return {"total_ms": total / 1e3, "top": rows, "table": text}
