"""apply_plan: per-layer ranks really applied, peft's silent cases caught, LoftQ, training, merge."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_model
from peft import LoraConfig

from qpruner import apply_plan
from qpruner.errors import QPrunerError
from qpruner.lora import check_lora_applied, check_pattern_keys, lora_config
from qpruner.lora.export import merge_to_dense
from qpruner.plan import Plan
from qpruner.quant import dequantize_weight


def ranked_plan(n: int = 4, fmt: str = "nf4") -> Plan:
    plan = Plan.uniform(n, fmt, rank=4, dtype="fp32")
    plan.layers[0].lora_rank, plan.layers[0].lora_alpha = 2, 2.0
    plan.layers[1].weight_format = "int8"
    plan.layers[1].module_ranks = {"mlp.down_proj": 8}
    plan.layers[2].weight_format = "hqq3"
    plan.layers[2].module_alphas = {"self_attn.q_proj": 32.0}
    plan.layers[3].weight_format = "fp32"
    return plan


def _lora_modules(peft_model):
    return {
        n.split("base_model.model.", 1)[1]: m for n, m in peft_model.named_modules() if hasattr(m, "lora_A")
    }


def test_every_module_gets_its_planned_rank_and_scaling():
    model = make_model("gqa", layers=4)
    plan = ranked_plan()
    pm = apply_plan(model, plan)
    mods = _lora_modules(pm)
    assert set(mods) == set(plan.ranks())
    for name, rank in plan.ranks().items():
        assert mods[name].r["default"] == rank
        assert mods[name].lora_A["default"].weight.shape[0] == rank
        assert mods[name].scaling["default"] == pytest.approx(plan.alphas()[name] / rank)
    assert mods["model.layers.1.mlp.down_proj"].r["default"] == 8
    assert mods["model.layers.2.self_attn.q_proj"].scaling["default"] == 8.0
    # peft picked its bitsandbytes / hqq LoRA layers (they can merge and dequantize)
    assert type(mods["model.layers.0.mlp.up_proj"]).__module__.endswith("lora.bnb")
    assert type(mods["model.layers.2.mlp.up_proj"]).__name__ == "HqqLoraLinear"
    expected = sum(
        r * (m.in_features + m.out_features) for m, r in ((mods[n], r) for n, r in plan.ranks().items())
    )
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == expected


def test_pattern_keys_must_match_exactly_one_module():
    names = [n for n, _ in make_model("gqa", layers=4).named_modules()]
    config = lora_config(ranked_plan())
    check_pattern_keys(config, names)  # the plan's own keys are exact
    loose = LoraConfig(r=4, target_modules=["q_proj"], rank_pattern={"q_proj": 8})
    with pytest.raises(QPrunerError, match="matches 4 modules"):
        check_pattern_keys(loose, names)
    typo = LoraConfig(r=4, target_modules=["q_proj"], rank_pattern={"model.layers.0.self_attn.qproj": 8})
    with pytest.raises(QPrunerError, match="matches 0 modules"):
        check_pattern_keys(typo, names)


def test_mismatch_between_plan_and_applied_lora_is_caught():
    pm = apply_plan(make_model("gqa", layers=4), ranked_plan())
    other = ranked_plan()
    other.layers[3].module_ranks = {"mlp.up_proj": 6}
    with pytest.raises(QPrunerError, match=r"model.layers.3.mlp.up_proj: LoRA rank 4 / scaling"):
        check_lora_applied(pm, other)
    fewer = ranked_plan()
    fewer.target_modules = ("self_attn.q_proj",)
    with pytest.raises(QPrunerError, match="unplanned"):
        check_lora_applied(pm, fewer)


def test_training_moves_only_lora_and_keeps_packed_base():
    model = make_model("gqa", layers=4)
    pm = apply_plan(model, ranked_plan())
    base = {n: dequantize_weight(m.get_base_layer()).clone() for n, m in _lora_modules(pm).items()}
    lora = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    losses = []
    for _ in range(5):
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert any(not torch.equal(p, lora[n]) for n, p in pm.named_parameters() if p.requires_grad)
    for n, m in _lora_modules(pm).items():
        assert torch.equal(dequantize_weight(m.get_base_layer()), base[n])


@pytest.mark.parametrize("fmt", ["nf4", "int8", "hqq2"])
def test_loftq_starts_closer_to_the_dense_model(fmt):
    model = make_model("gqa", layers=4)
    dense = copy.deepcopy(model)
    plan = Plan.uniform(4, fmt, rank=16, dtype="fp32")
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        ref = dense(ids).logits
        plain = apply_plan(copy.deepcopy(model), plan)(ids).logits
        loftq_model = apply_plan(model, plan, loftq=True)
        init = loftq_model(ids).logits
    assert (init - ref).norm() < 0.9 * (plain - ref).norm()
    for name, module in _lora_modules(loftq_model).items():
        w = dense.get_submodule(name).weight
        deq = dequantize_weight(module.get_base_layer())
        corrected = deq + module.get_delta_weight("default")
        assert (w - corrected).norm() < (w - deq).norm()  # LoRA starts at the error's SVD
        if fmt == "nf4":  # the base is plain quant(W): an adapter applies to a re-quantized base
            fresh = apply_plan(copy.deepcopy(dense), plan).get_submodule("base_model.model." + name)
            assert torch.equal(dequantize_weight(fresh.get_base_layer()), deq)
            break


def test_loftq_needs_a_quantized_layer():
    with pytest.raises(QPrunerError, match="quantizes none"):
        apply_plan(make_model("gqa", layers=2), Plan.uniform(2, "fp32", dtype="fp32"), loftq=True)


@pytest.mark.parametrize(
    "kind, int8, tol", [("gqa", False, 1e-5), ("qwen2", False, 1e-5), ("gqa", True, 0.05)]
)
def test_merged_export_computes_what_the_adapter_model_computes(kind, int8, tol):
    """Exact up to float rounding for weight-only formats. LLM.int8 also quantizes the
    activations inside its matmul, which no dense export reproduces: ~2 % apart here."""
    model = make_model(kind, layers=4)
    plan = ranked_plan()
    if not int8:
        plan.layers[1].weight_format = "fp4"
    plan.lm_head_format = "hqq4" if kind == "gqa" else None
    pm = apply_plan(model, plan)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a trained-looking adapter, not the B = 0 start
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        want = pm(ids).logits
        merged = merge_to_dense(pm)
        got = merged(ids).logits
    assert all(
        type(m).__name__ == "Linear" for n, m in merged.named_modules() if n.endswith(("_proj", "lm_head"))
    )
    assert ((got - want).norm() / want.norm()).item() < tol
