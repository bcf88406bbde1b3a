"""Peak memory of Taylor scoring relative to the model's own size, with and without chunking.

The issue's bar: pruning a 7B model must not need more than ~2x the model's memory. No 7B
checkpoint is reachable here, and memory does not depend on the weights' values, so this
builds a random model with TinyLlama-1.1B's shape (22 layers, GQA 32/4, MLP 5632) and
measures each setting in a fresh process (peak RSS is per process):

    python benchmarks/prune_memory.py            # ~5 min on 2 CPU cores

Reported: peak RSS during pruning minus RSS before the model existed, divided by the
model's weight bytes. Writes benchmarks/results/prune_memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "prune_memory.json"
SHAPE = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=2048,
)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def child(importance: str, chunk: int | None, n_samples: int, seq_len: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qpruner.eval.size import model_size
    from qpruner.prune import PruneConfig, prune_model

    torch.manual_seed(0)
    before = _rss_bytes()
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPE))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    weights = model_size(model).weight_bytes
    loaded = _rss_bytes()
    samples = torch.randint(0, SHAPE["vocab_size"], (n_samples, seq_len))
    cfg = PruneConfig(
        ratio=0.2, importance=importance, grad_chunk_layers=chunk, n_samples=n_samples, seq_len=seq_len
    )
    t0 = time.perf_counter()
    prune_model(model, cfg, samples, progress=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(
        importance=importance,
        grad_chunk_layers=chunk,
        weight_bytes=weights,
        rss_after_load=loaded - before,
        peak_extra=peak - before,
        peak_over_model=(peak - before) / weights,
        seconds=seconds,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, metavar=("IMPORTANCE", "CHUNK"))
    ap.add_argument("--n-samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    if args.child:
        chunk = None if args.child[1] == "none" else int(args.child[1])
        print(json.dumps(child(args.child[0], chunk, args.n_samples, args.seq_len)))
        return
    rows = []
    for importance, chunk in [
        ("l2", "none"),
        ("taylor", "none"),
        ("taylor", "4"),
        ("taylor2", "17"),
        ("taylor2", "none"),
        ("taylor2", "4"),
    ]:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                importance,
                chunk,
                "--n-samples",
                str(args.n_samples),
                "--seq-len",
                str(args.seq_len),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{importance:>8} chunk {chunk:>4}: peak {r['peak_extra'] / 2**30:.2f} GiB = "
            f"{r['peak_over_model']:.2f}x the {r['weight_bytes'] / 2**30:.2f} GiB model ({r['seconds']:.0f}s)"
        )
    table = ["| importance | grad chunk (layers) | peak / model bytes | pruning s |", "|---|---|---|---|"]
    table += [
        f"| {r['importance']} | {r['grad_chunk_layers'] or 'default'} | {r['peak_over_model']:.2f}x "
        f"| {r['seconds']:.0f} |"
        for r in rows
    ]
    print("\n".join(table))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"shape": SHAPE, "rows": rows, "table": table}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
