"""qpruner: prune, quantize and recover LLaMA-layout language models."""

import logging


class _QuietBitsandbytes(logging.Filter):
    """Two bitsandbytes log lines that mislead more than they inform on our paths.

    At import on AVX512-BF16 CPUs it warns that the optional ``kernels`` package (a hub
    download) is missing; its portable CPU path works without it. And every int8 matmul with
    float32 inputs (our CPU compute dtype) logs that inputs are cast to float16: once is enough.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cast_seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith("Failed to load CPU gemm_4bit_forward"):
            return False
        if msg.startswith("MatMul8bitLt: inputs will be cast"):
            seen, self.cast_seen = self.cast_seen, True
            return not seen
        return True


_quiet = _QuietBitsandbytes()
for _name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
    logging.getLogger(_name).addFilter(_quiet)

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
