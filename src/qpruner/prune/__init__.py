"""Stage 1: LLM-Pruner-style structured pruning of heads and MLP channels."""

from qpruner.prune.calibration import calibration_samples
from qpruner.prune.config import IMPORTANCE_METHODS, PruneConfig, layer_targets
from qpruner.prune.pruner import LayerPruning, PruneResult, prune_model

__all__ = [
    "IMPORTANCE_METHODS",
    "PruneConfig",
    "PruneResult",
    "LayerPruning",
    "calibration_samples",
    "layer_targets",
    "prune_model",
]
