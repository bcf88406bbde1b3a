"""GGUF in: tiny models written as GGUF files here, converted back, compared logit for logit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from qpruner.errors import QPrunerError, UnsupportedModelError
from qpruner.models.gguf import SOURCE_FILE, convert_gguf, file_sha256, find_gguf, read_gguf_info

# A byte-level BPE vocabulary the size of conftest's models: 4 specials, letters, the space
# marker and a few merged pairs, so the GGUF's tokenizer is a working one.
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
MERGES = ["t h", "h e", "th e", "Ġ t", "Ġt he", "Ġ c", "a t", "Ġc at", "c at", "o g"]
TOKENS = SPECIALS + LETTERS + ["Ġ"] + [m.replace(" ", "") for m in MERGES]
TOKENS += [f"{a}{b}" for a in "xyz" for b in "xyz"][: 51 - len(TOKENS)]  # pad to VOCAB (51)
ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # model_type -> llama.cpp name


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows (convert_hf_to_gguf.py), which transformers undoes."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, *, arch: str | None = None, name: str = "tiny test model") -> Path:
    """``model`` (a conftest LLaMA / Mistral / Qwen2) as an F32 GGUF, the way llama.cpp writes one."""
    import gguf

    cfg = model.config
    arch = arch or ARCH[cfg.model_type]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_types([gguf.TokenType.CONTROL] * 4 + [gguf.TokenType.NORMAL] * (len(TOKENS) - 4))
    w.add_token_merges(MERGES)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(3)
    gguf_arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[arch]
    names = gguf.get_tensor_name_map(gguf_arch, cfg.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # a tied model's file has no output.weight
        data = tensor.detach().float().numpy().copy()
        if arch == "llama" and key.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in key else cfg.num_key_value_heads
            data = _permute(data, heads)
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["gqa", "mistral", "qwen2"])
def test_converted_checkpoint_reproduces_the_source_logits(tmp_path, kind):
    source = make_model(kind, layers=2)
    gguf_file = write_gguf(tmp_path / f"{kind}.gguf", source, name=f"tiny {kind}")
    out = convert_gguf(gguf_file, tmp_path / "out")
    assert out == tmp_path / "out" and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    # llama.cpp writes Mistral as "llama" (no sliding window in the file): a LLaMA comes back.
    assert model.config.model_type == ("qwen2" if kind == "qwen2" else "llama")
    assert getattr(model.config, "quantization_config", None) is None  # a plain checkpoint
    assert model.config.num_key_value_heads == source.config.num_key_value_heads
    assert model.config.tie_word_embeddings == source.config.tie_word_embeddings
    with safe_open(out / "model.safetensors", "pt") as f:  # a tied lm_head is stored once
        stored = set(f.keys())
    assert ("lm_head.weight" in stored) != source.config.tie_word_embeddings
    ids = torch.randint(4, source.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(model, ids), _logits(source, ids), rtol=1e-5, atol=1e-4)

    tok = AutoTokenizer.from_pretrained(out)
    expected = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf_file.name)
    assert tok("the cat the dog")["input_ids"] == expected("the cat the dog")["input_ids"]
    assert TOKENS.index("Ġcat") in tok("the cat")["input_ids"]  # merges survived
    source_meta = json.loads((out / SOURCE_FILE).read_text())
    assert (
        source_meta["sha256"] == file_sha256(gguf_file)
        and source_meta["architecture"] == ARCH[source.config.model_type]
    )


def test_directory_holding_one_gguf_and_overwrite(tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    write_gguf(folder / "m.gguf", make_model("gqa", layers=1))
    assert find_gguf(folder) == folder / "m.gguf"
    out = convert_gguf(folder, tmp_path / "out")
    with pytest.raises(QPrunerError, match="already exists"):
        convert_gguf(folder, out)
    (out / "marker").write_text("old")
    convert_gguf(folder, out, overwrite=True)
    assert not (out / "marker").exists() and (out / "config.json").is_file()
    write_gguf(folder / "second.gguf", make_model("gqa", layers=1))
    with pytest.raises(QPrunerError, match="2 .gguf files"):
        find_gguf(folder)


def test_other_architecture_is_refused_before_loading(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi3")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert read_gguf_info(tmp_path / "phi.gguf").architecture == "phi3"
    with pytest.raises(UnsupportedModelError) as info:
        convert_gguf(tmp_path / "phi.gguf", tmp_path / "out")
    msg = str(info.value)
    assert "\n" not in msg and "'phi3'" in msg and "llama" in msg
    assert not (tmp_path / "out").exists()


def test_garbage_and_truncated_files_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"PK\x03\x04 this is not a model" * 10)
    with pytest.raises(QPrunerError, match="not a GGUF file") as info:
        convert_gguf(garbage, tmp_path / "out")
    assert "\n" not in str(info.value)

    good = write_gguf(tmp_path / "good.gguf", make_model("gqa", layers=1))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:200])  # the header's key-value data breaks off
    with pytest.raises(QPrunerError, match="corrupt or truncated") as info:
        convert_gguf(cut, tmp_path / "out")
    assert "\n" not in str(info.value)
    with pytest.raises(QPrunerError, match="not found"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "garbage.gguf", "good.gguf"]


def test_failure_during_conversion_leaves_nothing(tmp_path, monkeypatch):
    import qpruner.models.gguf as mod

    good = write_gguf(tmp_path / "good.gguf", make_model("gqa", layers=1))

    def broken(src, out, dtype):
        (out / "model.safetensors").write_bytes(b"half")
        raise QPrunerError("disk full")

    monkeypatch.setattr(mod, "_write_checkpoint", broken)
    with pytest.raises(QPrunerError, match="disk full"):
        convert_gguf(good, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.gguf"]


def test_cli_import(tmp_path, capsys):
    from qpruner.cli.models import MODEL_COMMANDS, add_model_parsers

    parser = argparse.ArgumentParser()
    add_model_parsers(parser.add_subparsers(dest="command"))
    good = write_gguf(tmp_path / "good.gguf", make_model("gqa", layers=1))
    args = parser.parse_args(["import", str(good), "--out", str(tmp_path / "ckpt")])
    MODEL_COMMANDS[args.command](args)
    assert "ckpt" in capsys.readouterr().out and (tmp_path / "ckpt" / "config.json").is_file()
    with pytest.raises(QPrunerError, match="--overwrite"):
        MODEL_COMMANDS[args.command](args)
    args = parser.parse_args(["import", str(good), "--out", str(tmp_path / "ckpt"), "--overwrite"])
    MODEL_COMMANDS[args.command](args)
