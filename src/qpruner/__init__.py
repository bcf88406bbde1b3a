"""qpruner: prune, quantize and recover LLaMA-layout language models."""

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
