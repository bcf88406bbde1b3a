"""A peft ``LoraConfig`` from a plan, and the checks peft does not make.

peft takes one default rank/alpha plus ``rank_pattern``/``alpha_pattern`` overrides whose
keys are regular expressions matched against module names; a key that matches nothing is
silently ignored, and a loose key can match several modules. A plan names every module
exactly, so we escape its names, check before building that each key matches exactly one
module, and check after building that every LoRA module got the rank and scaling the plan
asked for.
"""

from __future__ import annotations

import re
from collections import Counter

from peft import LoraConfig
from torch import nn

from qpruner.errors import QPrunerError
from qpruner.plan import Plan


def _peft_key_matches(key: str, name: str) -> bool:
    # Same rule as peft.utils.other.get_pattern_key (peft 0.21).
    return re.match(rf"(.*\.)?({key})$", name) is not None


def lora_config(plan: Plan) -> LoraConfig:
    """``LoraConfig`` with the plan's most common rank/alpha as defaults and exact-name overrides."""
    ranks, alphas = plan.ranks(), plan.alphas()
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=sorted(ranks),
        rank_pattern={re.escape(n): v for n, v in ranks.items() if v != r},
        alpha_pattern={re.escape(n): v for n, v in alphas.items() if v != alpha},
        lora_dropout=plan.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )


def check_pattern_keys(config: LoraConfig, module_names: list[str]) -> None:
    """Every ``rank_pattern``/``alpha_pattern`` key must match exactly one module of the model."""
    for table in ("rank_pattern", "alpha_pattern"):
        for key in getattr(config, table) or {}:
            hits = [n for n in module_names if _peft_key_matches(key, n)]
            if len(hits) != 1:
                raise QPrunerError(
                    f"LoRA {table} key {key!r} matches {len(hits)} modules"
                    + (f" ({', '.join(hits[:3])}...)" if hits else "")
                    + "; it must match exactly one"
                )


def check_lora_applied(peft_model: nn.Module, plan: Plan, adapter: str = "default") -> int:
    """Every planned module carries LoRA of its planned rank and scaling; return trainable params."""
    found: dict[str, nn.Module] = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and adapter in getattr(module, "r", {}):
            found[name.split("base_model.model.", 1)[-1]] = module
    ranks, alphas = plan.ranks(), plan.alphas()
    missing = sorted(set(ranks) - set(found))
    if missing:
        raise QPrunerError(f"LoRA was not applied to {len(missing)} planned module(s), e.g. {missing[0]}")
    extra = sorted(set(found) - set(ranks))
    if extra:
        raise QPrunerError(f"LoRA was applied to unplanned module(s), e.g. {extra[0]}")
    for name, module in found.items():
        r, scaling = module.r[adapter], module.scaling[adapter]
        want = alphas[name] / ranks[name]
        if r != ranks[name] or abs(scaling - want) > 1e-9 * max(1.0, want):
            raise QPrunerError(
                f"{name}: LoRA rank {r} / scaling {scaling:g} differ from the plan's {ranks[name]} / {want:g}"
            )
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
