"""How many bytes a packed linear layer holds, derived from the backends' storage layouts.

The memory model prices a plan before anything is quantized, so it needs these numbers
without building modules. They are exact, not approximate: ``tests/test_quant.py`` checks
them against the tensors bitsandbytes and hqq really allocate, for every format.

Layouts (as of bitsandbytes 0.50, hqq 0.2.8):

* bitsandbytes NF4/FP4: two weights per byte; one absmax per block of ``BNB_BLOCKSIZE``
  weights. With double quantization (QLoRA's default, ours too) the absmaxes are stored as
  uint8 plus a float32 offset, a 16-entry float32 code, and a nested float32 absmax per 256
  blocks with its own 256-entry code.
* bitsandbytes int8 (LLM.int8): one byte per weight plus one float32 scale per output row.
* hqq: weights grouped ``group_size`` at a time (rows of the grouped matrix); 8/4/2 bit pack
  1/2/4 group-rows per uint8 row, 3 bit packs 10 group-rows per int32 row; a scale and a zero
  per group in the compute dtype.
"""

from __future__ import annotations

import math

from qpruner.errors import QPrunerError

BNB_BLOCKSIZE = 64
BNB_DOUBLE_QUANT = True
HQQ_GROUP_SIZE = 64
_HQQ_ROWS_PER_PACK = {8: (1, 1), 4: (2, 1), 2: (4, 1), 3: (10, 4)}  # group-rows per packed row, bytes/elem


def hqq_group_size(numel: int, bits: int) -> int:
    """The largest group size <= 64 hqq can pack ``numel`` weights with.

    hqq needs whole groups, and at 2/4 bit a whole number of packed rows (no padding,
    unlike its 3-bit packer); pruned layers can have odd widths, so halve until it fits.
    """
    per = 1 if bits == 3 else _HQQ_ROWS_PER_PACK[bits][0]
    g = HQQ_GROUP_SIZE
    while g >= 8:
        if numel % g == 0 and (numel // g) % per == 0:
            return g
        g //= 2
    raise QPrunerError(
        f"cannot group a weight of {numel} elements for hqq (needs a multiple of 8); "
        "prune with --channel-multiple 8"
    )


def packed_weight_bytes(fmt: str, out_features: int, in_features: int, scale_bytes: int) -> int:
    """Bytes of a packed ``out x in`` weight incl. its scales; ``scale_bytes``: hqq's compute dtype size."""
    n = out_features * in_features
    if fmt in ("nf4", "fp4"):
        blocks = math.ceil(n / BNB_BLOCKSIZE)
        data = math.ceil(n / 2)
        if not BNB_DOUBLE_QUANT:
            return data + 4 * blocks + 4 * 16
        nested = math.ceil(blocks / 256)
        return data + blocks + 4 + 4 * 16 + 4 * nested + 4 * 256
    if fmt == "int8":
        return n + 4 * out_features
    if fmt.startswith("hqq"):
        bits = int(fmt[3:])
        group = hqq_group_size(n, bits)
        groups = n // group
        per, elem = _HQQ_ROWS_PER_PACK[bits]
        return math.ceil(groups / per) * group * elem + 2 * groups * scale_bytes
    raise QPrunerError(f"{fmt!r} is not a packed format")
