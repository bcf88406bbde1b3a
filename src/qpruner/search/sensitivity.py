"""Layer sensitivity, measured: each decoder layer alone quantized, the loss it costs untrained.

QPruner's allocation ranks layers by a proxy of how much each matters (mutual information,
Taylor: :mod:`qpruner.search.layer_importance`). What the allocation needs is how much
*quantizing* a layer costs. That can be measured directly and cheaply: for each layer and each
low bit width, that layer's seven projections are swapped for the real packed modules a plan
would use (the rest stay unquantized), the mean next-token loss on the calibration tokens is
taken, and the original modules are put back. One forward pass per layer and width, no
training: on SmolLM2-135M (30 layers, 2 widths, 2k tokens) a few minutes of CPU.

Δ loss in nats is Δ log-perplexity, so layers compare on one scale. Spearman's correlation of
a proxy with it says whether the proxy ranks layers as quantization actually hurts them.
:func:`qpruner.search.layer_importance.layer_profile` puts it beside MI and Taylor.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from qpruner.architecture import ATTN_PROJ, MLP_PROJ, decoder_layers, model_device
from qpruner.errors import QPrunerError
from qpruner.plan import format_for_bits

#: The widths each layer is measured at (the low end of the searched widths, where layers differ).
SENSITIVITY_BITS = (2, 3)
_PROJECTIONS = tuple(f"self_attn.{p}" for p in ATTN_PROJ) + tuple(f"mlp.{p}" for p in MLP_PROJ)


@dataclass
class Sensitivity:
    bits: list[int]
    base_loss: float  # mean next-token NLL of the unquantized model on the tokens used
    delta: list[list[float]]  # [layer][width]: loss with that layer alone at that width, minus base
    tokens: int
    seconds: float

    def scores(self) -> list[float]:
        """One importance per layer for the allocation: the mean loss increase over the widths
        (clamped at 0: a layer that quantizes for free is not important to keep wide)."""
        return [max(0.0, sum(row) / len(row)) for row in self.delta]

    def column(self, bits: int) -> list[float]:
        return [row[self.bits.index(bits)] for row in self.delta]

    def at(self, layer: int, bits: int) -> float:
        """Δ loss of ``layer`` alone at ``bits``, extrapolated to widths not measured.

        Each added bit shrinks a layer's quantization error by a near-constant factor, so the
        loss it costs is taken as geometric in the width, with the factor the layer's own two
        nearest measured widths show (one width measured: a quarter per bit, the error's
        variance), capped at 1 so a wider layer never costs more; 16 bits and up cost nothing.
        """
        if bits >= 16:
            return 0.0
        row = [max(d, 0.0) for d in self.delta[layer]]
        if bits in self.bits:
            return row[self.bits.index(bits)]
        order = sorted(range(len(self.bits)), key=lambda i: self.bits[i])
        pair = order[-2:] if bits > self.bits[order[-1]] else order[:2]
        near = pair[-1] if bits > self.bits[order[-1]] else pair[0]
        factor = 0.25
        if len(pair) == 2 and row[pair[0]] > 0:
            span = self.bits[pair[1]] - self.bits[pair[0]]
            factor = min(1.0, (row[pair[1]] / row[pair[0]]) ** (1 / span))
        if bits < self.bits[near]:  # narrower than any measured width: the factor run backwards
            return row[near] / max(factor, 1e-6) ** (self.bits[near] - bits)
        return row[near] * factor ** (bits - self.bits[near])

    def predicted_delta(self, layer_bits: list[int]) -> float:
        """A whole plan's untrained Δ loss, taken as the sum of its layers' (the additive prior).

        Interactions between layers are ignored. On search_real_bench's SmolLM2 plans this sum
        ranked the plans' trial errors at Spearman 0.94 (20 plans) and 1.0 (8 plans) within one
        trial definition, with no plan's error used to make it.
        """
        if len(layer_bits) != len(self.delta):
            raise QPrunerError(f"sensitivity has {len(self.delta)} layers, the plan {len(layer_bits)}")
        return float(sum(self.at(i, b) for i, b in enumerate(layer_bits)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Sensitivity:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@torch.no_grad()
def mean_loss(model: nn.Module, samples: torch.Tensor, *, micro_batch: int = 4) -> tuple[float, int]:
    """Mean next-token NLL over ``samples`` [n, seq_len] and the number of tokens scored."""
    device = model_device(model)
    total, count = 0.0, 0
    for start in range(0, samples.shape[0], micro_batch):
        batch = samples[start : start + micro_batch].to(device)
        n = batch.shape[0] * (batch.shape[1] - 1)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        total, count = total + float(loss) * n, count + n
    return total / count, count


def measure_sensitivity(
    model: nn.Module,
    samples: torch.Tensor,
    *,
    bits: tuple[int, ...] = SENSITIVITY_BITS,
    micro_batch: int = 4,
    progress: bool = False,
) -> Sensitivity:
    """Δ loss of each layer alone at each of ``bits``; ``model`` is left exactly as it was."""
    from qpruner.quant.registry import quantize_linear

    if any(b >= 16 for b in bits):
        raise QPrunerError(f"sensitivity widths must be packed (2, 3, 4 or 8 bits), got {list(bits)}")
    formats = [format_for_bits(b, "fp32") for b in bits]
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    layers = decoder_layers(model)
    base, tokens = mean_loss(model, samples, micro_batch=micro_batch)
    delta: list[list[float]] = []
    try:
        for layer in tqdm(layers, desc="layer sensitivity", disable=not progress, leave=False):
            originals = {name: layer.get_submodule(name) for name in _PROJECTIONS}
            row = []
            for fmt in formats:
                try:
                    for name, linear in originals.items():
                        _swap(layer, name, quantize_linear(linear, fmt, dtype))
                    row.append(mean_loss(model, samples, micro_batch=micro_batch)[0] - base)
                finally:  # the very same modules back: the model is restored bit for bit
                    for name, linear in originals.items():
                        _swap(layer, name, linear)
            delta.append(row)
    finally:
        model.train(was_training)
    return Sensitivity(list(bits), base, delta, tokens, time.perf_counter() - t0)


def _swap(layer: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(layer.get_submodule(parent), child, module)


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (scipy's, ties averaged); None where it is undefined."""
    import math
    import warnings

    from scipy.stats import spearmanr

    if len(a) != len(b) or len(a) < 3:
        return None
    with warnings.catch_warnings():  # a constant input: undefined, answered None below
        warnings.simplefilter("ignore")
        rho = float(spearmanr(a, b).statistic)
    return rho if math.isfinite(rho) else None
