import copy

import pytest
import torch
from conftest import VOCAB, make_model, mask_like

from qpruner.architecture import LayerShape, layer_shapes
from qpruner.errors import QPrunerError, UnsupportedModelError
from qpruner.prune import IMPORTANCE_METHODS, PruneConfig, layer_targets, prune_model
from qpruner.prune.unit_importance import _salience


def samples(n=4, length=16, seed=0):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def cfg(**kw):
    base = dict(ratio=0.5, layer_start=0, layer_end=4)
    base.update(kw)
    return PruneConfig(**base)


@pytest.mark.parametrize("head_mode", ["group", "query"])
def test_pruned_logits_equal_masked_original(kind, head_mode):
    """The pruned model computes exactly what the original computes with the removed
    heads/channels zeroed (float64, so any indexing mistake shows as a large error)."""
    original = make_model(kind, dtype=torch.float64)
    x = samples()
    for importance in IMPORTANCE_METHODS:
        pruned = copy.deepcopy(original)
        result = prune_model(pruned, cfg(importance=importance, head_mode=head_mode), x, progress=False)
        masked = mask_like(copy.deepcopy(original), result)
        with torch.no_grad():
            got, want, dense = pruned(x).logits, masked(x).logits, original(x).logits
        assert torch.allclose(got, want, atol=1e-10, rtol=0), importance
        assert (got - dense).abs().max() > 1e-3, "pruning changed nothing: the test would not catch a bug"
        assert result.params_after < result.params_before


def test_shapes_after_pruning_group_mode():
    model = make_model("gqa")  # 8 query heads, 2 KV heads (4 per group), head_dim 8, mlp 96
    result = prune_model(model, cfg(ratio=0.5, layer_start=1, layer_end=3, importance="l2"), progress=False)
    shapes = layer_shapes(model)
    assert shapes[0] == shapes[3] == LayerShape(8, 2, 96)
    assert shapes[1] == shapes[2] == LayerShape(4, 1, 48)
    attn = model.model.layers[1].self_attn
    assert attn.q_proj.weight.shape == (32, 64) and attn.k_proj.weight.shape == (8, 64)
    assert attn.o_proj.weight.shape == (64, 32) and attn.num_key_value_groups == 4
    mlp = model.model.layers[1].mlp
    assert mlp.gate_proj.weight.shape == (48, 64) and mlp.down_proj.weight.shape == (64, 48)
    # the kept query heads are exactly those of the kept KV head
    lp = result.layers[1]
    assert lp.kept_heads == [lp.kept_kv_heads[0] * 4 + j for j in range(4)]
    # no mask or hook remains: pruned layers hold plain smaller Linear weights only
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())


def test_query_mode_keeps_kv_heads_and_equal_groups():
    model = make_model("gqa")
    prune_model(model, cfg(ratio=0.5, head_mode="query", importance="l1"), progress=False)
    for layer, shape in zip(model.model.layers, layer_shapes(model), strict=True):
        assert shape == LayerShape(4, 2, 48)
        assert layer.self_attn.num_key_value_groups == 2
        assert layer.self_attn.k_proj.weight.shape == (16, 64)


def test_channel_multiple_and_layer_range_defaults():
    shapes = [LayerShape(8, 2, 100)] * 8
    targets = layer_targets(PruneConfig(ratio=0.3, channel_multiple=8), shapes)
    pruned = [t.layer for t in targets if t.keep_channels < 100]
    assert pruned == [3, 4, 5]  # default skips the first 3 and last 2 layers
    assert all(t.keep_channels % 8 == 0 for t in targets if t.layer in pruned)
    assert targets[3].keep_channels == 72  # 100 * 0.7 = 70 -> nearest multiple of 8
    assert targets[0].keep_channels == 100 and targets[0].keep_heads == 8


def test_explicit_layer_ratios():
    shapes = [LayerShape(4, 4, 64)] * 3
    t = layer_targets(PruneConfig(layer_ratios=[0.0, 0.25, 0.5]), shapes)
    assert [x.keep_heads for x in t] == [4, 3, 2]
    assert [x.keep_channels for x in t] == [64, 48, 32]
    with pytest.raises(QPrunerError, match="3 layers"):
        layer_targets(PruneConfig(layer_ratios=[0.1, 0.2]), shapes)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_ratio_out_of_range_is_rejected(bad):
    with pytest.raises(QPrunerError, match=r"\[0, 1\)"):
        PruneConfig(ratio=bad).validate()


def test_ratio_that_removes_every_head_is_rejected():
    # 2 KV groups: 0.8 * 2 rounds to 2 -> nothing left
    with pytest.raises(QPrunerError, match="every head of layer 0"):
        layer_targets(PruneConfig(ratio=0.8, layer_start=0, layer_end=1), [LayerShape(8, 2, 64)])


def test_dead_but_large_head_taylor_removes_l1_keeps():
    """Crafted layer: KV group 0 has the largest weights but its output is cut (o_proj
    columns zero), so it cannot affect the loss. Taylor scores it 0 and prunes it; L1,
    blind to the loss, keeps it. Likewise for an MLP channel with a zero down column."""
    model = make_model("gqa", layers=2)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    hd, g = attn.head_dim, attn.num_key_value_groups
    with torch.no_grad():
        attn.q_proj.weight[: g * hd] *= 50
        attn.k_proj.weight[:hd] *= 50
        attn.v_proj.weight[:hd] *= 50
        attn.o_proj.weight[:, : g * hd] = 0
        mlp.gate_proj.weight[7] *= 50
        mlp.up_proj.weight[7] *= 50
        mlp.down_proj.weight[:, 7] = 0
    x = samples(n=4, length=24)
    one = dict(ratio=0.5, mlp_ratio=1 / 96, layer_start=0, layer_end=1)
    for method in ("taylor", "taylor2", "taylor_vector"):
        r = prune_model(copy.deepcopy(model), PruneConfig(importance=method, **one), x, progress=False)
        assert r.layers[0].kept_kv_heads == [1], method
        assert 7 not in r.layers[0].kept_channels, method
    r = prune_model(copy.deepcopy(model), PruneConfig(importance="l1", **one), progress=False)
    assert r.layers[0].kept_kv_heads == [0]
    assert 7 in r.layers[0].kept_channels


def test_salience_formulas():
    w, g, f = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0]), torch.tensor([4.0, 1.0])
    assert torch.allclose(_salience("taylor", w, g, None), torch.tensor([1.0, 3.0]))
    assert torch.allclose(_salience("taylor2", w, g, f), torch.tensor([abs(1.0 - 8.0), abs(-3.0 - 0.5)]))
    assert torch.allclose(_salience("taylor_vector", w, g, None), torch.tensor([1.0, -3.0]))
    assert torch.allclose(_salience("l1", w, None, None), torch.tensor([2.0, 1.0]))


def test_gradient_chunks_give_the_same_pruning():
    """Accumulating gradients a few layers per pass (memory saver) selects the same units."""
    model = make_model("gqa")
    x = samples()
    a = prune_model(copy.deepcopy(model), cfg(importance="taylor2"), x, progress=False)
    b = prune_model(copy.deepcopy(model), cfg(importance="taylor2", grad_chunk_layers=1), x, progress=False)
    assert [lp.kept_channels for lp in a.layers] == [lp.kept_channels for lp in b.layers]
    assert [lp.kept_heads for lp in a.layers] == [lp.kept_heads for lp in b.layers]


def test_random_is_seeded_and_gradients_do_not_leak():
    model = make_model("mha")
    a = prune_model(copy.deepcopy(model), cfg(importance="random", seed=3), progress=False)
    b = prune_model(copy.deepcopy(model), cfg(importance="random", seed=3), progress=False)
    c = prune_model(copy.deepcopy(model), cfg(importance="random", seed=4), progress=False)
    assert [x.kept_channels for x in a.layers] == [x.kept_channels for x in b.layers]
    assert [x.kept_channels for x in a.layers] != [x.kept_channels for x in c.layers]
    prune_model(model, cfg(importance="taylor"), samples(), progress=False)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_taylor_without_samples_and_non_llama_model():
    with pytest.raises(QPrunerError, match="calibration"):
        prune_model(make_model("mha"), cfg(importance="taylor"), None, progress=False)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="'gpt2'"):
        prune_model(gpt2, cfg(importance="l1"), progress=False)


def test_bf16_model_prunes_with_bf16_accumulators():
    """bf16 is how large models are pruned on GPUs; scoring must work without upcasting the model."""
    model = make_model("gqa", dtype=torch.bfloat16)
    result = prune_model(model, cfg(importance="taylor2"), samples(), progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert result.bytes_after < result.bytes_before
    assert result.bytes_after == 2 * result.params_after
    with torch.no_grad():
        assert torch.isfinite(model(samples()).logits.float()).all()
