"""Peak bytes of one LoRA training step beyond the weights: a census of what autograd keeps.

Counted per decoder layer and token from what each operation saves for backward (checked
with ``saved_tensors_hooks`` and against :class:`qpruner.memory.TensorPeakMeter` on tiny and
SmolLM2-shaped models, every format, both compute paths, with and without checkpointing;
``tests/test_memory.py`` and ``benchmarks/throughput_bench.py`` hold it within 5 %).

Per layer and token, with ``c`` the compute dtype's bytes (2 under bf16 autocast, 4 in
float32) and ``h``/``q``/``kv``/``i`` the hidden/query/key-value/intermediate widths:

* RMSNorm x2: its float32 input and the reciprocal RMS: ``2 (4 h + 4)``;
* attention (float32 SDPA on CPU): q, k, v, output and the log-sum-exp: ``8 q + 8 kv + 4 heads``;
* MLP: gate, act and up outputs: ``3 c i``;
* each LoRA module on an input of width ``d``: under bf16 a 1-byte dropout mask and the
  dropout output in ``c`` (:class:`qpruner.compute.MaskDropout`); in float32 torch's
  dropout noise and output, ``8 d``; plus lora_B's rank-wide input;
* nothing for packed modules: they train through :class:`qpruner.quant.frozen_matmul.FrozenMatmul`,
  which keeps none of their input (the libraries' own int8 and hqq paths kept it);
* under bf16 autocast every float32 weight's bf16 copy, kept for the input gradient.

The loss adds, at the end of the forward: the final hidden states and, chunked
(:mod:`qpruner.lm_loss`), a ``tokens x hidden`` gradient, the head's cast and one chunk's
float32 logits and log-softmax; unchunked, transformers' full float32 logits, log-softmax
and their gradients. Backward adds one layer's gradients. With activation checkpointing a
layer keeps only its input, and backward holds one recomputed layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpruner.architecture import LayerShape
from qpruner.plan import DENSE_FORMATS, LayerPlan, Plan, is_packed
from qpruner.quant.registry import dequant_bytes

_GROUPS = {  # modules sharing one input
    "self_attn.q_proj": "qkv", "self_attn.k_proj": "qkv", "self_attn.v_proj": "qkv",
    "self_attn.o_proj": "o", "mlp.gate_proj": "gate_up", "mlp.up_proj": "gate_up", "mlp.down_proj": "down",
}  # fmt: skip


@dataclass(frozen=True)
class StepShape:
    """What decides a step's activations besides the model: tokens and how it computes."""

    batch: int
    seq_len: int
    compute_bytes: int  # 2: bf16 autocast; 4: float32 (no autocast)
    attention_bytes: int  # what attention keeps q/k/v/out in (float32 on CPU, see qpruner.compute)
    loss_chunk: int  # tokens per LM-head chunk; 0: transformers' loss over full logits
    checkpointing: bool
    accumulating: bool = False  # later micro-batches of a step run beside the earlier ones' LoRA grads

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


def layer_bytes(
    dims: dict,
    shape: LayerShape,
    lp: LayerPlan,
    plan: Plan,
    *,
    c: int,
    wbytes: int,
    attn: int = 4,
    first: bool = False,
) -> tuple[int, int, int]:
    """(bytes per token, bytes independent of tokens, MLP inputs per token) one layer keeps.

    ``dims``: ``{module: (out, in, bias)}``; ``wbytes``: the plan dtype's size; ``first``: the
    first layer without checkpointing, whose input needs no gradient (nothing is kept for
    one). MLP inputs: the inputs LoRA's MLP modules keep (no dropout), gone once the MLP's
    backward has run (before attention's, where a recomputed layer peaks).
    """
    h = dims["mlp.gate_proj"][1]
    q, kv, i = dims["self_attn.q_proj"][0], dims["self_attn.k_proj"][0], shape.intermediate_size
    autocast = c < 4
    act = c if autocast else wbytes  # without autocast activations are in the weights' dtype
    width = {"qkv": h, "o": q, "gate_up": h, "down": i}
    per_token = (4 * h + 4) * (1 if first else 2) + 2 * attn * (q + kv) + 4 * shape.num_attention_heads
    per_token += 3 * act * i
    fixed = 0
    kept: set[str] = set()  # groups whose shared input a LoRA module keeps
    for module, (out_f, in_f, _bias) in dims.items():
        fmt, group = lp.format_of(module), _GROUPS[module]
        no_grad_input = first and group == "qkv"
        if module in plan.target_modules:
            r = lp.rank_of(module)
            if plan.lora_dropout > 0 and autocast:
                per_token += (c if no_grad_input else 1 + c) * in_f  # dropout output (+ mask)
            elif plan.lora_dropout > 0:
                per_token += (4 if no_grad_input else 8) * in_f  # dropout output (+ its noise)
            elif autocast and group in ("qkv", "gate_up"):
                per_token += c * in_f  # lora_A's autocast copy of its float32 input
            else:
                kept.add(group)  # lora_A keeps the group's input itself
            per_token += (c if autocast else 4) * r
            fixed += c * r * (in_f + out_f) if autocast else 0  # adapters' bf16 copies
        if autocast and not is_packed(fmt) and DENSE_FORMATS[fmt] // 8 != c:
            fixed += c * in_f * out_f  # autocast's copy of a float32 weight
    mlp_inputs = 0
    for group in kept:
        size = (c if autocast else act) * width[group]
        # Without autocast o_proj's input is the output attention keeps anyway.
        per_token += 0 if (group == "o" and not autocast) else size
        mlp_inputs += size if group in ("gate_up", "down") else 0
    return per_token, fixed, mlp_inputs


def dequant_peak(dims: dict, lp: LayerPlan, *, c: int, wbytes: int) -> int:
    """The largest transient one of the layer's packed weights needs to be dequantized."""
    sizes = [
        dequant_bytes(lp.format_of(m), wbytes, c) * out_f * in_f
        for m, (out_f, in_f, _b) in dims.items()
        if is_packed(lp.format_of(m))
    ]
    return max(sizes, default=0)


def loss_bytes(config: dict, step: StepShape, wbytes: int) -> int:
    """Bytes the LM head and loss hold on top of the kept activations, at their peak."""
    t, h, vocab, c = step.tokens, config["hidden_size"], config["vocab_size"], step.compute_bytes
    hidden = t * h * wbytes  # the final norm's output
    if step.loss_chunk:
        chunk = min(step.loss_chunk, t)
        head_cast = vocab * h * c if wbytes != c else 0
        return hidden + t * h * c + head_cast + 8 * chunk * vocab
    logits = 4 * t * vocab
    return hidden + 3 * logits + (2 * t * vocab if c < 4 else 0)


# Transient bytes per token beyond what layers keep, at a layer's worst moment (its
# activation gradients in backward, a dropout draw and casts in forward), as (x hidden,
# x intermediate) per compute path; fitted to TensorPeakMeter on two widths (64/96 and
# 576/1536) and checked on the others (see the module docstring).
_TRANSIENT = {(4, True): (8, 4), (4, False): (4, 4), (2, True): (6, 6), (2, False): (4, 0)}


def step_bytes(
    config: dict,
    layers: list[tuple[int, int, int]],
    first: tuple[int, int, int],
    lora: list[int],
    step: StepShape,
    wbytes: int,
    dequant: int = 0,
) -> dict[str, int]:
    """The step's peak beyond weights (LoRA gradients included), and its parts.

    ``layers``: :func:`layer_bytes` of each layer; ``first``: of the first layer without
    checkpointing; ``lora``: each layer's LoRA gradient bytes; ``dequant``: the largest
    :func:`dequant_peak`.
    """
    t, h, c = step.tokens, config["hidden_size"], step.compute_bytes
    per_layer = [pt * t + fixed for pt, fixed, _ in layers]
    a, b = _TRANSIENT[(4 if c >= 4 else 2, step.checkpointing)]
    # A layer's worst moment: its activation transients, or one packed weight's dequantization.
    transient = max(t * (a * h + b * config["widest"]), dequant)
    final_norm = (4 * h + 4) * t
    if step.checkpointing:
        n = len(layers)
        kept = n * t * h * wbytes + final_norm  # each layer's input
        # Backward recomputes one layer at a time, last first: its kept input goes, the LoRA
        # gradients of the layers above it have come. Both linear in depth: an end is worst.
        # In float32 the recomputed layer peaks in attention's backward, after its MLP's kept
        # inputs are gone (measured: TensorPeakMeter); under autocast in the MLP.
        recomputed = max(per_layer[k] - (0 if c < 4 else t * layers[k][2]) for k in range(n))
        backward = recomputed + transient + kept + max(0, (n - 1) * (max(lora) - t * h * wbytes))
    else:
        kept = sum(per_layer[1:]) + first[0] * t + first[1] + final_norm
        backward = kept + transient + lora[-1]
    loss = kept + loss_bytes(config, step, wbytes)
    if step.accumulating:  # every LoRA gradient exists from the first micro-batch's backward on
        loss += sum(lora)
        backward += sum(lora) - (0 if step.checkpointing else lora[-1])
    return {"kept": kept, "loss_phase": loss, "backward_phase": backward,
            "activations": max(loss, backward, sum(lora))}  # fmt: skip
