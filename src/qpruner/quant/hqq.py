"""hqq: 2/3/4-bit weights with a scale and zero point per group (``HQQLinear``).

bitsandbytes has nothing below 4 bit; hqq quantizes without calibration data, on CPU and
CUDA alike (it quantizes when the module is built on its device), and peft wraps its module
in a matching LoRA layer.

Storage layout (as of hqq 0.2.8), from which :meth:`HqqBackend.packed_bytes` prices a plan
before anything is quantized (``tests/test_quant.py`` checks it against the real tensors):
weights grouped ``group_size`` at a time (rows of the grouped matrix); 8/4/2 bit pack 1/2/4
group-rows per uint8 row, 3 bit packs 10 group-rows per int32 row; a scale and a zero per
group in the compute dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qpruner.errors import QPrunerError
from qpruner.quant.backend import Backend, as_out_in
from qpruner.quant.frozen_matmul import WeightFn

HQQ_GROUP_SIZE = 64
_HQQ_ROWS_PER_PACK = {8: (1, 1), 4: (2, 1), 2: (4, 1), 3: (10, 4)}  # group-rows per packed row, bytes/elem


def _hqq() -> tuple[type, type[nn.Module]]:
    try:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise QPrunerError("hqq is not installed: pip install hqq (needed for 2/3-bit formats)") from exc
    return BaseQuantizeConfig, HQQLinear


def hqq_group_size(numel: int, bits: int) -> int:
    """The largest group size <= 64 hqq can pack ``numel`` weights with.

    hqq needs whole groups, and at 2/4 bit a whole number of packed rows (no padding,
    unlike its 3-bit packer); pruned layers can have odd widths, so halve until it fits.
    """
    per = 1 if bits == 3 else _HQQ_ROWS_PER_PACK[bits][0]
    g = HQQ_GROUP_SIZE
    while g >= 8:
        if numel % g == 0 and (numel // g) % per == 0:
            return g
        g //= 2
    raise QPrunerError(
        f"cannot group a weight of {numel} elements for hqq (needs a multiple of 8); "
        "prune with --channel-multiple 8"
    )


class HqqBackend(Backend):
    """hqq's ``HQQLinear`` at 4, 3 and 2 bits (``hqqN``), axis 1, groups of up to 64."""

    name = "hqq"
    formats = {"hqq4": 4, "hqq3": 3, "hqq2": 2}
    defaults = ("hqq3", "hqq2")
    library_module = "hqq.core.quantize"

    def quantize(self, linear: nn.Linear, fmt: str, compute_dtype: torch.dtype) -> nn.Module:
        self.check_format(fmt)
        base_config, hqq_linear = _hqq()
        weight = linear.weight.detach()
        bias = linear.bias.detach() if linear.bias is not None else None
        bits = self.formats[fmt]
        cfg = base_config(nbits=bits, group_size=hqq_group_size(weight.numel(), bits), axis=1)
        src = nn.Linear(linear.in_features, linear.out_features, bias=bias is not None, device="meta")
        src.weight = nn.Parameter(weight.to(torch.float32), requires_grad=False)
        if bias is not None:
            src.bias = nn.Parameter(bias.to(compute_dtype), requires_grad=False)
        return hqq_linear(
            src,
            cfg,
            compute_dtype=compute_dtype,
            device=str(weight.device),
            initialize=True,
            del_orig=True,
        )

    def module_classes(self) -> tuple[type[nn.Module], ...]:
        return (_hqq()[1],)

    def format_of(self, module: nn.Module) -> str:
        return f"hqq{module.meta['nbits']}"

    def dequantize(self, module: nn.Module) -> torch.Tensor:
        return as_out_in(module, module.dequantize())

    def state_tensors(self, module: nn.Module) -> list[torch.Tensor]:
        # Scales and zeros live in the ``meta`` dict; the bias is a plain attribute.
        out = [v for v in module.meta.values() if torch.is_tensor(v)]
        if torch.is_tensor(getattr(module, "bias", None)):
            out.append(module.bias)
        return out

    def frozen_weight(self, module: nn.Module) -> WeightFn | None:
        # HQQMatmulNoCacheMul, hqq's training forward, saves its input for a weight gradient
        # it never computes. Dequantized in the module's compute dtype, then cast to the
        # input's (autocast's), in forward and backward alike.
        return lambda dtype: module.dequantize().to(dtype)

    def dequant_bytes(self, fmt: str, weight_bytes: int, compute_bytes: int) -> int:
        # Quantizer.dequantize: the unpacked codes, (codes - zero) and its product with the
        # scale coexist, in the module's dtype (the plan's); then our cast to the compute dtype.
        return max(3 * weight_bytes, weight_bytes + compute_bytes)

    def packed_bytes(self, fmt: str, out_features: int, in_features: int, scale_bytes: int) -> int:
        self.check_format(fmt)
        n = out_features * in_features
        bits = self.formats[fmt]
        group = hqq_group_size(n, bits)
        groups = n // group
        per, elem = _HQQ_ROWS_PER_PACK[bits]
        return math.ceil(groups / per) * group * elem + 2 * groups * scale_bytes
