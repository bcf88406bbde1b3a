"""Stage 2: mixed-precision quantization with real packed weights (bitsandbytes, hqq)."""

from qpruner.quant.apply import check_plan_fits, quantize_model
from qpruner.quant.backends import dequantize_weight, held_tensors, packed_format, quantize_linear
from qpruner.quant.packing import packed_weight_bytes

__all__ = [
    "check_plan_fits",
    "dequantize_weight",
    "held_tensors",
    "packed_format",
    "packed_weight_bytes",
    "quantize_linear",
    "quantize_model",
]
