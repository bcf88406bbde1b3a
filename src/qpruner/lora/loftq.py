"""LoftQ initialisation (Li et al., 2023) for any packed format, on CPU or GPU.

LoftQ starts LoRA at the best rank-r correction of the quantization error, so training
begins from (almost) the unquantized model instead of the quantized one. peft ships
``loftq_init``, but in peft 0.21 it moves weights to CUDA unconditionally and supports only
NF4 and int8, whereas a mixed plan also has FP4 and 2/3-bit hqq layers and our CI is CPU
only. The algorithm is two lines of linear algebra on top of our own quantizers, so we
run it here with the same backends that build the base model.

One alternating step (peft's default ``loftq_iter=1``): the base keeps ``Q = quant(W)``,
exactly what quantizing without LoftQ gives, so a saved adapter applies to a base
re-quantized from the pruned checkpoint. More steps would change ``Q`` itself and need a
saved base; we do not offer them.
"""

from __future__ import annotations

import torch
from torch import nn

from qpruner.quant.registry import dequantize_weight


@torch.no_grad()
def loftq_factors(
    weight: torch.Tensor, qmodule: nn.Module, rank: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``scaling * B @ A`` the best rank-``rank`` approximation of ``W - deq(Q)``."""
    residual = weight.to(torch.float32) - dequantize_weight(qmodule).to(weight.device)
    u, s, vh = torch.linalg.svd(residual, full_matrices=False)
    root = torch.sqrt(s[:rank] / scaling)
    b = u[:, :rank] * root  # out x r
    a = root[:, None] * vh[:rank]  # r x in
    return a, b
