"""What a LLaMA-layout decoder looks like to qpruner, and how to read/resize one layer.

LLaMA, Llama-2/3, Mistral and Qwen2 share one decoder layer: ``self_attn`` with
``q_proj``/``k_proj``/``v_proj``/``o_proj`` and ``mlp`` with ``gate_proj``/``up_proj``/
``down_proj``. Their attention forward reshapes with ``-1`` heads and reads only
``head_dim`` and ``num_key_value_groups`` from the module, so a layer keeps working after
its projections are sliced as long as those two attributes stay true. That is what makes
per-layer shapes possible without forking transformers' modelling code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from qpruner.errors import UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LayerShape:
    """The shape of one decoder layer: the facts a per-layer config must record."""

    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LayerShape:
        return cls(int(d["num_attention_heads"]), int(d["num_key_value_heads"]), int(d["intermediate_size"]))


def check_model_type(config) -> None:
    """Refuse a config of another architecture before anything reads LLaMA-only fields from it."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r}: qpruner prunes LLaMA-layout decoders "
            f"({', '.join(SUPPORTED_MODEL_TYPES)})"
        )


def check_supported(model: nn.Module) -> None:
    """Raise a one-line error unless ``model`` is a LLaMA-layout causal LM we can prune."""
    check_model_type(getattr(model, "config", None))
    model_type = model.config.model_type
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise UnsupportedModelError(f"{model_type} model has no decoder layers at model.model.layers")
    for i, layer in enumerate(layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        missing = [n for n in ATTN_PROJ if not isinstance(getattr(attn, n, None), nn.Linear)]
        missing += [n for n in MLP_PROJ if not isinstance(getattr(mlp, n, None), nn.Linear)]
        if missing:
            raise UnsupportedModelError(
                f"decoder layer {i} lacks LLaMA-layout linear modules: {', '.join(missing)}"
            )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    if hasattr(model, "get_base_model"):  # a peft wrapper
        model = model.get_base_model()
    return model.model.layers


def head_dim(model_or_attn: nn.Module) -> int:
    attn = model_or_attn if hasattr(model_or_attn, "q_proj") else decoder_layers(model_or_attn)[0].self_attn
    return int(attn.head_dim)


def layer_shape(layer: nn.Module) -> LayerShape:
    """Read a layer's shape from its weights (the truth), not from the config."""
    attn, mlp = layer.self_attn, layer.mlp
    hd = attn.head_dim
    return LayerShape(
        attn.q_proj.out_features // hd, attn.k_proj.out_features // hd, mlp.up_proj.out_features
    )


def layer_shapes(model: nn.Module) -> list[LayerShape]:
    return [layer_shape(layer) for layer in decoder_layers(model)]


def config_shape(config) -> LayerShape:
    """The uniform shape a stock config describes."""
    return LayerShape(
        config.num_attention_heads,
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        config.intermediate_size,
    )


def _new_linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """An uninitialised Linear like ``old`` (device, dtype, bias) with new sizes."""
    w = old.weight
    new = nn.Linear(in_features, out_features, bias=old.bias is not None, device=w.device, dtype=w.dtype)
    return new


def resize_layer(layer: nn.Module, shape: LayerShape) -> None:
    """Give ``layer`` empty projections of ``shape`` (for loading weights into).

    Used on a meta-device skeleton, so nothing is allocated until the weights arrive.
    """
    attn, mlp = layer.self_attn, layer.mlp
    hd = attn.head_dim
    if shape.num_key_value_heads < 1 or shape.num_attention_heads % shape.num_key_value_heads:
        raise UnsupportedModelError(
            f"layer shape {shape} is invalid: query heads must be a positive multiple of KV heads"
        )
    hidden = attn.q_proj.in_features
    q, kv = shape.num_attention_heads * hd, shape.num_key_value_heads * hd
    attn.q_proj = _new_linear(attn.q_proj, hidden, q)
    attn.k_proj = _new_linear(attn.k_proj, hidden, kv)
    attn.v_proj = _new_linear(attn.v_proj, hidden, kv)
    attn.o_proj = _new_linear(attn.o_proj, q, attn.o_proj.out_features)
    attn.num_key_value_groups = shape.num_attention_heads // shape.num_key_value_heads
    mlp.gate_proj = _new_linear(mlp.gate_proj, hidden, shape.intermediate_size)
    mlp.up_proj = _new_linear(mlp.up_proj, hidden, shape.intermediate_size)
    mlp.down_proj = _new_linear(mlp.down_proj, shape.intermediate_size, mlp.down_proj.out_features)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = shape.intermediate_size


def model_device(model: nn.Module) -> torch.device:
    """Where inputs go: the input embeddings' device (right under ``device_map`` too)."""
    return model.get_input_embeddings().weight.device
