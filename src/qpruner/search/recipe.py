"""The short fine-tune every search trial runs: one recipe for the CLI, the API and benchmarks.

A trial is a short recovery — enough steps for the adapter to move, few enough to run dozens
of trials (the papers' own searches fine-tune briefly per candidate). Its batch shape also
prices each plan's memory, so everything that evaluates plans for a search takes it from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads TRIAL_STEPS while building its parser: no torch for that
    from qpruner.lora.train import TrainConfig

#: Default LoRA steps per trial (``--trial-steps``).
TRIAL_STEPS = 20


def trial_training(steps: int = TRIAL_STEPS, *, micro_batch: int = 4) -> TrainConfig:
    """The :class:`TrainConfig` of one search trial: ``steps`` steps of 8 × 128 tokens.

    ``micro_batch`` lets a caller match the batch shape of the recovery that follows (so the
    search prices memory as the recovery will spend it). No checkpoints: a trial is rerun,
    never resumed.
    """
    from qpruner.lora.train import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=8,
        micro_batch=micro_batch,
        lr=1e-3,
        # No warm-up: transformers' linear warm-up gives step 0 a learning rate of 0, so a
        # 4-step trial trained 3 and its first multi-fidelity rung (1 step) scored exactly
        # the untrained screen again (seen on SmolLM2: 129.4 at both).
        warmup_steps=0,
        cutoff_len=128,
        save_every=10**9,
        keep_checkpoints=1,
    )
