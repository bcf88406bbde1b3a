"""Recovery data: Alpaca-style instruction JSON or plain text, tokenized into examples.

LLM-Pruner recovers on Alpaca-cleaned with the alpaca-lora recipe: one prompt per record in
the Alpaca template, cut at ``cutoff_len`` tokens, EOS appended, loss on every token
(``train_on_inputs``). Plain text (WikiText and the like) is cut into ``cutoff_len`` blocks.

Batches are a pure function of (seed, step), so a resumed run sees exactly the examples an
uninterrupted run would have, with no data-loader state to save.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from qpruner.data_sources import is_dataset_source, open_dataset
from qpruner.errors import QPrunerError

# The alpaca-lora prompt template (the one LLM-Pruner's post-training uses).
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
IGNORE = -100


@dataclass
class Example:
    ids: list[int]
    labels: list[int]


def read_text_file(path: Path) -> str:
    """A training file's text, refusing what is not text: a binary file (model weights, an
    archive) would otherwise be decoded with replacement characters and trained on."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QPrunerError(
            f"{path} is not UTF-8 text (a binary file?): {exc.reason} at byte {exc.start}"
        ) from exc
    if "\x00" in text:
        raise QPrunerError(f"{path} holds NUL bytes: a binary file, not training text")
    return text


def _read_records(path: Path) -> list[dict]:
    text = read_text_file(path)
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QPrunerError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):  # {"train": [...]} or a single record
        data = data.get("train", [data])
    if not isinstance(data, list):
        raise QPrunerError(f"{path}: expected a list of Alpaca records")
    return data


def _alpaca_examples(records: list[dict], tokenizer, cutoff_len: int, train_on_inputs: bool) -> list[Example]:
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "instruction" not in rec or "output" not in rec:
            raise QPrunerError(f"record {i} lacks 'instruction'/'output'; expected Alpaca records")
        template = PROMPT_WITH_INPUT if rec.get("input") else PROMPT_NO_INPUT
        prompt = template.format(instruction=rec["instruction"], input=rec.get("input", ""))
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        full = tokenizer(prompt + str(rec["output"]), add_special_tokens=True)["input_ids"][:cutoff_len]
        if (
            tokenizer.eos_token_id is not None
            and len(full) < cutoff_len
            and full[-1:] != [tokenizer.eos_token_id]
        ):
            full = full + [tokenizer.eos_token_id]
        labels = list(full)
        if not train_on_inputs:
            n = min(len(prompt_ids), len(full))
            labels[:n] = [IGNORE] * n
        if any(lbl != IGNORE for lbl in labels[1:]):
            out.append(Example(full, labels))
    return out


def _text_examples(text: str, tokenizer, cutoff_len: int) -> list[Example]:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # long on purpose
    blocks = [ids[i : i + cutoff_len] for i in range(0, len(ids), cutoff_len)]
    return [Example(b, list(b)) for b in blocks if len(b) >= 2]


def load_examples(
    source: str | Path, tokenizer, cutoff_len: int = 256, train_on_inputs: bool = True
) -> list[Example]:
    """Examples from an Alpaca ``.json``/``.jsonl`` file, any other (plain text) file, or a dataset
    (``hf:ID[:CONFIG][@SPLIT]`` or a saved directory) with Alpaca or ``text`` columns."""
    path = Path(source).expanduser()
    if cutoff_len < 2:
        raise QPrunerError(f"cutoff length must be >= 2, got {cutoff_len}")
    if is_dataset_source(source):
        ds = open_dataset(source, "train")
        if "instruction" in ds.column_names:
            examples = _alpaca_examples(ds.to_list(), tokenizer, cutoff_len, train_on_inputs)
        elif "text" in ds.column_names:
            examples = _text_examples("\n\n".join(ds["text"]), tokenizer, cutoff_len)
        else:
            raise QPrunerError(f"dataset {source} has neither Alpaca columns nor 'text' ({ds.column_names})")
    elif not path.is_file():
        raise QPrunerError(f"training data not found: {path}")
    elif path.suffix in (".json", ".jsonl"):
        examples = _alpaca_examples(_read_records(path), tokenizer, cutoff_len, train_on_inputs)
    else:
        examples = _text_examples(read_text_file(path), tokenizer, cutoff_len)
    if not examples:
        raise QPrunerError(f"{path} yields no training examples")
    return examples


class BatchSchedule:
    """Micro-batch ``k`` of the run, the same in a fresh and a resumed run.

    Each epoch is a seeded permutation of the examples; micro-batches never straddle epochs.
    """

    def __init__(self, examples: list[Example], micro_batch: int, pad_id: int, seed: int):
        self.examples, self.micro_batch, self.pad_id, self.seed = examples, micro_batch, pad_id, seed
        self.per_epoch = math.ceil(len(examples) / micro_batch)
        self._order: tuple[int, list[int]] | None = None

    def _epoch_order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.examples), generator=g).tolist())
        return self._order[1]

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        epoch, j = divmod(k, self.per_epoch)
        idx = self._epoch_order(epoch)[j * self.micro_batch : (j + 1) * self.micro_batch]
        chosen = [self.examples[i] for i in idx]
        width = max(len(e.ids) for e in chosen)
        ids = torch.full((len(chosen), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(chosen), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, e in enumerate(chosen):  # right padding, as alpaca-lora's collator
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            labels[row, : len(e.labels)] = torch.tensor(e.labels)
            mask[row, : len(e.ids)] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
