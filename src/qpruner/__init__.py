"""qpruner: prune, quantize and recover LLaMA-layout language models."""

from qpruner.checkpoint import load_model, load_pruned, load_tokenizer, save_pruned
from qpruner.errors import QPrunerError
from qpruner.lora import apply_plan
from qpruner.lora.recover import finetune
from qpruner.lora.train import TrainConfig
from qpruner.memory import estimate as estimate_memory
from qpruner.plan import LayerPlan, Plan
from qpruner.prune import PruneConfig, PruneResult, calibration_samples, prune_model

__version__ = "0.1.0"

__all__ = [
    "LayerPlan",
    "Plan",
    "TrainConfig",
    "apply_plan",
    "estimate_memory",
    "finetune",
    "PruneConfig",
    "PruneResult",
    "QPrunerError",
    "calibration_samples",
    "load_model",
    "load_pruned",
    "load_tokenizer",
    "prune_model",
    "save_pruned",
]
