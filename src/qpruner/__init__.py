"""qpruner: prune, quantize and recover LLaMA-layout language models."""

import logging


class _DropBnbKernelHubNotice(logging.Filter):
    """bitsandbytes logs a warning at import on AVX512-BF16 CPUs unless the optional ``kernels``
    package (a hub download) is present; its portable CPU path works without it, so every
    CLI error would otherwise start with a misleading line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropBnbKernelHubNotice())

from qpruner.checkpoint import load_model, load_pruned, load_tokenizer, save_pruned  # noqa: E402
from qpruner.errors import QPrunerError  # noqa: E402
from qpruner.plan import LayerPlan, Plan  # noqa: E402
from qpruner.prune import PruneConfig, PruneResult, calibration_samples, prune_model  # noqa: E402

# Recovery pulls in peft and bitsandbytes (slow to import): loaded on first use.
_LAZY = {
    "apply_plan": ("qpruner.lora.apply", "apply_plan"),
    "finetune": ("qpruner.lora.recover", "finetune"),
    "TrainConfig": ("qpruner.lora.train", "TrainConfig"),
    "estimate_memory": ("qpruner.memory", "estimate"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'qpruner' has no attribute {name!r}")


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
