"""What recovery leaves behind, and how to load it again.

A recovered directory holds:

* ``adapter/`` - a peft adapter (``adapter_config.json`` with the per-layer ``rank_pattern``,
  ``adapter_model.safetensors``), loadable with ``PeftModel.from_pretrained`` on top of the
  pruned model;
* ``plan.json`` - the plan, with predicted and measured memory;
* ``merged/`` - a serving export: every packed weight dequantized, LoRA merged in, saved in
  the pruned-checkpoint format (safetensors), loadable with ``qpruner.load_model``;
* ``recovery.json`` - where the base model came from and what training did;
* the tokenizer, so the directory is a complete model for ``qpruner eval``.

peft's ``merge_and_unload`` would merge into the packed weights and re-quantize them (the
base stays 4-bit); a serving export wants the trained function at full precision, so we
merge into the dequantized weight ourselves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from qpruner.atomic_dir import replace_dir
from qpruner.checkpoint import RECOVERY_FILE, load_base_model, save_pruned
from qpruner.errors import CheckpointError
from qpruner.plan import Plan
from qpruner.quant.apply import plan_dtype, quantize_model
from qpruner.quant.registry import dequantize_weight, is_packed_module

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
PLAN_FILE = "plan.json"


def save_adapter(peft_model: nn.Module, out_dir: Path) -> Path:
    final = out_dir / ADAPTER_DIR
    tmp = out_dir / f".tmp-{ADAPTER_DIR}"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp, safe_serialization=True)
    replace_dir(tmp, final)
    return final


@torch.no_grad()
def merge_to_dense(peft_model: nn.Module, adapter: str = "default") -> nn.Module:
    """Unwrap ``peft_model`` into a plain model with ``deq(W) + scaling * B @ A`` in every LoRA module.

    Consumes ``peft_model`` (its modules are replaced in place) to avoid a second copy.
    """
    model = peft_model.base_model.model
    dtype = next(p.dtype for n, p in model.named_parameters() if "lora_" not in n and p.is_floating_point())

    def replace(name: str, base: nn.Module, weight: torch.Tensor) -> None:
        bias = getattr(base, "bias", None)
        dense = nn.Linear(
            base.in_features, base.out_features, bias=bias is not None, device=weight.device, dtype=dtype
        )
        dense.weight.copy_(weight.to(dtype))
        if bias is not None:
            dense.bias.copy_(bias.to(dtype))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, dense)

    targets = [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    for name, module in targets:
        base = module.get_base_layer()
        weight = dequantize_weight(base)
        if adapter in module.lora_A:
            weight += module.get_delta_weight(adapter).to(weight.device, torch.float32)
        replace(name, base, weight)
    for name, module in list(model.named_modules()):  # packed modules the plan gave no LoRA (lm_head)
        if is_packed_module(module):
            replace(name, module, dequantize_weight(module))
    model.is_loaded_in_4bit = model.is_loaded_in_8bit = False
    return model


def export_merged(peft_model: nn.Module, out_dir: Path, tokenizer=None, extra: dict | None = None) -> Path:
    model = merge_to_dense(peft_model)
    final = out_dir / MERGED_DIR
    tmp = out_dir / f".tmp-{MERGED_DIR}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pruned(model, tmp, tokenizer=tokenizer, extra=extra)
    replace_dir(tmp, final)
    return final


def write_recovery_record(out_dir: Path, record: dict) -> None:
    tmp = out_dir / f".{RECOVERY_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(out_dir / RECOVERY_FILE)


def load_recovered(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model again: pruned base, quantized per the plan, adapter attached (eval mode)."""
    from peft import PeftModel

    path = Path(path)
    try:
        record = json.loads((path / RECOVERY_FILE).read_text())
        base = record["base_model"]
        rel = record.get("base_model_relative")
        if rel and (path / rel).is_dir():  # the pair was moved together: prefer the sibling
            base = str((path / rel).resolve())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path / RECOVERY_FILE} is unreadable: {exc}") from exc
    plan = Plan.load(path / PLAN_FILE)
    model = load_base_model(base, dtype=plan_dtype(plan), device=device)
    quantize_model(model, plan)
    peft_model = PeftModel.from_pretrained(model, path / ADAPTER_DIR, is_trainable=False)
    peft_model.eval()
    return peft_model
