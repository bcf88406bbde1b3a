"""``qpruner finetune``: pruned model + plan -> quantized base + trained LoRA, saved and priced."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qpruner.architecture import LayerShape, config_shape, decoder_layers, layer_shapes
from qpruner.checkpoint import load_model, load_tokenizer, stored_layer_shapes
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
from qpruner.plan import Plan, format_for_bits
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


def _layer_linear_params(shape: LayerShape, hidden: int, head_dim: int) -> int:
    q, kv = shape.num_attention_heads * head_dim, shape.num_key_value_heads * head_dim
    return hidden * (2 * q + 2 * kv) + 3 * hidden * shape.intermediate_size


def uniform_plan(
    model,
    weight_format: str | None = None,
    bits: int | None = None,
    rank: int = 8,
    alpha: float | None = None,
    dtype: str | None = None,
) -> Plan:
    """QLoRA-style plan for ``model``: one format and rank everywhere, shapes and prune ratios recorded."""
    dtype = dtype or {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        next(model.parameters()).dtype, "fp32"
    )
    fmt = weight_format or format_for_bits(bits if bits is not None else 16, dtype)
    shapes = layer_shapes(model)
    plan = Plan.uniform(
        len(shapes),
        fmt,
        rank,
        alpha,
        dtype=dtype,
        shapes=shapes,
        model=getattr(model.config, "_name_or_path", None),
    )
    record_pruning(plan, model)
    return plan


def record_pruning(plan: Plan, model) -> None:
    """Each layer's pruning ratio: the share of its linear weights removed relative to the config."""
    cfg = model.config
    hd = decoder_layers(model)[0].self_attn.head_dim
    full = _layer_linear_params(config_shape(cfg), cfg.hidden_size, hd)
    for lp, shape in zip(plan.layers, layer_shapes(model), strict=True):
        lp.shape = shape
        lp.prune_ratio = round(1.0 - _layer_linear_params(shape, cfg.hidden_size, hd) / full, 6)


def finetune(
    model_src: str | Path,
    data: str | Path,
    out_dir: str | Path,
    plan: Plan | None = None,
    train_config: TrainConfig | None = None,
    loftq: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    export: bool = True,
    progress: bool = True,
) -> RecoveryResult:
    """Quantize ``model_src`` per ``plan`` (default NF4, rank 8), train LoRA on ``data``, save to ``out_dir``.

    Cheap checks (paths, plan against the stored layer shapes, data) run before the model is
    loaded. Training checkpoints go to ``out_dir/checkpoints``; ``resume`` continues from the
    last one. Nothing finished is deleted: an existing ``out_dir`` needs ``resume`` or
    ``overwrite``.
    """
    cfg = train_config or TrainConfig()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise QPrunerError(
            f"output {out} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    if overwrite and not resume and (out / "checkpoints").is_dir():
        import shutil

        shutil.rmtree(out / "checkpoints")
    shapes = stored_layer_shapes(model_src)
    if plan is not None and shapes is not None:
        plan.validate(num_layers=len(shapes), shapes=shapes)
    tokenizer = load_tokenizer(model_src)
    examples = load_examples(data, tokenizer, cfg.cutoff_len, cfg.train_on_inputs)
    model = load_model(model_src, dtype=plan_dtype(plan) if plan else None, device=device)
    if plan is None:
        plan = uniform_plan(model, "nf4")
    else:
        record_pruning(plan, model)
    plan.model = plan.model or str(model_src)
    predicted = estimate(model.config, plan, cfg.micro_batch, cfg.cutoff_len, cfg.gradient_checkpointing)
    peft_model = apply_plan(model, plan, loftq=loftq, progress=progress)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    identity = {
        "plan": plan.to_dict() | {"memory": {}, "metadata": {}},
        "model": str(model_src),
        "data": str(data),
        "loftq": loftq,
    }
    result = train(peft_model, examples, cfg, out / "checkpoints", pad_id, resume, identity, progress)
    measured = measured_report(peft_model, None, result.step_peak_bytes)
    measured.components["optimizer_states"] = result.optimizer_bytes
    plan.memory = {
        "predicted": predicted.to_dict(),
        "measured": measured.to_dict(),
        "batch": cfg.micro_batch,
        "seq_len": cfg.cutoff_len,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(peft_model, out)
    plan.save(out / PLAN_FILE)
    tokenizer.save_pretrained(out)
    record = {
        "base_model": str(Path(model_src).resolve()) if Path(model_src).exists() else str(model_src),
        "data": str(data),
        "loftq": loftq,
        "train_config": asdict(cfg),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_loss": result.losses[-1] if result.losses else None,
        "tokens_per_second": result.tokens_per_second,
        "step_seconds": result.step_seconds,
        "trainable_params": trainable,
    }
    write_recovery_record(out, record)
    if export:
        export_merged(
            peft_model, out, tokenizer, extra={"source": str(model_src), "recovered_from": str(out)}
        )
    return RecoveryResult(plan, result, predicted, measured, trainable, out)
