"""The plan document: exact round trip, and validation that names the offending entry."""

from __future__ import annotations

import pytest

from qpruner.architecture import LayerShape
from qpruner.plan import LayerPlan, Plan, PlanError, format_for_bits


def mixed_plan() -> Plan:
    plan = Plan.uniform(4, "nf4", rank=8, dtype="fp32", shapes=[LayerShape(8, 2, 96)] * 4, model="m")
    plan.layers[0].weight_format = "int8"
    plan.layers[1].weight_format = "fp32"
    plan.layers[2].module_formats = {"mlp.down_proj": "hqq3", "self_attn.v_proj": "fp4"}
    plan.layers[3].lora_rank, plan.layers[3].lora_alpha = 2, 5.5
    plan.layers[3].module_ranks = {"mlp.up_proj": 16}
    plan.layers[3].module_alphas = {"mlp.up_proj": 0.1 + 0.2}  # a float that does not print short
    plan.layers[3].prune_ratio = 0.3333333333333333
    plan.memory = {"predicted": {"total": 123}}
    plan.metadata = {"searcher": "test", "score": 1.0 / 3.0}
    return plan


def test_round_trip_is_exact(tmp_path):
    plan = mixed_plan().validate(num_layers=4)
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert Plan.load(plan.save(tmp_path / "p" / "plan.json")) == plan
    assert again.layers[3].module_alphas["mlp.up_proj"] == 0.1 + 0.2


def test_derived_tables():
    plan = mixed_plan()
    formats, ranks = plan.formats(), plan.ranks()
    assert len(formats) == 4 * 7 and len(ranks) == 4 * 7
    assert formats["model.layers.2.mlp.down_proj"] == "hqq3"
    assert formats["model.layers.2.mlp.up_proj"] == "nf4"
    assert ranks["model.layers.3.mlp.up_proj"] == 16 and ranks["model.layers.3.mlp.gate_proj"] == 2
    assert plan.bits_per_layer()[0] == 8 and plan.bits_per_layer()[1] == 32
    assert plan.bits_per_layer()[2] == pytest.approx((5 * 4 + 3 + 4) / 7)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda p: setattr(p.layers[2], "weight_format", "int5"),
            r"layers\[2\]\.weight_format: unknown weight format 'int5'",
        ),
        (
            lambda p: setattr(p.layers[1], "lora_rank", 0),
            r"layers\[1\]\.lora_rank: LoRA rank must be a positive",
        ),
        (lambda p: p.layers[0].module_ranks.update({"mlp.up_proj": -2}), r"module_ranks\['mlp.up_proj'\]"),
        (
            lambda p: p.layers[0].module_formats.update({"mlp.fc1": "nf4"}),
            r"layers\[0\]\.module_formats\['mlp.fc1'\]: the layer has no",
        ),
        (lambda p: setattr(p.layers[0], "weight_format", "bf16"), r"differs from the plan dtype 'fp32'"),
        (lambda p: setattr(p.layers[0], "lora_alpha", float("nan")), r"alpha must be a positive number"),
        (lambda p: setattr(p, "target_modules", ("self_attn.qkv",)), r"target_modules entry 'self_attn.qkv'"),
        (lambda p: setattr(p.layers[1], "prune_ratio", 1.0), r"layers\[1\]\.prune_ratio"),
        (lambda p: setattr(p, "dtype", "int8"), r"plan dtype 'int8'"),
    ],
)
def test_validation_names_the_entry(mutate, message):
    plan = mixed_plan()
    mutate(plan)
    with pytest.raises(PlanError, match=message):
        plan.validate()


def test_validation_against_model_shape():
    plan = mixed_plan()
    with pytest.raises(PlanError, match="plan has 4 layers but the model has 6"):
        plan.validate(num_layers=6)
    with pytest.raises(PlanError, match=r"layers\[0\]\.shape"):
        plan.validate(shapes=[LayerShape(4, 2, 96)] + [LayerShape(8, 2, 96)] * 3)


def test_bad_documents(tmp_path):
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.from_json("{oops")
    with pytest.raises(PlanError, match="not a qpruner plan"):
        Plan.from_json("[1, 2]")
    with pytest.raises(PlanError, match=r"unknown plan field\(s\) \['colour'\]"):
        Plan.from_json('{"layers": [], "colour": 1}')
    with pytest.raises(PlanError, match=r"unknown layer field"):
        Plan.from_dict({"layers": [{"weight_format": "nf4", "bitz": 3}]})
    with pytest.raises(PlanError, match="plan file not found"):
        Plan.load(tmp_path / "missing.json")
    with pytest.raises(PlanError, match="no layers"):
        Plan(layers=[]).validate()


def test_bits_shorthand():
    assert [format_for_bits(b, "bf16") for b in (2, 3, 4, 8, 16)] == ["hqq2", "hqq3", "nf4", "int8", "bf16"]
    with pytest.raises(PlanError, match="no format for 5-bit"):
        format_for_bits(5, "bf16")
    assert LayerPlan("nf4").alpha_of("mlp.up_proj") == 16.0
