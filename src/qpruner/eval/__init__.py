"""Evaluation: perplexity and model size reports."""

from qpruner.eval.perplexity import PerplexityResult, load_eval_tokens, perplexity
from qpruner.eval.size import ModelSize, model_size, shape_table

__all__ = ["PerplexityResult", "perplexity", "load_eval_tokens", "ModelSize", "model_size", "shape_table"]
