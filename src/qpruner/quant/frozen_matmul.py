"""The matmul of a frozen packed weight, keeping nothing of its input for the backward pass.

A packed base weight never gets a gradient; its input's gradient needs only the weight
(``grad_x = grad_y @ W``). Yet the libraries' training paths keep the input anyway: hqq's
``HQQMatmulNoCacheMul`` saves it (for a weight gradient it never computes) and bitsandbytes'
int8 ``MatMul8bitFp`` keeps it on the autograd node as ``ctx.A``, where even activation
checkpointing cannot drop it. At SmolLM2's shapes and 4 x 256 tokens those inputs made a
2-bit hqq layer cost more to fine-tune than an NF4 one, so a memory budget at uniform NF4's
price had nothing to search. Neither library offers a switch for this, hence this small
autograd function: forward and backward each dequantize the weight (as hqq's and the CPU int8
path already do), and autograd keeps only a reference to the module.

Numerics are the libraries' own on CPU (dequantize, then a dense matmul in the input's dtype).
On CUDA bitsandbytes' int8 training path (``MatMul8bitLt``) would also quantize the input to
int8 per row; this path computes with the dequantized int8 weight instead, as bitsandbytes does
on CPU and XPU, so one plan computes the same way on every device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: ``dtype -> the out x in weight in dtype``: a backend's dequantization of one module.
WeightFn = Callable[[torch.dtype], torch.Tensor]


class FrozenMatmul(torch.autograd.Function):
    """``y = x W^T + b`` for a weight recomputed by ``weight_of``; saves no tensor."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_of: WeightFn, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.weight_of = weight_of
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(x, weight_of(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_x = grad @ ctx.weight_of(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = None
        if ctx.needs_input_grad[2]:  # a trainable bias on a packed base: not ours, but exact
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_x, None, grad_bias


def use_frozen_matmul(module: nn.Module, weight_of: WeightFn) -> Callable[[], None]:
    """Route ``module``'s forward through :class:`FrozenMatmul`; return the undo.

    An instance attribute shadows the class's ``forward`` (hqq swaps forwards per class), and
    ``nn.Module.__call__`` still runs the module's hooks around it.
    """

    def forward(x: torch.Tensor) -> torch.Tensor:
        return FrozenMatmul.apply(x, weight_of, getattr(module, "bias", None))

    module.forward = forward
    return lambda: delattr(module, "forward")
