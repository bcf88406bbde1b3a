"""Stage 3: LoRA recovery on the quantized base, per-layer ranks from the plan."""

from qpruner.lora.apply import apply_plan
from qpruner.lora.config import check_lora_applied, check_pattern_keys, lora_config

__all__ = ["apply_plan", "check_lora_applied", "check_pattern_keys", "lora_config"]
