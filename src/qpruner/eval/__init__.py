"""Measuring a model: size and shapes, perplexity, lm-eval tasks, all through :func:`evaluate_model`."""

from qpruner.eval.evaluate import EvalConfig, ModelScores, evaluate_model
from qpruner.eval.perplexity import PerplexityResult, perplexity
from qpruner.eval.size import ModelSize, model_size, shape_table

__all__ = [
    "EvalConfig",
    "ModelScores",
    "ModelSize",
    "PerplexityResult",
    "evaluate_model",
    "model_size",
    "perplexity",
    "shape_table",
]
