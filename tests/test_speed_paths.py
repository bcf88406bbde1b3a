"""The fast paths compute what the plain ones do: chunked loss, bf16 compute, dropout, restoring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, make_model
from torch import nn

from qpruner import Plan, apply_plan
from qpruner.compute import ATTN_FP32, MaskDropout, autocast, prepared
from qpruner.device import fast_bf16, resolve_compute_dtype
from qpruner.errors import QPrunerError
from qpruner.eval.perplexity import perplexity
from qpruner.lm_loss import causal_lm_loss, head_cross_entropy, shifted_targets, token_nll


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three rows: one with an ignored prompt, one right-padded."""
    ids = torch.randint(0, VOCAB, (3, 17), generator=torch.Generator().manual_seed(seed))
    labels, mask = ids.clone(), torch.ones_like(ids)
    labels[0, :5] = -100
    mask[2, 12:], labels[2, 12:] = 0, -100
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _reference_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), shifted_targets(batch["labels"]), ignore_index=-100
    )


@pytest.mark.parametrize("kind", ["gqa", "tied"])
def test_chunked_loss_and_gradient_equal_the_plain_ones_in_float64(kind):
    model = make_model(kind, layers=2).double()
    for p in model.parameters():
        p.requires_grad_(False)
    weight = model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)
    batch = _batch()
    plain = _reference_loss(model, batch)
    (g_plain,) = torch.autograd.grad(plain, weight)
    chunked = causal_lm_loss(model, batch, chunk=7)  # 51 targets: chunks of 7 and a remainder
    (g_chunked,) = torch.autograd.grad(chunked, weight)
    assert abs(plain.item() - chunked.item()) < 1e-12
    assert torch.allclose(g_plain, g_chunked, rtol=1e-10, atol=1e-14)


def test_chunked_loss_matches_transformers_on_a_lora_model():
    """float32, peft-wrapped: the loss train() used before is the loss it uses now."""
    model = apply_plan(make_model("gqa", layers=2), Plan.uniform(2, "fp32", rank=4, dtype="fp32")).eval()
    batch = _batch(1)
    assert math.isclose(
        model(**batch).loss.item(), causal_lm_loss(model, batch, chunk=16).item(), rel_tol=1e-6
    )


def test_trainable_head_takes_the_checkpointed_path():
    head = nn.Linear(8, 11, bias=True).double()
    h = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (13,))
    t[3] = -100
    plain = F.cross_entropy(head(h), t, ignore_index=-100)
    grads = torch.autograd.grad(plain, [h, head.weight])
    chunked = head_cross_entropy(h, head, t, chunk=4)
    assert abs(plain.item() - chunked.item()) < 1e-12
    for a, b in zip(grads, torch.autograd.grad(chunked, [h, head.weight]), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_token_nll_is_the_per_token_cross_entropy():
    head = nn.Linear(8, 11, bias=False).double()
    h, t = torch.randn(13, 8, dtype=torch.float64), torch.randint(0, 11, (13,))
    want = F.cross_entropy(head(h), t, reduction="none")
    assert torch.allclose(token_nll(h, head, t, chunk=5), want, rtol=1e-12)


@pytest.mark.parametrize("fmt", ["fp32", "nf4", "int8", "hqq3"])
def test_bf16_compute_moves_perplexity_by_under_half_a_percent(fmt):
    model = apply_plan(make_model("gqa", layers=4), Plan.uniform(4, fmt, rank=4, dtype="fp32")).eval()
    ids = torch.randint(0, VOCAB, (400,), generator=torch.Generator().manual_seed(2))
    fp32 = perplexity(model, ids, ctx_len=64, progress=False, compute_dtype="fp32").ppl
    bf16 = perplexity(model, ids, ctx_len=64, progress=False, compute_dtype="bf16").ppl
    assert abs(bf16 / fp32 - 1) < 0.005, (fp32, bf16)


def test_bf16_weights_and_compute_move_perplexity_by_under_half_a_percent():
    model = make_model("gqa", layers=4)
    ids = torch.randint(0, VOCAB, (400,), generator=torch.Generator().manual_seed(3))
    fp32 = perplexity(model, ids, ctx_len=64, progress=False, compute_dtype="fp32").ppl
    bf16 = perplexity(model.to(torch.bfloat16), ids, ctx_len=64, progress=False, compute_dtype="bf16").ppl
    assert abs(bf16 / fp32 - 1) < 0.005, (fp32, bf16)


def test_bf16_training_loss_and_gradients_are_close_to_fp32():
    model = apply_plan(make_model("gqa", layers=2), Plan.uniform(2, "nf4", rank=4, dtype="fp32"))
    model.eval()  # no dropout: the two paths draw their masks differently
    batch = _batch(4)
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        with prepared(model, dtype, "cpu"):
            with autocast(dtype, "cpu"):
                loss = causal_lm_loss(model, batch, chunk=16)
            out[dtype] = (loss.item(), torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    (l32, g32), (l16, g16) = out[torch.float32], out[torch.bfloat16]
    assert abs(l16 - l32) / l32 < 0.01
    assert F.cosine_similarity(g16, g32, dim=0) > 0.99


def test_prepared_restores_the_model():
    model = apply_plan(make_model("gqa", layers=2), Plan.uniform(2, "nf4", rank=4, dtype="fp32"))
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        before = model.eval()(input_ids=ids).logits
    module = model.get_base_model().model.layers[0].self_attn.q_proj
    with prepared(model, torch.bfloat16, "cpu"):
        assert model.get_base_model().config._attn_implementation == ATTN_FP32
        assert isinstance(module.lora_dropout["default"], MaskDropout)
        assert module.base_layer.compute_dtype == torch.bfloat16
    assert model.get_base_model().config._attn_implementation == "sdpa"
    assert type(module.lora_dropout["default"]) is nn.Dropout
    assert module.base_layer.compute_dtype == torch.float32
    assert not module.base_layer._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(before, model(input_ids=ids).logits)


def test_mask_dropout_drops_p_and_keeps_the_mean():
    drop = MaskDropout(0.25).train()
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01
    assert abs(y.mean().item() - 1) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the same mask and scale
    assert drop.eval()(x) is x and MaskDropout(0.0).train()(x) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert drop.train()(x).dtype == torch.bfloat16


def test_compute_dtype_choice():
    assert resolve_compute_dtype("fp32", "cpu") == torch.float32
    assert resolve_compute_dtype("bf16", "cpu") == torch.bfloat16
    auto = resolve_compute_dtype("auto", "cpu")
    assert auto == (torch.bfloat16 if fast_bf16("cpu") else torch.float32)
    with pytest.raises(QPrunerError, match="compute dtype"):
        resolve_compute_dtype("int8", "cpu")


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("gemm_wins", [True, False])
def test_auto_compute_dtype_needs_the_flag_and_a_timed_win(monkeypatch, flag, gemm_wins):
    """An AVX512-BF16 flag is not enough: an Intel Xeon with it ran bf16 GEMMs at half the
    float32 rate. bf16 only where the CPU has the flag and the timed GEMM wins."""
    import qpruner.device as device

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: flag, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(device, "_bf16_gemm_wins", lambda: gemm_wins)
    want = torch.bfloat16 if flag and gemm_wins else torch.float32
    assert resolve_compute_dtype("auto", "cpu") == want


def test_bf16_probe_is_timed_once_per_process():
    import qpruner.device as device

    first = device._bf16_gemm_wins()
    hits = device._bf16_gemm_wins.cache_info().hits
    assert device._bf16_gemm_wins() is first and device._bf16_gemm_wins.cache_info().hits == hits + 1


def test_bf16_choice_is_kept_per_machine_so_every_process_agrees(monkeypatch, tmp_path):
    """Measured once, stored under the machine's key; another process reads it instead of timing
    (two workers timing on busy cores disagreed, and priced one budget two ways)."""
    import json

    import qpruner.device as device

    monkeypatch.setenv("QPRUNER_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(device, "_time_bf16_against_fp32", lambda: calls.append(1) or True)
    device._bf16_gemm_wins.cache_clear()
    try:
        assert device._bf16_gemm_wins() is True and calls == [1]
        stored = json.loads((tmp_path / "cpu_bf16.json").read_text())
        assert stored == {device._machine_key(): True}
        device._bf16_gemm_wins.cache_clear()  # as a new process would start
        (tmp_path / "cpu_bf16.json").write_text(json.dumps({device._machine_key(): False}))
        assert device._bf16_gemm_wins() is False and calls == [1]  # read, not timed
        device._bf16_gemm_wins.cache_clear()
        (tmp_path / "cpu_bf16.json").write_text("{not json")
        assert device._bf16_gemm_wins() is True and calls == [1, 1]  # corrupt: timed and rewritten
        assert json.loads((tmp_path / "cpu_bf16.json").read_text()) == {device._machine_key(): True}
    finally:
        device._bf16_gemm_wins.cache_clear()
