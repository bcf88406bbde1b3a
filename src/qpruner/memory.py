"""Fine-tuning memory of a plan: predicted from the config alone, and measured on the real thing.

The prediction prices a plan before any weight is loaded (searchers reject plans over budget
with it). Its weight part is exact: packed sizes come from the backends' layouts
(:mod:`qpruner.quant.registry`) and are tested against the real tensors. LoRA parameters,
gradients and AdamW states are exact counts. Activations are an estimate: the tensors
autograd keeps per token of a LLaMA layer whose every linear carries LoRA, plus the logits;
``benchmarks/recover_bench.py`` reports how close it comes to the measured step peak.

Measured: on CUDA, peak allocated bytes; on CPU, the bytes of every tensor the model and
optimizer hold (storages counted once) plus the peak resident-set growth during a step
(Linux lets us reset the high-water mark through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from qpruner.activations import StepShape, dequant_peak, layer_bytes, step_bytes
from qpruner.architecture import LayerShape, config_shape
from qpruner.device import resolve_compute_dtype
from qpruner.plan import DENSE_FORMATS, Plan, is_packed
from qpruner.quant.registry import held_tensors, is_packed_module, packed_weight_bytes
from qpruner.units import format_bytes

COMPONENTS = ("packed_weights", "dense_weights", "lora_params", "optimizer_states", "step_peak")
_LABELS = {
    "packed_weights": "packed weights (+scales)",
    "dense_weights": "unquantized weights",
    "lora_params": "LoRA parameters",
    "optimizer_states": "AdamW states",
    "step_peak": "step peak (activations+grads)",
    "total": "total",
}
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
LORA_BYTES = 4  # peft keeps adapters in float32 (it upcasts bf16/fp16 adapters by default)


@dataclass
class MemoryReport:
    """Bytes per component; ``details`` holds the parts of ``step_peak`` where known."""

    components: dict[str, int]
    details: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def to_dict(self) -> dict:
        return {**self.components, "total": self.total, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict) -> MemoryReport:
        return cls({k: int(d[k]) for k in COMPONENTS if k in d}, dict(d.get("details", {})))


def _get(config, key: str, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def _layer_shapes(config, plan: Plan) -> list[LayerShape]:
    if all(lp.shape is not None for lp in plan.layers):
        return [lp.shape for lp in plan.layers]
    stored = _get(config, "qpruner")
    if isinstance(stored, dict) and "layers" in stored:
        return [LayerShape.from_dict(d) for d in stored["layers"]]
    keys = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
    uniform = config_shape(SimpleNamespace(**{k: _get(config, k) for k in keys}))
    return [uniform] * int(_get(config, "num_hidden_layers"))


def _module_dims(config, shape: LayerShape) -> dict[str, tuple[int, int, bool]]:
    """``{module: (out, in, has_bias)}`` of one decoder layer."""
    h = int(_get(config, "hidden_size"))
    hd = int(_get(config, "head_dim", None) or h // int(_get(config, "num_attention_heads")))
    q, kv, i = shape.num_attention_heads * hd, shape.num_key_value_heads * hd, shape.intermediate_size
    qkv_bias = _get(config, "model_type") == "qwen2" or bool(_get(config, "attention_bias", False))
    o_bias = bool(_get(config, "attention_bias", False)) and _get(config, "model_type") != "qwen2"
    mlp_bias = bool(_get(config, "mlp_bias", False))
    return {
        "self_attn.q_proj": (q, h, qkv_bias),
        "self_attn.k_proj": (kv, h, qkv_bias),
        "self_attn.v_proj": (kv, h, qkv_bias),
        "self_attn.o_proj": (h, q, o_bias),
        "mlp.gate_proj": (i, h, mlp_bias),
        "mlp.up_proj": (i, h, mlp_bias),
        "mlp.down_proj": (h, i, mlp_bias),
    }


def _compute_bytes(compute_dtype: str, device: str) -> int:
    return torch.finfo(resolve_compute_dtype(compute_dtype, device)).bits // 8


def activation_bytes(config, plan: Plan, shapes: list[LayerShape], step: StepShape) -> dict[str, int]:
    """Peak bytes of one step beyond the weights (see :mod:`qpruner.activations`), with its parts."""
    wbytes = _DTYPE_BYTES[plan.dtype]
    c = step.compute_bytes
    pairs = list(zip(shapes, plan.layers, strict=True))
    kw = {"c": c, "wbytes": wbytes, "attn": step.attention_bytes}
    layers = [layer_bytes(_module_dims(config, s), s, lp, plan, **kw) for s, lp in pairs]
    first = layer_bytes(_module_dims(config, shapes[0]), shapes[0], plan.layers[0], plan, **kw, first=True)
    lora = [
        sum(lp.rank_of(m) * (i + o) * LORA_BYTES for m, (o, i, _b) in _module_dims(config, s).items()
            if m in plan.target_modules)
        for s, lp in pairs
    ]  # fmt: skip
    summary = {
        "hidden_size": int(_get(config, "hidden_size")),
        "vocab_size": int(_get(config, "vocab_size")),
        "widest": max(s.intermediate_size for s in shapes),
    }
    dequant = max(dequant_peak(_module_dims(config, s), lp, c=c, wbytes=wbytes) for s, lp in pairs)
    return step_bytes(summary, layers, first, lora, step, wbytes, dequant)


def estimate(
    model_config,
    plan: Plan,
    batch_size: int = 1,
    seq_len: int = 256,
    gradient_checkpointing: bool = False,
    *,
    compute_dtype: str = "auto",
    loss_chunk: int = 256,
    device: str = "cpu",
    accumulation: int = 1,
) -> MemoryReport:
    """Predicted fine-tuning memory of ``plan`` on a model with ``model_config`` (HF config or dict).

    ``compute_dtype``, ``loss_chunk`` and ``gradient_checkpointing`` as in
    :class:`qpruner.lora.train.TrainConfig` (same defaults); ``device`` resolves ``auto``;
    ``accumulation``: micro-batches per optimizer step (their LoRA gradients are held between them).
    """
    shapes = _layer_shapes(model_config, plan)
    wbytes = _DTYPE_BYTES[plan.dtype]
    h, vocab = int(_get(model_config, "hidden_size")), int(_get(model_config, "vocab_size"))
    packed = 0
    dense = vocab * h * wbytes + (2 * len(shapes) + 1) * h * wbytes  # embeddings, norms
    head_fmt = plan.lm_head_format or plan.dtype
    if not _get(model_config, "tie_word_embeddings", False):
        if is_packed(head_fmt):
            packed += packed_weight_bytes(head_fmt, vocab, h, wbytes)
        else:
            dense += vocab * h * wbytes
    lora = 0
    for lp, shape in zip(plan.layers, shapes, strict=True):
        for module, (out_f, in_f, bias) in _module_dims(model_config, shape).items():
            fmt = lp.format_of(module)
            if is_packed(fmt):
                packed += packed_weight_bytes(fmt, out_f, in_f, wbytes) + (out_f * wbytes if bias else 0)
            else:
                dense += (out_f * in_f + (out_f if bias else 0)) * DENSE_FORMATS[fmt] // 8
            if module in plan.target_modules:
                lora += lp.rank_of(module) * (in_f + out_f) * LORA_BYTES
    c = _compute_bytes(compute_dtype, device)
    # Attention keeps float32 q/k/v/out under bf16 on CPU (qpruner.compute) and in float32
    # runs; otherwise the activations' dtype.
    attn = 4 if (c < 4 and torch.device(device).type == "cpu") or (c == 4 and wbytes == 4) else min(c, wbytes)
    step = StepShape(batch_size, seq_len, c, attn, loss_chunk, gradient_checkpointing, accumulation > 1)
    acts = activation_bytes(model_config, plan, shapes, step)
    return MemoryReport(
        {
            "packed_weights": packed,
            "dense_weights": dense,
            "lora_params": lora,
            "optimizer_states": 2 * lora,  # AdamW: exp_avg and exp_avg_sq in float32
            "step_peak": acts["activations"],  # activations, LoRA gradients, transients
        },
        {**acts, "lora_grads": lora},
    )


# ---- measurement -------------------------------------------------------------------------------
def _storage_key(t: torch.Tensor) -> tuple:
    s = t.untyped_storage()
    return (t.device.type, t.device.index, s.data_ptr(), s.nbytes())


def held_memory(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of every tensor ``model`` (and ``optimizer``) holds, by component, storages once."""
    seen: set[tuple] = set()
    out = dict.fromkeys(("packed_weights", "dense_weights", "lora_params", "optimizer_states", "buffers"), 0)

    def add(kind: str, t: torch.Tensor | None) -> None:
        if t is None or t.device.type == "meta":
            return
        key = _storage_key(t)
        if key not in seen:
            seen.add(key)
            out[kind] += key[3]

    for module in model.modules():
        if is_packed_module(module):
            for t in held_tensors(module):
                add("packed_weights", t)
    for name, p in model.named_parameters():
        add("lora_params" if "lora_" in name else "dense_weights", p)
    for b in model.buffers():
        add("buffers", b)
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v) and v.numel() > 1:
                    add("optimizer_states", v)
    return out


_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_kib(field_name: str) -> int:
    m = re.search(rf"^{field_name}:\s+(\d+) kB", _PROC_STATUS.read_text(), re.M)
    return int(m.group(1)) * 1024 if m else 0


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``).

    Without this, memory freed by the previous step stays resident and the next step reuses
    it without growing the resident set, so a step's peak would read as almost nothing.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMeter:
    """Peak memory growth over a block of code: CUDA allocator peak, or CPU resident-set peak.

    On CPU without a resettable high-water mark (non-Linux), ``growth`` is None rather than a
    made-up number.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.growth: int | None = None

    def __enter__(self) -> PeakMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_heap()
            try:
                _CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
                self._base = _proc_kib("VmRSS")
            except OSError:
                self._base = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.growth = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._base is not None:
            self.growth = max(_proc_kib("VmHWM") - self._base, 0)


class TensorPeakMeter(TorchDispatchMode):
    """Peak bytes of the tensors created inside the block that are alive at once.

    The CPU counterpart of CUDA's ``max_memory_allocated``: it sees every tensor an operator
    returns (activations, gradients, optimizer temporaries), storages counted once, and not
    the allocator's slack or the pages glibc keeps resident, which the RSS peak includes.
    Kernels' private scratch buffers are invisible to it. A Python call per operator makes
    it slow, so the training loop meters one step with it. ``exclude``: tensors that exist
    before the block (parameters, optimizer states) and are only updated in place.
    """

    def __init__(self, exclude=()):
        super().__init__()
        self._skip = {t.untyped_storage().data_ptr() for t in exclude}
        self._refs: dict[int, int] = {}
        self._size: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= self._size.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if not key or key in self._skip:
                continue
            if key not in self._refs:
                self._refs[key] = 0
                self._size[key] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out


def measured_report(
    model: nn.Module, optimizer, step_peak: int | None, details: dict | None = None
) -> MemoryReport:
    held = held_memory(model, optimizer)
    comps = {k: held[k] for k in COMPONENTS if k in held}
    comps["step_peak"] = int(step_peak or 0)
    return MemoryReport(comps, {"buffers": held["buffers"], **(details or {})})


def format_memory_table(predicted: MemoryReport, measured: MemoryReport | None = None) -> str:
    """Predicted vs measured, one row per component."""
    rows = [("component", "predicted", "measured" if measured else "")]
    keys = [*COMPONENTS, "total"]
    for k in keys:
        p = predicted.total if k == "total" else predicted.components.get(k, 0)
        m = (
            ""
            if measured is None
            else format_bytes(measured.total if k == "total" else measured.components.get(k, 0))
        )
        rows.append((_LABELS[k], format_bytes(p), m))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c:>10}".rstrip() for a, b, c in rows)
