"""Mixed precision by module replacement: each linear module of the plan gets its own format.

transformers' ``BitsAndBytesConfig``/``HqqConfig`` quantize a whole model to one format at
load time; a per-layer plan mixing int8, NF4, 3-bit hqq and 16-bit layers is not something
they express, so we swap modules ourselves after loading (one module at a time, so peak
memory stays near the larger of the dense and packed model).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from qpruner.architecture import check_supported, decoder_layers, layer_shapes
from qpruner.device import resolve_dtype
from qpruner.errors import QPrunerError
from qpruner.plan import Plan, PlanError, is_packed
from qpruner.quant.registry import is_packed_module, quantize_linear


def plan_dtype(plan: Plan) -> torch.dtype:
    return resolve_dtype(plan.dtype, torch.device("cpu"))


def check_plan_fits(model: nn.Module, plan: Plan) -> None:
    """Validate ``plan`` against ``model``'s layer count and shapes (one-line error otherwise)."""
    check_supported(model)
    plan.validate(num_layers=len(decoder_layers(model)), shapes=layer_shapes(model))
    if plan.lm_head_format is not None and is_packed(plan.lm_head_format):
        head = model.get_output_embeddings()
        if head is None or head.weight is model.get_input_embeddings().weight:
            raise PlanError(
                "lm_head_format: the model ties lm_head to the embeddings; it cannot be packed alone"
            )


def quantize_model(
    model: nn.Module,
    plan: Plan,
    progress: bool = False,
    on_replace: Callable[[str, nn.Linear, nn.Module], None] | None = None,
    validated: bool = False,
) -> dict[str, str]:
    """Replace every linear module the plan packs; return ``{module name: format}`` of the replaced.

    The model is first cast to the plan's dtype (its unquantized weights and the packed
    kernels' compute dtype). Layers the plan keeps unquantized are left as they are.
    ``on_replace(name, dense, packed)`` sees each dense module before it is dropped (LoftQ
    needs the unquantized weight next to its quantized form). ``validated``: the caller has
    already checked the plan where it entered (a plan is validated once per path).
    """
    if not validated:
        check_plan_fits(model, plan)
    if any(is_packed_module(m) for m in model.modules()):
        raise QPrunerError("model is already quantized; apply a plan to an unquantized model")
    dtype = plan_dtype(plan)
    model.to(dtype)
    todo = [(name, fmt) for name, fmt in plan.formats().items() if is_packed(fmt)]
    if plan.lm_head_format is not None and is_packed(plan.lm_head_format):
        todo.append(("lm_head", plan.lm_head_format))
    done: dict[str, str] = {}
    for name, fmt in tqdm(todo, desc="quantize", unit="module", disable=not progress):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if not isinstance(linear, nn.Linear):
            raise QPrunerError(f"{name} is a {type(linear).__name__}, not a Linear; cannot quantize it")
        packed = quantize_linear(linear, fmt, dtype)
        if on_replace is not None:
            on_replace(name, linear, packed)
        setattr(parent, child, packed)
        done[name] = fmt
    # peft picks its bitsandbytes LoRA layers (which can merge and dequantize) only when the
    # model says it is loaded in 4/8 bit; transformers sets these flags for its own loaders.
    model.is_loaded_in_4bit = any(f in ("nf4", "fp4") for f in done.values())
    model.is_loaded_in_8bit = any(f == "int8" for f in done.values())
    return done
