import json

import pytest
import torch
from conftest import VOCAB, make_model, make_tokenizer
from safetensors.torch import load_file, save_file

from qpruner import load_model, load_pruned, save_pruned
from qpruner.architecture import layer_shapes
from qpruner.errors import CheckpointError
from qpruner.prune import PruneConfig, prune_model


def pruned_model(kind="gqa", ratio=0.5):
    model = make_model(kind)
    prune_model(
        model,
        PruneConfig(ratio=ratio, layer_ratios=[0.0, ratio, 0.25, ratio], importance="l2"),
        progress=False,
    )
    return model


def save_pickle_only(model, path) -> None:
    """A stock HF directory as older tools wrote it: ``pytorch_model.bin`` (transformers 5 always
    writes safetensors, so the pickle is made by hand)."""
    model.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")


def test_round_trip_is_bit_exact(kind, tmp_path):
    model = pruned_model(kind)
    save_pruned(model, tmp_path, make_tokenizer())
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").is_file()
    loaded = load_pruned(tmp_path)
    assert layer_shapes(loaded) == layer_shapes(model)
    assert type(loaded) is type(model)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    x = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_config_records_each_layer_shape(tmp_path):
    model = pruned_model("gqa")
    save_pruned(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    layers = cfg["qpruner"]["layers"]
    assert [d["num_key_value_heads"] for d in layers] == [2, 1, 1, 1]  # 0.25 of 2 KV heads: 0.5 rounds up
    assert [d["intermediate_size"] for d in layers] == [96, 48, 72, 48]
    assert cfg["num_key_value_heads"] == 2  # the stock fields still describe the original model


def test_loads_in_requested_dtype(tmp_path):
    save_pruned(pruned_model(), tmp_path)
    m = load_pruned(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}


def test_tensors_not_matching_config_are_rejected(tmp_path):
    save_pruned(pruned_model(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["qpruner"]["layers"][1]["intermediate_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight has shape"):
        load_pruned(tmp_path)


def test_missing_tensor_is_rejected(tmp_path):
    save_pruned(pruned_model(), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.pop("model.layers.2.mlp.up_proj.weight")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing"):
        load_pruned(tmp_path)


def test_corrupt_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pruned(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "nope"))
    save_pruned(pruned_model(), tmp_path / "m")
    blob = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pruned(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_pruned(tmp_path / "m")


def test_pickle_weights_are_refused(tmp_path):
    save_pruned(pruned_model(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        load_pruned(tmp_path)


def test_load_model_reads_stock_hf_directories(model_dir):
    model = load_model(model_dir)
    assert len(layer_shapes(model)) == 6 and model.config.model_type == "llama"


def test_sharded_checkpoint_round_trip(tmp_path):
    model = pruned_model("gqa")
    save_pruned(model, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    loaded = load_pruned(tmp_path)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    next(tmp_path.glob("model-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="shard missing"):
        load_pruned(tmp_path)


def test_unpruned_pickle_directories_are_refused_unless_allowed(tmp_path):
    """Safetensors only: transformers would torch.load a pickle-only directory."""
    from qpruner.checkpoint import pickle_allowed

    save_pickle_only(make_model("gqa", layers=2), tmp_path)
    with pytest.raises(CheckpointError, match=r"only pickle weights \(pytorch_model\.bin\)"):
        load_model(tmp_path)
    with pickle_allowed():
        assert len(layer_shapes(load_model(tmp_path))) == 2
    with pytest.raises(CheckpointError, match="pickle"):  # the opt-in ends with its block
        load_model(tmp_path)


def test_corrupt_safetensors_in_an_unpruned_directory(tmp_path):
    make_model("gqa", layers=2).save_pretrained(tmp_path)
    blob = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(blob[:100])
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_model(tmp_path)
