"""The recovery training loop: AdamW, linear warm-up/decay, gradient accumulation, resumable.

A plain loop rather than HF ``Trainer``: we need the step's peak memory measured around
exactly one optimizer step, and checkpoints made only of safetensors and JSON (``Trainer``
pickles its RNG and optimizer state with ``torch.save``, which we never load from users).

Checkpoints hold the trainable (LoRA) tensors, AdamW's moments, scheduler/step counters and
the RNG state (LoRA dropout), written to a temporary directory and renamed into place, so a
crash leaves either the previous checkpoint or the new one. Resuming reproduces an
uninterrupted run bit for bit on the same machine (tested).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from qpruner.architecture import model_device
from qpruner.compute import autocast, prepared
from qpruner.device import COMPUTE_DTYPES, resolve_compute_dtype
from qpruner.errors import CheckpointError, QPrunerError
from qpruner.lm_loss import causal_lm_loss
from qpruner.lora.data import BatchSchedule, Example
from qpruner.memory import PeakMeter, TensorPeakMeter, held_memory
from qpruner.quant.registry import held_tensors, is_packed_module


@dataclass
class TrainConfig:
    """Defaults follow alpaca-lora / LLM-Pruner post-training (2 epochs, batch 128, lr 1e-4)."""

    epochs: float = field(default=2.0, metadata={"help": "passes over the data"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (overrides --epochs)"})
    batch_size: int = field(default=128, metadata={"help": "examples per optimizer step"})
    micro_batch: int = field(default=4, metadata={"help": "examples per forward/backward pass"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate (AdamW)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps, then linear decay"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping norm"})
    cutoff_len: int = field(default=256, metadata={"help": "tokens per example"})
    train_on_inputs: bool = field(default=True, metadata={"help": "loss on Alpaca prompts too"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass (less memory)"}
    )
    save_every: int = field(default=200, metadata={"help": "checkpoint every N steps (and at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept (older ones deleted)"})
    seed: int = field(default=42, metadata={"help": "seed of LoRA's init, data order and dropout"})
    compute_dtype: str = field(
        default="auto",
        metadata={
            "help": "matmul dtype: auto (bf16 on CUDA and CPUs with AVX512-BF16/AMX, else fp32), fp32, bf16"
        },
    )
    loss_chunk: int = field(
        default=256,
        metadata={"help": "tokens per LM-head chunk of the loss (0: all at once, transformers' loss)"},
    )

    def __post_init__(self) -> None:
        if self.micro_batch < 1 or self.batch_size < self.micro_batch or self.batch_size % self.micro_batch:
            raise QPrunerError(
                f"batch size {self.batch_size} must be a positive multiple of micro-batch {self.micro_batch}"
            )
        if self.lr <= 0 or (self.steps is not None and self.steps < 1) or self.epochs <= 0:
            raise QPrunerError("learning rate, steps and epochs must be positive")
        if self.save_every < 1:
            raise QPrunerError(f"save_every must be >= 1, got {self.save_every}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise QPrunerError(
                f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.compute_dtype!r}"
            )
        if self.loss_chunk < 0:
            raise QPrunerError(f"loss_chunk must be >= 0, got {self.loss_chunk}")

    @property
    def accumulation(self) -> int:
        return self.batch_size // self.micro_batch

    def total_steps(self, n_examples: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    losses: list[float] = field(default_factory=list)  # mean loss per optimizer step (this run)
    tokens: int = 0
    seconds: float = 0.0
    step_seconds: float = 0.0  # mean wall time of an optimizer step
    step_peak_bytes: int | None = None  # max peak growth of a step after the first (RSS on CPU)
    step_tensor_peak: int | None = None  # tensor-level peak of one metered step (see TensorPeakMeter)
    optimizer_bytes: int = 0  # AdamW moments held at the end

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _fingerprint(config: TrainConfig, extra: dict) -> str:
    keep = {k: v for k, v in asdict(config).items() if k not in ("save_every", "keep_checkpoints")}
    return hashlib.sha256(json.dumps([keep, extra], sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- checkpoints ------------------------------------------------------------------------------
class UnreadableCheckpoint(CheckpointError):
    """A checkpoint's files cannot be read (truncated, corrupted): an older one may still be."""


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints (``state.json`` is written last), oldest first."""
    done = [p for p in ckpt_dir.glob("step-*") if p.name[5:].isdigit() and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def resume_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, *, fingerprint: str, resume: bool) -> int:
    """The step to start from: 0, or that of the newest readable checkpoint, restored.

    ``keep_checkpoints`` (2) are kept so that one corrupted by a crash or a full disk is not the
    end of a run: it is moved aside (``corrupt-step-N``, for inspection) and the one before it is
    used, saying so. Existing checkpoints without ``resume`` are refused, never overwritten.
    """
    found = _checkpoints(ckpt_dir) if ckpt_dir.is_dir() else []
    if found and not resume:
        raise QPrunerError(
            f"{ckpt_dir} already holds checkpoints; pass --resume to continue or use a new --out"
        )
    unreadable: list[UnreadableCheckpoint] = []
    for path in reversed(found):
        try:
            meta = load_checkpoint(path, model, optimizer, scheduler, fingerprint=fingerprint)
        except UnreadableCheckpoint as exc:
            unreadable.append(exc)
            continue
        for bad, exc in zip(reversed(found), unreadable, strict=False):  # the newer ones, unreadable
            aside = bad.with_name(f"corrupt-{bad.name}")
            shutil.rmtree(aside, ignore_errors=True)
            bad.rename(aside)
            print(f"qpruner: {exc}; moved aside to {aside.name}", file=sys.stderr, flush=True)
        if unreadable:
            print(f"qpruner: resuming from the previous checkpoint, {path.name}", file=sys.stderr, flush=True)
        return int(meta["step"])
    if found:
        raise CheckpointError(
            f"no readable checkpoint in {ckpt_dir} ({unreadable[0]}); start again with --overwrite"
        )
    return 0


def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    params = _trainable(model)
    index = {id(p): i for i, p in enumerate(optimizer.param_groups[0]["params"])}
    moments = {}
    for p, st in optimizer.state.items():
        for k, v in st.items():
            moments[f"{index[id(p)]}.{k}"] = v.detach().cpu().contiguous()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, tmp / "adapter.safetensors")
    save_file(moments, tmp / "optimizer.safetensors")
    save_file(rng, tmp / "rng.safetensors")
    meta = {**state, "step": step, "param_groups": groups, "scheduler": scheduler.state_dict()}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=float))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, *, fingerprint: str | None = None) -> dict:
    """Restore a checkpoint into ``model``, ``optimizer`` and ``scheduler``.

    Every file is read (and the ``fingerprint`` of the run's settings compared) before anything
    is restored, so an unreadable or foreign checkpoint leaves the model untouched.
    """
    try:
        meta = json.loads((path / "state.json").read_text())
        adapter = load_file(path / "adapter.safetensors")
        moments = load_file(path / "optimizer.safetensors")
        rng = load_file(path / "rng.safetensors")
    except (OSError, ValueError, SafetensorError) as exc:
        raise UnreadableCheckpoint(f"checkpoint {path} is unreadable: {exc}") from exc
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was made with other settings (plan, data or training config); "
            "resume with the same ones or start a new --out"
        )
    params = _trainable(model)
    if set(adapter) != set(params):
        raise CheckpointError(f"checkpoint {path} holds different trainable tensors than this model")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(adapter[n].to(p.device, p.dtype))
    plist = optimizer.param_groups[0]["params"]
    state: dict[int, dict] = {}
    for key, v in moments.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v.to(plist[int(i)].device)
    groups = [{**g, "params": list(range(len(plist)))} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return meta


# ---- the loop ---------------------------------------------------------------------------------
def _preexisting(model: nn.Module, optimizer) -> list[torch.Tensor]:
    """Tensors that live across steps and are only updated in place: not a step's allocations."""
    out = list(model.parameters())
    for module in model.modules():
        if is_packed_module(module):
            out += held_tensors(module)
    out += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    return out


def _micro_steps(
    model: nn.Module, batches, config: TrainConfig, compute: torch.dtype, step: int
) -> tuple[float, int]:
    """Forward and backward over one optimizer step's micro-batches; (mean loss, tokens).

    The forward and the loss run under ``compute`` autocast, backward outside it (as
    ``torch.autocast`` asks); with ``loss_chunk`` the LM head and loss go a chunk of tokens at
    a time (:mod:`qpruner.lm_loss`), else through transformers' own loss.
    """
    step_loss, step_tokens = 0.0, 0
    device = model_device(model)
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(compute, device):
            if config.loss_chunk:
                loss = causal_lm_loss(model, batch, chunk=config.loss_chunk)
            else:
                loss = model(**batch, use_cache=False).loss
        if not torch.isfinite(loss):
            raise QPrunerError(f"loss became {loss.item()} at step {step + 1}; lower the learning rate")
        (loss / config.accumulation).backward()
        step_loss += loss.item() / config.accumulation
        step_tokens += int(batch["attention_mask"].sum())
        # Drop the graph now: ``loss`` would keep every node alive through the next
        # micro-batch's forward, with whatever a library's autograd node keeps outside its
        # saved tensors (bitsandbytes' int8 kept its input as ctx.A before FrozenMatmul).
        del loss, batch
    return step_loss, step_tokens


def train(
    model: nn.Module,
    examples: list[Example],
    config: TrainConfig,
    ckpt_dir: str | Path,
    pad_id: int,
    resume: bool = False,
    identity: dict | None = None,
    progress: bool = True,
    *,
    stop_at: int | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters on ``examples``; checkpoint into ``ckpt_dir``.

    ``identity`` (plan, base model, data) goes into the checkpoint fingerprint: resuming a
    run with other settings is refused instead of silently mixing two runs. ``stop_at``: stop
    after that many steps (checkpointed there); a later call with ``resume`` continues the same
    run — the search's multi-fidelity trials score the adapter in between, and the pieces add
    up to the uninterrupted run (the checkpoint holds the optimizer, schedule and RNG).
    """
    ckpt_dir = Path(ckpt_dir)
    fingerprint = _fingerprint(config, {**(identity or {}), "n_examples": len(examples)})
    total = config.total_steps(len(examples))
    params = list(_trainable(model).values())
    if not params:
        raise QPrunerError("the model has no trainable parameters")
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(config.warmup_steps, total // 2), total)
    start = resume_checkpoint(ckpt_dir, model, optimizer, scheduler, fingerprint=fingerprint, resume=resume)
    if config.gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.activation_checkpointing_enable({"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    schedule = BatchSchedule(examples, config.micro_batch, pad_id, config.seed)
    device = model_device(model)
    compute = resolve_compute_dtype(config.compute_dtype, device)
    with prepared(model, compute, device):
        end = total if stop_at is None else min(stop_at, total)
        result = _loop(model, schedule, config, optimizer, scheduler, ckpt_dir, start=start, total=total,
                       end=end, compute=compute, fingerprint=fingerprint, progress=progress)  # fmt: skip
    result.optimizer_bytes = held_memory(model, optimizer)["optimizer_states"]
    model.eval()
    return result


def _loop(
    model,
    schedule,
    config,
    optimizer,
    scheduler,
    ckpt_dir,
    *,
    start,
    total,
    end,
    compute,
    fingerprint,
    progress,
):
    """The optimizer steps from ``start`` to ``end`` (of ``total``): metered, timed and checkpointed."""
    params = list(_trainable(model).values())
    device = model_device(model)
    result = TrainResult(steps=total, resumed_from=start)
    bar = tqdm(total=total, initial=start, desc="recover", unit="step", disable=not progress)
    t0 = time.perf_counter()
    step_times = []
    for step in range(start, end):
        ts = time.perf_counter()
        # One step is metered (tensor by tensor: slow on CPU), in the piece that ends the run.
        metered = end == total and step == (start + 1 if end - start >= 2 else start)
        tensors = TensorPeakMeter(_preexisting(model, optimizer)) if metered else contextlib.nullcontext()
        with PeakMeter(device) as meter, tensors:
            batches = (schedule.batch(step * config.accumulation + m) for m in range(config.accumulation))
            step_loss, step_tokens = _micro_steps(model, batches, config, compute, step)
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if step > start and meter.growth is not None:  # the first step also allocates AdamW's moments
            result.step_peak_bytes = max(result.step_peak_bytes or 0, meter.growth)
        if metered:
            result.step_tensor_peak = tensors.peak
        if not metered or end - start == 1:  # the metered step runs slower
            step_times.append(time.perf_counter() - ts)
        result.losses.append(step_loss)
        result.tokens += step_tokens
        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{result.tokens / max(elapsed, 1e-9):.0f}")
        bar.update(1)
        if (step + 1) % config.save_every == 0 or step + 1 in (total, end):
            state = {"fingerprint": fingerprint, "losses_tail": result.losses[-50:]}
            save_checkpoint(ckpt_dir, step + 1, model, optimizer, scheduler, state, config.keep_checkpoints)
    bar.close()
    result.seconds = time.perf_counter() - t0
    result.step_seconds = sum(step_times) / len(step_times) if step_times else 0.0
    return result
