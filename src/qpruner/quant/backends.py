"""Packed linear modules from the field's kernels: bitsandbytes (int8, NF4, FP4) and hqq (2/3/4 bit).

We only choose and configure the backend modules here; packing, kernels and backward pass
are theirs. Both run on CPU and CUDA with the same code: bitsandbytes quantizes when a
parameter is moved to its device, hqq when the module is built on it. peft recognises
both module types and wraps them in its matching LoRA layers (see ``qpruner.lora``).
"""

from __future__ import annotations

import torch
from torch import nn

from qpruner.errors import QPrunerError
from qpruner.quant.packing import BNB_BLOCKSIZE, BNB_DOUBLE_QUANT, hqq_group_size


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise QPrunerError("bitsandbytes is not installed: pip install bitsandbytes") from exc
    return bnb


def _hqq():
    try:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise QPrunerError("hqq is not installed: pip install hqq (needed for 2/3-bit formats)") from exc
    return BaseQuantizeConfig, HQQLinear


def quantize_linear(linear: nn.Linear, fmt: str, compute_dtype: torch.dtype) -> nn.Module:
    """A packed replacement for ``linear`` (same device) holding its weight in ``fmt``.

    ``linear``'s own weight is left to the caller to drop; the new module owns new storage.
    """
    device = linear.weight.device
    if device.type == "meta":
        raise QPrunerError("cannot quantize a module on the meta device; load the weights first")
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if fmt in ("nf4", "fp4"):
        bnb = _bnb()
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=BNB_DOUBLE_QUANT,
            quant_type=fmt,
            device="meta",
        )
        # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for a faster kernel on
        # its first no-grad forward: the absmax is un-nested to float32 (more bytes than the
        # plan was priced at) and output widths must be multiples of 32, which pruned layers
        # often are not. Keep the portable layout, the same on every machine.
        q.support_avx512bf16_for_cpu = False
        q.weight = bnb.nn.Params4bit(
            weight.to("cpu", torch.float32),
            requires_grad=False,
            quant_type=fmt,
            blocksize=BNB_BLOCKSIZE,
            compress_statistics=BNB_DOUBLE_QUANT,
        )
    elif fmt == "int8":
        bnb = _bnb()
        q = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=bias is not None,
            has_fp16_weights=False,
            threshold=0.0,  # no fp16 outlier side-path: its cost is not in our memory model
            device="meta",
        )
        q.weight = bnb.nn.Int8Params(
            weight.to("cpu", torch.float16), requires_grad=False, has_fp16_weights=False
        )
    elif fmt.startswith("hqq"):
        base_config, hqq_linear = _hqq()
        bits = int(fmt[3:])
        cfg = base_config(nbits=bits, group_size=hqq_group_size(weight.numel(), bits), axis=1)
        src = nn.Linear(linear.in_features, linear.out_features, bias=bias is not None, device="meta")
        src.weight = nn.Parameter(weight.to(torch.float32), requires_grad=False)
        if bias is not None:
            src.bias = nn.Parameter(bias.to(compute_dtype), requires_grad=False)
        return hqq_linear(
            src, cfg, compute_dtype=compute_dtype, device=str(device), initialize=True, del_orig=True
        )
    else:
        raise QPrunerError(f"{fmt!r} is not a packed format")
    if bias is not None:
        q.bias = nn.Parameter(bias.to(compute_dtype).clone(), requires_grad=False)
    return q.to(device)


def _kind(module: nn.Module) -> str | None:
    """``"bnb4"``, ``"bnb8"``, ``"hqq"`` or None. By class, not name: peft's LoRA wrappers reuse the names."""
    bnb = _bnb()
    if isinstance(module, bnb.nn.Linear4bit):
        return "bnb4"
    if isinstance(module, bnb.nn.Linear8bitLt):
        return "bnb8"
    if isinstance(module, _hqq()[1]):
        return "hqq"
    return None


def is_packed_module(module: nn.Module) -> bool:
    return _kind(module) is not None


def packed_format(module: nn.Module) -> str | None:
    """The format a packed module holds, or None for anything else."""
    kind = _kind(module)
    if kind == "bnb4":
        return module.weight.quant_type
    if kind == "bnb8":
        return "int8"
    if kind == "hqq":
        return f"hqq{module.meta['nbits']}"
    return None


def dequantize_weight(module: nn.Module) -> torch.Tensor:
    """The float32 ``out x in`` weight a packed (or plain) linear module computes with."""
    kind = _kind(module)
    if kind == "bnb4":
        w = _bnb().functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
    elif kind == "bnb8":
        w = module.weight.data.float()
        scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
        w = w * scb.float().unsqueeze(1) / 127.0
    elif kind == "hqq":
        w = module.dequantize()
    else:
        w = module.weight
    return w.detach().to(torch.float32).reshape(module.out_features, module.in_features)


def held_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every tensor a (packed) linear module keeps alive: weight, bias, scales and codes.

    ``parameters()`` misses the quantization state (bitsandbytes keeps it on the weight's
    ``quant_state``/``SCB``, hqq in ``meta``), which is part of what the weights cost.
    """
    out = [p for p in module.parameters(recurse=False)] + [b for b in module.buffers(recurse=False)]
    kind = _kind(module)
    if kind == "bnb4":
        qs = module.weight.quant_state
        while qs is not None:
            out += [v for v in vars(qs).values() if torch.is_tensor(v)]
            qs = getattr(qs, "state2", None)
    elif kind == "bnb8":
        out += [t for t in (module.weight.SCB, module.state.SCB, module.state.CB) if t is not None]
    elif kind == "hqq":
        out += [v for v in module.meta.values() if torch.is_tensor(v)]
        if torch.is_tensor(getattr(module, "bias", None)):
            out.append(module.bias)
    return out
