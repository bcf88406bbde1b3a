"""Parameter count, weight bytes and the per-layer shape table of a model.

Bytes are counted from the tensors actually held (``numel * element_size`` of each
distinct storage), so tied embeddings count once and packed quantized tensors count at
their packed size; nothing is derived from the config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from qpruner.architecture import LayerShape, config_shape, layer_shapes
from qpruner.memory import held_memory


@dataclass(frozen=True)
class ModelSize:
    params: int
    weight_bytes: int
    layers: list[LayerShape] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [s.to_dict() for s in self.layers]
        return d


def model_size(model: nn.Module) -> ModelSize:
    """Logical parameter count (a packed weight counts its ``out x in`` weights) and bytes held."""
    from qpruner.quant.registry import held_tensors, is_packed_module

    held = held_memory(model)
    nbytes = held["packed_weights"] + held["dense_weights"] + held["lora_params"]
    seen: set[int] = set()
    params = 0
    for module in model.modules():
        if is_packed_module(module):
            bias = getattr(module, "bias", None)
            params += module.in_features * module.out_features + (bias.numel() if bias is not None else 0)
            seen.update(t.data_ptr() for t in held_tensors(module))
    for p in model.parameters():
        key = p.data_ptr()
        if key not in seen:
            seen.add(key)
            params += p.numel()
    return ModelSize(params, nbytes, layer_shapes(model))


def format_shape_table(pairs: list[tuple[LayerShape, LayerShape]]) -> str:
    """Plain-text table of each layer's heads, KV heads and MLP width as ``now/before``."""
    rows = [f"{'layer':>5}  {'heads':>9}  {'kv_heads':>9}  {'mlp':>13}"]
    for i, (s, base) in enumerate(pairs):
        rows.append(
            f"{i:>5}  {s.num_attention_heads:>4}/{base.num_attention_heads:<4}  "
            f"{s.num_key_value_heads:>4}/{base.num_key_value_heads:<4}  "
            f"{s.intermediate_size:>6}/{base.intermediate_size:<6}"
        )
    return "\n".join(rows)


def shape_table(model: nn.Module) -> str:
    """The model's layer shapes against the original (uniform) shape its config describes."""
    base = config_shape(model.config)
    return format_shape_table([(s, base) for s in layer_shapes(model)])
