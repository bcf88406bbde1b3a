"""Training the reference model from scratch, reproducibly.

Everything that decides the weights lives here: the seeded initialisation (in a forked RNG, so
the caller's random state is untouched), the data order drawn from the seed, the warm-up +
cosine schedule and the AdamW loop, and the deterministic kernels they run under. Caching and
reporting stay in :mod:`qpruner.reference.model`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qpruner.architecture import model_device
from qpruner.errors import QPrunerError
from qpruner.reference.config import ReferenceConfig

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerFast


def _batches(ids: torch.Tensor, cfg: ReferenceConfig, gen: torch.Generator):
    """Endless (inputs, targets) batches: each epoch cuts the token stream at a new random offset
    into ``seq_len + 1`` windows and shuffles them, so the data order depends only on the seed."""
    span = cfg.seq_len + 1
    if ids.numel() < span + cfg.seq_len:
        raise QPrunerError(f"training text too short: {ids.numel()} tokens for seq_len={cfg.seq_len}")
    while True:
        offset = int(torch.randint(0, cfg.seq_len, (1,), generator=gen))
        n = (ids.numel() - offset) // span
        rows = ids[offset : offset + n * span].view(n, span)
        order = torch.randperm(n, generator=gen)
        bs = min(cfg.batch_size, n)
        for i in range(0, n - bs + 1, bs):
            batch = rows[order[i : i + bs]]
            yield batch[:, :-1], batch[:, 1:]


def _lr_factor(step: int, cfg: ReferenceConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _make_model(cfg: ReferenceConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    same = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    same += ("num_key_value_heads", "max_position_embeddings", "tie_word_embeddings")
    mcfg = LlamaConfig(
        vocab_size=len(tokenizer),  # may be below cfg.vocab_size when the corpus is tiny
        **{name: getattr(cfg, name) for name in same},
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(mcfg)


def _train(model, ids: torch.Tensor, cfg: ReferenceConfig, progress: bool) -> tuple[float, float, int]:
    """AdamW (no decay on norms) with warm-up + cosine; returns (seconds, smoothed final loss, tokens)."""
    device = model_device(model)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    gen = torch.Generator().manual_seed(cfg.seed)
    data = _batches(ids, cfg, gen)
    model.train()
    smooth = float("nan")
    start = time.perf_counter()
    tokens = 0
    bar = tqdm(total=cfg.steps, desc="train reference", unit="step", disable=not progress)
    try:
        for step in range(cfg.steps):
            x, y = next(data)
            x, y = x.to(device), y.to(device)
            logits = model(input_ids=x, use_cache=False).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
            if not torch.isfinite(loss):
                raise RuntimeError(f"reference training diverged at step {step} (loss {loss.item()})")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tokens += x.numel()
            value = loss.item()
            smooth = value if step == 0 else 0.95 * smooth + 0.05 * value
            bar.set_postfix(loss=f"{smooth:.3f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
            bar.update(1)
    finally:
        bar.close()
    model.eval()
    return time.perf_counter() - start, smooth, tokens


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Deterministic kernels inside, the caller's setting restored after (even on error), so a
    rebuild reproduces the cached weights and test perplexity exactly."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def train_fresh_model(
    cfg: ReferenceConfig,
    tokenizer: PreTrainedTokenizerFast,
    ids: torch.Tensor,
    *,
    device: torch.device,
    progress: bool,
) -> tuple[nn.Module, tuple[float, float, int]]:
    """A model initialised from ``cfg.seed`` and trained on ``ids``, with (seconds, smoothed final
    loss, tokens): init and training in one place, so one seed always gives one set of weights."""
    with torch.random.fork_rng(devices=[]):  # seed init without disturbing the caller's RNG
        torch.manual_seed(cfg.seed)
        model = _make_model(cfg, tokenizer).to(device=device, dtype=torch.float32)
    return model, _train(model, ids, cfg, progress)
