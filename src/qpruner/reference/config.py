"""The reference model's size and training recipe, apart from the code that builds it, so the
builder (:mod:`qpruner.reference.model`) and the trainer (:mod:`qpruner.reference.training`)
both read it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from qpruner.errors import QPrunerError


@dataclass
class ReferenceConfig:
    """Model and training hyper-parameters; the defaults are the project's reference model.

    Sized for a 2-core CPU, which trains this model at ~2.6k tokens/s: 700 steps of 8 x 256
    tokens (~6 epochs of the 243k training tokens) take ~9 minutes. Test perplexity was flat
    for lr 1e-3..2e-3 and clearly worse at 4e-3; dropout stays 0, weight decay fights overfitting.
    """

    vocab_size: int = 8000
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4  # grouped-query attention, as in LLaMA-2/3
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 700
    lr: float = 2e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise QPrunerError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise QPrunerError("num_attention_heads must be a multiple of num_key_value_heads")
        if not 2 <= self.seq_len <= self.max_position_embeddings:
            raise QPrunerError("seq_len must be between 2 and max_position_embeddings")
        if min(self.steps, self.batch_size, self.vocab_size, self.eval_batch_size) < 1:
            raise QPrunerError("steps, batch_size, vocab_size and eval_batch_size must be positive")
