"""Stage 2: mixed-precision quantization with real packed weights, one file per backend.

``backend.py`` says what a backend answers; ``bnb.py`` and ``hqq.py`` are the backends;
``registry.py`` lists them and dispatches; ``apply.py`` quantizes a model per a plan.

Names resolve on first use: :mod:`qpruner.plan` imports the registry for its format table
and ``apply`` imports the plan, so an eager import here would be a circle.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "check_plan_fits": "qpruner.quant.apply",
    "quantize_model": "qpruner.quant.apply",
    "dequantize_weight": "qpruner.quant.registry",
    "held_tensors": "qpruner.quant.registry",
    "is_packed_module": "qpruner.quant.registry",
    "packed_format": "qpruner.quant.registry",
    "packed_weight_bytes": "qpruner.quant.registry",
    "quantize_linear": "qpruner.quant.registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'qpruner.quant' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
