"""Stage 3: LoRA recovery on the quantized base, per-layer ranks from the plan."""

import warnings

import qpruner.quant.bnb  # noqa: F401  isort: skip  (its log filter, before peft imports bitsandbytes)
from qpruner.lora.apply import apply_plan
from qpruner.lora.config import check_lora_applied, check_pattern_keys, lora_config

# peft reads transformers' deprecated ``is_gradient_checkpointing`` each time it wraps a model:
# a FutureWarning about peft's code that a user can do nothing about.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

__all__ = ["apply_plan", "check_lora_applied", "check_pattern_keys", "lora_config"]
