"""``apply_plan``: quantize a model per its plan and attach per-layer-rank LoRA, ready to train."""

from __future__ import annotations

import torch
from peft import PeftModel, get_peft_model
from torch import nn
from tqdm.auto import tqdm

from qpruner.errors import QPrunerError
from qpruner.lora.config import check_lora_applied, check_pattern_keys, lora_config
from qpruner.lora.loftq import loftq_factors
from qpruner.plan import Plan
from qpruner.quant.apply import check_plan_fits, quantize_model


def apply_plan(
    model: nn.Module, plan: Plan, *, loftq: bool = False, progress: bool = False, validated: bool = False
) -> PeftModel:
    """Quantize ``model`` in place per ``plan`` and wrap it in peft LoRA with the plan's ranks.

    With ``loftq`` every LoRA module over a packed weight starts at the rank-r SVD of that
    weight's quantization error (see :mod:`qpruner.lora.loftq`); modules over unquantized
    weights start as usual (B = 0). Raises a one-line error if the plan does not fit the model,
    unless the caller ``validated`` it where it entered (:mod:`qpruner.plan_sources`).
    """
    if not validated:
        check_plan_fits(model, plan)
    was_training = model.training
    config = lora_config(plan)
    check_pattern_keys(config, [n for n, _ in model.named_modules()])
    ranks, alphas = plan.ranks(), plan.alphas()
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def remember(name: str, dense: nn.Linear, packed: nn.Module) -> None:
        if name in ranks:
            factors[name] = loftq_factors(
                dense.weight.detach(), packed, ranks[name], alphas[name] / ranks[name]
            )

    quantize_model(model, plan, progress=progress, on_replace=remember if loftq else None, validated=True)
    peft_model = get_peft_model(model, config)
    peft_model.train(was_training)  # peft's new dropout modules start in training mode
    check_lora_applied(peft_model, plan)
    if loftq:
        if not factors:
            raise QPrunerError(
                "--loftq needs at least one quantized layer with LoRA; the plan quantizes none"
            )
        for name, (a, b) in tqdm(factors.items(), desc="loftq", disable=not progress):
            module = peft_model.base_model.model.get_submodule(name)
            la, lb = module.lora_A["default"].weight, module.lora_B["default"].weight
            la.data.copy_(a.to(la.device, la.dtype))
            lb.data.copy_(b.to(lb.device, lb.dtype))
    return peft_model
