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

# The API a user needs for each stage. Importing qpruner stays cheap: every name loads its
# module (and so torch, transformers, peft, optuna) on first use.
_API = {
    # models in and out
    "load_model": "qpruner.loader",
    "load_pruned": "qpruner.checkpoint",
    "load_tokenizer": "qpruner.checkpoint",
    "save_pruned": "qpruner.checkpoint",
    # 1. prune
    "PruneConfig": "qpruner.prune",
    "PruneResult": "qpruner.prune",
    "calibration_samples": "qpruner.prune",
    "prune_model": "qpruner.prune",
    # the plan, and where plans come from
    "LayerPlan": "qpruner.plan",
    "Plan": "qpruner.plan",
    "PlanSource": "qpruner.plan_sources",
    "uniform_plan": "qpruner.plan_sources",
    "estimate_memory": "qpruner.memory",
    # 2-3. quantize and recover
    "apply_plan": "qpruner.lora.apply",
    "finetune": "qpruner.lora.recover",
    "TrainConfig": "qpruner.lora.train",
    # 4. search
    "SearchConfig": "qpruner.search.from_model",
    "search_model": "qpruner.search.from_model",
    # evaluation and the whole pipeline
    "EvalConfig": "qpruner.eval.evaluate",
    "evaluate_model": "qpruner.eval.evaluate",
    "RunConfig": "qpruner.pipeline",
    "run_pipeline": "qpruner.pipeline",
    "QPrunerError": "qpruner.errors",
}
_RENAMED = {"estimate_memory": "estimate"}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), _RENAMED.get(name, name))
    raise AttributeError(f"module 'qpruner' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = sorted(_API)
