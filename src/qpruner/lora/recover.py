"""``qpruner finetune``: pruned model + plan -> quantized base + trained LoRA, saved and priced."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from qpruner.architecture import layer_shapes, model_device
from qpruner.checkpoint import load_base_model, load_tokenizer
from qpruner.errors import QPrunerError
from qpruner.lora.apply import apply_plan
from qpruner.lora.data import load_examples
from qpruner.lora.export import (
    PLAN_FILE,
    export_merged,
    save_adapter,
    write_recovery_record,
)
from qpruner.lora.train import TrainConfig, TrainResult, train
from qpruner.memory import MemoryReport, estimate, format_memory_table, measured_report
from qpruner.plan import Plan
from qpruner.plan_sources import PlanSource, check_stored_fit, record_pruning
from qpruner.quant.apply import plan_dtype


@dataclass
class RecoveryResult:
    plan: Plan
    train: TrainResult
    predicted: MemoryReport
    measured: MemoryReport
    trainable_params: int
    out_dir: Path

    def memory_table(self) -> str:
        return format_memory_table(self.predicted, self.measured)


@dataclass
class TrainedPlan:
    model: torch.nn.Module  # the peft model, quantized base + trained adapter, in memory
    train: TrainResult
    predicted: MemoryReport
    measured: MemoryReport
    trainable_params: int


def train_plan(
    model_src: str | Path,
    plan: Plan,
    examples: list,
    cfg: TrainConfig,
    ckpt_dir: Path,
    *,
    tokenizer,
    device: str | torch.device = "cpu",
    loftq: bool = False,
    resume: bool = False,
    identity: dict | None = None,
    progress: bool = True,
    validated: bool = False,
    stop_at: int | None = None,
) -> TrainedPlan:
    """Load, quantize per ``plan``, train LoRA, and price it: predicted and measured memory.

    Shared by :func:`finetune` (which then saves) and the search's evaluator (which only
    scores the model it returns), so a searched plan is measured exactly as it is recovered.
    ``validated``: the caller checked the plan against ``model_src`` where it entered.
    ``stop_at``: train that many steps only (0: none), to go on with :func:`continue_plan`.
    """
    if not validated:
        check_stored_fit(plan, model_src)
    model = load_base_model(model_src, dtype=plan_dtype(plan), device=device)
    record_pruning(plan, model.config, layer_shapes(model))
    plan.model = plan.model or str(model_src)
    predicted = estimate(
        model.config, plan, cfg.micro_batch, cfg.cutoff_len, cfg.gradient_checkpointing,
        compute_dtype=cfg.compute_dtype, loss_chunk=cfg.loss_chunk, device=torch.device(device).type,
        accumulation=cfg.accumulation,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)  # LoRA A's random init: the same run twice gives the same adapter
    peft_model = apply_plan(model, plan, loftq=loftq, progress=progress, validated=True)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    identity = identity if identity is not None else {"plan": plan.to_dict() | {"memory": {}, "metadata": {}}}
    result = train(peft_model, examples, cfg, ckpt_dir, _pad_id(tokenizer), resume, identity, progress,
                   stop_at=stop_at)  # fmt: skip
    measured = _measured(peft_model, result, device)
    return TrainedPlan(peft_model, result, predicted, measured, trainable)


def continue_plan(
    trained: TrainedPlan,
    examples: list,
    cfg: TrainConfig,
    ckpt_dir: Path,
    *,
    tokenizer,
    identity: dict,
    stop_at: int | None = None,
    progress: bool = True,
) -> TrainedPlan:
    """Go on training a :func:`train_plan` stopped with ``stop_at``, from its checkpoint in
    ``ckpt_dir`` (same ``cfg`` and ``identity``), to ``stop_at`` again or to the end."""
    device = model_device(trained.model)
    result = train(trained.model, examples, cfg, ckpt_dir, _pad_id(tokenizer), True, identity, progress,
                   stop_at=stop_at)  # fmt: skip
    return replace(trained, train=result, measured=_measured(trained.model, result, device))


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def _measured(model, result: TrainResult, device) -> MemoryReport:
    """CUDA: the allocator's peak. CPU: the tensor-level peak (comparable with CUDA's); the
    resident-set peak, which adds allocator slack, is kept beside it."""
    on_cuda = torch.device(device).type == "cuda"
    step_peak = result.step_peak_bytes if on_cuda else result.step_tensor_peak
    measured = measured_report(model, None, step_peak, {"rss_step_peak": result.step_peak_bytes})
    measured.components["optimizer_states"] = result.optimizer_bytes
    return measured


def finetune(
    model_src: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    plan: Plan | PlanSource | None = None,
    train_config: TrainConfig | None = None,
    loftq: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    export: bool = True,
    progress: bool = True,
) -> RecoveryResult:
    """Quantize ``model_src`` per ``plan`` (default NF4, rank 8), train LoRA on ``data``, save to ``out_dir``.

    ``plan`` is a plan or where to get one (:class:`qpruner.plan_sources.PlanSource`). Cheap
    checks (paths, the plan against the stored layer shapes, data) run before the model is
    loaded. Training checkpoints go to ``out_dir/checkpoints``; ``resume`` continues from the
    last one. Nothing finished is deleted: an existing ``out_dir`` needs ``resume`` or
    ``overwrite``.
    """
    cfg = train_config or TrainConfig()
    out = _claim_out_dir(out_dir, resume=resume, overwrite=overwrite)
    plan = _resolve_plan(plan, model_src, device)
    tokenizer = load_tokenizer(model_src)
    examples = load_examples(data, tokenizer, cfg.cutoff_len, cfg.train_on_inputs)
    identity = {
        "plan": plan.to_dict() | {"memory": {}, "metadata": {}},
        "model": str(model_src),
        "data": str(data),
        "loftq": loftq,
    }
    trained = train_plan(model_src, plan, examples, cfg, out / "checkpoints", tokenizer=tokenizer,
                         device=device, loftq=loftq, resume=resume, identity=identity,
                         progress=progress, validated=True)  # fmt: skip
    _save_recovery(trained, plan, out, tokenizer=tokenizer, cfg=cfg)
    write_recovery_record(out, _recovery_record(model_src, data, out, cfg=cfg, loftq=loftq, trained=trained))
    if export:
        export_merged(
            trained.model, out, tokenizer, extra={"source": str(model_src), "recovered_from": str(out)}
        )
    return RecoveryResult(
        plan, trained.train, trained.predicted, trained.measured, trained.trainable_params, out
    )


def _claim_out_dir(out_dir: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Refuse a used ``out_dir`` unless told to continue or replace it; replacing drops its old
    checkpoints, which training would otherwise refuse rather than silently mix in."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise QPrunerError(
            f"output {out} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    if overwrite and not resume and (out / "checkpoints").is_dir():
        shutil.rmtree(out / "checkpoints")
    return out


def _resolve_plan(plan: Plan | PlanSource | None, model_src: str | Path, device: str | torch.device) -> Plan:
    """The plan checked against ``model_src``'s stored layer shapes, so a misfit fails before
    the model is loaded; a source validates the plan it loads."""
    if isinstance(plan, Plan):
        check_stored_fit(plan, model_src)
        return plan
    return (plan or PlanSource()).load(model_src, device)


def _save_recovery(trained: TrainedPlan, plan: Plan, out: Path, *, tokenizer, cfg: TrainConfig) -> None:
    """Save adapter, plan and tokenizer; the plan carries its predicted and measured memory
    (and the batch and length they hold for) so it can be compared without retraining."""
    plan.memory = {
        "predicted": trained.predicted.to_dict(),
        "measured": trained.measured.to_dict(),
        "batch": cfg.micro_batch,
        "seq_len": cfg.cutoff_len,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(trained.model, out)
    plan.save(out / PLAN_FILE)
    tokenizer.save_pretrained(out)


def _recovery_record(
    model_src: str | Path, data: str | Path, out: Path, *, cfg: TrainConfig, loftq: bool, trained: TrainedPlan
) -> dict:
    """What ``recovery.json`` holds: where the base model is (so the recovered directory can be
    loaded again), how it was trained, and what that cost."""
    result = trained.train
    return {
        "base_model": str(Path(model_src).resolve()) if Path(model_src).exists() else str(model_src),
        # Relative to this directory too, so run/ (pruned/ + recovered/) can move as a whole.
        "base_model_relative": (
            os.path.relpath(Path(model_src).resolve(), out.resolve()) if Path(model_src).exists() else None
        ),
        "data": str(data),
        "loftq": loftq,
        "train_config": asdict(cfg),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_loss": result.losses[-1] if result.losses else None,
        "tokens_per_second": result.tokens_per_second,
        "step_seconds": result.step_seconds,
        "trainable_params": trained.trainable_params,
    }
