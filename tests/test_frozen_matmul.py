"""FrozenMatmul: packed int8 and hqq modules train with the libraries' numerics, keeping
nothing of their input for the backward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qpruner.quant.frozen_matmul import use_frozen_matmul
from qpruner.quant.registry import backend_of, quantize_linear


def _packed(fmt: str, bias: bool) -> nn.Module:
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias)
    return quantize_linear(linear, fmt, compute_dtype=torch.float32).train()


def _run(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Output, input gradient and how many tensors autograd saved on the way."""
    x = x.clone().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = module(x)
    weights = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    return y.detach(), grad, len(saved)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("fmt", ["int8", "hqq4", "hqq3", "hqq2"])
def test_same_numbers_as_the_library_and_nothing_saved(fmt, bias):
    module = _packed(fmt, bias)
    x = torch.randn(2, 7, 96, generator=torch.Generator().manual_seed(1))
    y_lib, g_lib, _ = _run(module, x)
    undo = use_frozen_matmul(module, backend_of(module).frozen_weight(module))
    y, g, saved = _run(module, x)
    undo()
    torch.testing.assert_close(y, y_lib, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_lib, rtol=1e-5, atol=1e-5)
    assert saved == 0
    assert "forward" not in vars(module)  # the undo restores the library's forward


def test_the_library_hqq_path_saves_its_input():
    """Why FrozenMatmul exists: hqq's training forward saves the input (bitsandbytes' int8
    keeps it as ``ctx.A``, outside the saved tensors, where no hook sees it)."""
    _, _, saved = _run(_packed("hqq2", bias=False), torch.randn(2, 7, 96))
    assert saved >= 1


def test_nf4_keeps_the_library_forward():
    module = _packed("nf4", bias=False)
    assert backend_of(module).frozen_weight(module) is None
