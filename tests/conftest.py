"""Tiny random LLaMA-layout models and a word-level tokenizer, built on the fly (no hub)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

WORDS = [
    "the",
    "a",
    "one",
    "my",
    "your",
    "our",
    "small",
    "large",
    "red",
    "green",
    "quick",
    "slow",
    "cat",
    "dog",
    "bird",
    "fish",
    "model",
    "layer",
    "head",
    "channel",
    "token",
    "weight",
    "river",
    "city",
    "house",
    "tree",
    "runs",
    "sees",
    "eats",
    "finds",
    "likes",
    "makes",
    "reads",
    "writes",
    "and",
    "but",
    "then",
    "so",
    "because",
    "while",
    "near",
    "over",
    "under",
    "with",
    "from",
    "into",
]

# kind -> config overrides. Vocab must equal the tokenizer's (len(WORDS) + 4 specials).
KINDS = {
    "mha": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa": dict(model_type="llama", num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
    "tied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "mistral": dict(
        model_type="mistral", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False
    ),
    "qwen2": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


def make_text(n_sentences: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + " .")
    return "\n".join(lines)


def make_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + ["."])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


VOCAB = len(WORDS) + 5


def make_model(kind: str = "gqa", layers: int = 4, seed: int = 0, dtype=torch.float32):
    spec = dict(KINDS[kind])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        head_dim=64 // spec["num_attention_heads"],
        max_position_embeddings=128,
        **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Random init has tiny weights: scale up so pruning changes logits measurably.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return model.eval()


@pytest.fixture(params=list(KINDS))
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(make_text())
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A saved (unpruned, stock HF format) tiny GQA model with its tokenizer."""
    path = tmp_path_factory.mktemp("models") / "tiny-gqa"
    make_model("gqa", layers=6).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def mask_like(model, result):
    """Zero in ``model`` what ``result`` removed: o_proj columns of dropped heads, down_proj
    columns of dropped channels. A dropped head then contributes exactly nothing, which is
    the reference the physically pruned model must reproduce."""
    for lp in result.layers:
        layer = model.model.layers[lp.layer]
        hd = layer.self_attn.head_dim
        keep_q = torch.zeros(lp.before.num_attention_heads * hd, dtype=torch.bool)
        for h in lp.kept_heads:
            keep_q[h * hd : (h + 1) * hd] = True
        keep_c = torch.zeros(lp.before.intermediate_size, dtype=torch.bool)
        keep_c[lp.kept_channels] = True
        with torch.no_grad():
            layer.self_attn.o_proj.weight[:, ~keep_q] = 0
            layer.mlp.down_proj.weight[:, ~keep_c] = 0
    return model
