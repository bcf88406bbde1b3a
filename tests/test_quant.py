"""Packed weights: real bytes, error bounds, and the memory model's weight bytes to the byte."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_model
from torch import nn

from qpruner.errors import QPrunerError
from qpruner.memory import estimate, held_memory
from qpruner.plan import (
    BITS_TO_FORMAT,
    DENSE_FORMATS,
    PACKED_FORMATS,
    Plan,
    PlanError,
    format_for_bits,
    is_packed,
)
from qpruner.plan import FORMATS as ALL_FORMATS
from qpruner.quant import dequantize_weight, held_tensors, packed_format, packed_weight_bytes, quantize_model
from qpruner.quant.registry import BACKENDS, backend_for_format, backend_of, quantize_linear

FORMATS = list(PACKED_FORMATS)


def _bytes(tensors) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(704, 256), (256, 704), (40, 24), (96, 64)])
def test_packed_bytes_are_exact(fmt, shape):
    torch.manual_seed(0)
    lin = nn.Linear(shape[1], shape[0], bias=False)
    q = quantize_linear(lin, fmt, torch.float32)
    assert packed_format(q) == fmt
    assert _bytes(held_tensors(q)) == packed_weight_bytes(fmt, *shape, scale_bytes=4)
    assert not any(p.is_floating_point() and p.numel() == lin.weight.numel() for p in q.parameters())


# Relative error of the dequantized weight (mean |dW| / mean |W|) on Gaussian weights.
# Measured: int8 0.0075, nf4 0.091, fp4 0.121, hqq4 0.093, hqq3 0.193, hqq2 0.457 (uniform 2-bit
# with a zero point per 64 weights: 3 steps over ~4.6 sigma).
ERROR_BOUND = {"int8": 0.01, "nf4": 0.10, "fp4": 0.135, "hqq4": 0.105, "hqq3": 0.21, "hqq2": 0.50}


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantization_error_bounds(fmt):
    torch.manual_seed(1)
    lin = nn.Linear(256, 512, bias=False)
    with torch.no_grad():
        lin.weight.normal_()
    q = quantize_linear(lin, fmt, torch.float32)
    w = dequantize_weight(q)
    err = ((w - lin.weight).abs().mean() / lin.weight.abs().mean()).item()
    assert err < ERROR_BOUND[fmt]
    x = torch.randn(4, 256)
    y_err = ((q(x) - lin(x)).norm() / lin(x).norm()).item()
    assert y_err < 2 * ERROR_BOUND[fmt]
    assert torch.allclose(q(x), x @ w.T, rtol=1e-3, atol=1e-3)  # the module computes with deq(W)


def test_fewer_bits_more_error_and_fewer_bytes():
    torch.manual_seed(2)
    lin = nn.Linear(256, 256, bias=False)
    errs, sizes = [], []
    for fmt in ("int8", "hqq4", "hqq3", "hqq2"):
        q = quantize_linear(lin, fmt, torch.float32)
        errs.append((dequantize_weight(q) - lin.weight).abs().mean().item())
        sizes.append(_bytes(held_tensors(q)))
    assert errs == sorted(errs) and sizes == sorted(sizes, reverse=True)


def test_four_bit_holds_a_quarter_of_sixteen_bit():
    lin = nn.Linear(2048, 2048, bias=False)
    q = quantize_linear(lin, "nf4", torch.bfloat16)
    ratio = _bytes(held_tensors(q)) / (lin.weight.numel() * 2)
    assert 0.25 < ratio < 0.259  # 1/4 + one uint8 absmax per 64 weights (1/128) + small tables


def mixed_plan(model, dtype="fp32") -> Plan:
    n = model.config.num_hidden_layers
    plan = Plan.uniform(n, "nf4", rank=4, dtype=dtype)
    plan.layers[0].weight_format = "int8"
    plan.layers[1].weight_format = dtype
    plan.layers[2].weight_format = "hqq3"
    plan.layers[2].module_formats = {"mlp.down_proj": "hqq2", "self_attn.o_proj": dtype}
    plan.layers[-1].module_formats = {"self_attn.q_proj": "fp4", "mlp.up_proj": "hqq4"}
    return plan


@pytest.mark.parametrize("kind", ["gqa", "tied", "qwen2", "mistral"])
def test_estimate_equals_held_weight_bytes(kind):
    model = make_model(kind, layers=4)
    plan = mixed_plan(model)
    predicted = estimate(model.config, plan)
    done = quantize_model(model, plan)
    assert done["model.layers.2.mlp.down_proj"] == "hqq2" and "model.layers.1.mlp.up_proj" not in done
    held = held_memory(model)
    assert held["packed_weights"] == predicted.components["packed_weights"]
    assert held["dense_weights"] == predicted.components["dense_weights"]
    for name, fmt in done.items():
        assert packed_format(model.get_submodule(name)) == fmt


def test_quantized_model_runs_close_to_dense():
    model = make_model("gqa", layers=4)
    dense = copy.deepcopy(model)
    plan = Plan.uniform(4, "int8", rank=4, dtype="fp32")
    quantize_model(model, plan)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        a, b = model(ids).logits, dense(ids).logits
    assert ((a - b).norm() / b.norm()).item() < 0.05
    assert model.is_loaded_in_8bit and not model.is_loaded_in_4bit


def test_lm_head_format():
    model = make_model("gqa", layers=2)
    plan = Plan.uniform(2, "fp32", rank=4, dtype="fp32")
    plan.lm_head_format = "int8"
    predicted = estimate(model.config, plan)
    quantize_model(model, plan)
    assert packed_format(model.lm_head) == "int8"
    assert held_memory(model)["packed_weights"] == predicted.components["packed_weights"]
    tied = make_model("tied", layers=2)
    with pytest.raises(PlanError, match="ties lm_head"):
        quantize_model(tied, plan)


def test_refuses_double_quantization_and_bad_plans():
    model = make_model("gqa", layers=2)
    quantize_model(model, Plan.uniform(2, "nf4", dtype="fp32"))
    with pytest.raises(QPrunerError, match="already quantized"):
        quantize_model(model, Plan.uniform(2, "nf4", dtype="fp32"))
    with pytest.raises(PlanError, match="plan has 3 layers but the model has 2"):
        quantize_model(make_model("gqa", layers=2), Plan.uniform(3, "nf4", dtype="fp32"))


def test_bf16_plan_casts_the_model():
    model = make_model("gqa", layers=2)
    plan = Plan.uniform(2, "nf4", dtype="bf16")
    plan.layers[0].weight_format = "bf16"
    predicted = estimate(model.config, plan)
    quantize_model(model, plan)
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    held = held_memory(model)
    assert held["packed_weights"] + held["dense_weights"] == (
        predicted.components["packed_weights"] + predicted.components["dense_weights"]
    )


def test_registry_covers_every_packed_plan_format():
    packed = [f for f in ALL_FORMATS if is_packed(f)]
    assert packed == FORMATS and packed
    owners = {f: backend_for_format(f) for f in packed}
    assert set(owners.values()) == set(BACKENDS)
    for fmt, backend in owners.items():
        assert backend.formats[fmt] == ALL_FORMATS[fmt]
    assert not set(DENSE_FORMATS) & set(owners)
    for fmt in DENSE_FORMATS:
        with pytest.raises(QPrunerError, match="not a packed format"):
            backend_for_format(fmt)
    assert {format_for_bits(b, "bf16") for b in BITS_TO_FORMAT} <= set(packed)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_each_backend_round_trips_its_formats(backend):
    lin = nn.Linear(64, 32, bias=True)
    others = [b for b in BACKENDS if b is not backend]
    for fmt in backend.formats:
        q = backend.quantize(lin, fmt, torch.float32)
        assert backend.owns(q) and backend.format_of(q) == fmt
        assert backend_of(q) is backend and packed_format(q) == fmt
        assert not any(b.owns(q) for b in others)
        assert backend.dequantize(q).shape == (32, 64) and backend.dequantize(q).dtype == torch.float32
    assert not backend.owns(lin) and backend_of(lin) is None and packed_format(lin) is None


def test_owner_is_found_by_class_not_name():
    q = quantize_linear(nn.Linear(64, 32), "nf4", torch.float32)
    impostor = nn.Linear(64, 32)
    impostor.__class__ = type("Linear4bit", (nn.Linear,), {})  # peft's wrappers reuse the names
    assert backend_of(q) is not None and backend_of(impostor) is None
    assert [id(t) for t in held_tensors(impostor)] == [id(impostor.weight), id(impostor.bias)]
    assert torch.equal(dequantize_weight(impostor), impostor.weight)
