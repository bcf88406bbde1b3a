"""Zero-shot evaluation through lm-eval on in-memory models, with tasks from local files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import make_model, make_tokenizer
from transformers import LlamaForCausalLM

from qpruner.cli import main
from qpruner.errors import QPrunerError
from qpruner.eval.zeroshot import BUILTIN_TASK_DIR, TaskScore, format_scores, sample_indices, zero_shot

TASK = "toy_cloze"
N_DOCS = 8
RIGHT, WRONG = "dog", ("river", "tree")  # every item's answer is "dog"; the others are never right


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A multiple-choice task of the test's own data: YAML in a folder, JSONL in a subfolder of it."""
    root = tmp_path_factory.mktemp("tasks")
    (root / "toy" / "data").mkdir(parents=True)
    rng = random.Random(0)
    rows = []
    for i in range(N_DOCS):
        choices = [RIGHT, *WRONG]
        rng.shuffle(choices)
        nouns = ("cat", "bird", "fish")[: 1 + i % 3]
        context = " ".join(rng.choice(["the", "a", "my"]) + " " + w for w in nouns)
        rows.append({"context": context + " sees the", "choices": choices, "label": choices.index(RIGHT)})
    (root / "toy" / "data" / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "toy" / "toy.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n  data_files:\n    test: data/items.jsonl\n"  # relative to this YAML
        "output_type: multiple_choice\n"
        "test_split: test\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_target: "{{label}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return root


class RiggedLlama(LlamaForCausalLM):
    """A LLaMA whose next-token logits always favour one token by a wide margin."""

    favoured: int = 0

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits[..., self.favoured] += 100.0
        return out


def _rigged(word: str) -> RiggedLlama:
    base = make_model("gqa", layers=2)
    torch.manual_seed(0)
    model = RiggedLlama(base.config).eval()
    model.favoured = make_tokenizer().convert_tokens_to_ids(word)
    return model


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Run every test from an unrelated directory: relative data paths must not depend on it."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(("word", "expected"), [(RIGHT, 1.0), (WRONG[0], 0.0)])
def test_rigged_model_scores_exactly(task_dir, tokenizer, word, expected):
    scores = zero_shot(_rigged(word), tokenizer, [TASK], task_dir=task_dir, batch_size=4, progress=False)
    s = scores[TASK]
    assert (s.acc, s.acc_norm) == (expected, expected)  # both metrics, both reported
    assert s.samples == N_DOCS and s.num_fewshot == 0
    assert s.acc_stderr == 0.0 and s.acc_norm_stderr == 0.0


def test_limit_scores_a_fixed_seeded_sample_not_the_first_items(tmp_path, tokenizer):
    """Items 0-3 are answerable by the rigged model, 4-11 are not: the score reveals which were scored."""
    rows = [{"context": "the cat sees", "choices": [RIGHT, "river"], "label": int(i >= 4)} for i in range(12)]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "s" / "s.yaml").write_text(
        "task: seeded_toy\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: items.jsonl\n"
        'output_type: multiple_choice\ntest_split: test\ndoc_to_text: "{{context}}"\n'
        'doc_to_target: "{{label}}"\ndoc_to_choice: "{{choices}}"\nmetric_list:\n  - metric: acc\n'
    )
    picked = sample_indices(12, 5, seed=7, task="seeded_toy")
    assert picked == sorted(set(picked)) and len(picked) == 5 and picked != [0, 1, 2, 3, 4]
    assert picked == sample_indices(12, 5, seed=7, task="seeded_toy")  # fixed
    assert picked != sample_indices(12, 5, seed=8, task="seeded_toy")
    assert sample_indices(12, 20, seed=7) == list(range(12))

    def score(seed: int) -> TaskScore:
        return zero_shot(
            _rigged(RIGHT), tokenizer, ["seeded_toy"], task_dir=tmp_path, limit=5, seed=seed, progress=False
        )["seeded_toy"]

    s = score(7)
    assert s.samples == 5 and s.acc == pytest.approx(sum(i < 4 for i in picked) / 5)
    assert s.acc_stderr is not None
    other = sample_indices(12, 5, seed=8, task="seeded_toy")
    assert score(8).acc == pytest.approx(sum(i < 4 for i in other) / 5)


def test_peft_model_runs_in_memory_and_matches_its_base(task_dir, tokenizer):
    from peft import LoraConfig, get_peft_model

    model = make_model("gqa", layers=2)
    base = zero_shot(model, tokenizer, [TASK], task_dir=task_dir, progress=False)[TASK]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    scored = zero_shot(peft_model, tokenizer, [TASK], task_dir=task_dir, limit=5, progress=False)[TASK]
    assert peft_model.training  # mode restored
    assert scored.samples == 5
    # LoRA's B starts at zero, so the adapted model predicts exactly what its base does.
    full = zero_shot(peft_model, tokenizer, [TASK], task_dir=task_dir, progress=False)[TASK]
    assert (full.acc, full.acc_norm) == (base.acc, base.acc_norm)


def test_shipped_task_is_found_without_task_dir(tokenizer):
    data = BUILTIN_TASK_DIR / "wikitext_cloze" / "wikitext_cloze.jsonl"
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 500
    assert all(len(r["choices"]) == 4 and 0 <= r["label"] < 4 for r in rows)
    assert len({r["context"] for r in rows}) == 500
    s = zero_shot(make_model("gqa", layers=2), tokenizer, ["wikitext_cloze"], limit=3, progress=False)
    assert s["wikitext_cloze"].samples == 3


def test_unknown_task_is_a_one_line_error_naming_it(task_dir, tokenizer):
    with pytest.raises(QPrunerError) as info:
        zero_shot(make_model("gqa", layers=2), tokenizer, ["toy_clozee"], task_dir=task_dir, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "'toy_clozee'" in msg and TASK in msg  # suggests the near name


def test_hub_task_offline_is_a_one_line_error(task_dir, tokenizer, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(QPrunerError) as info:
        zero_shot(make_model("gqa", layers=2), tokenizer, ["arc_easy"], task_dir=task_dir, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "'arc_easy'" in msg and "hub" in msg


def test_bad_task_dir_and_arguments(tmp_path, tokenizer):
    model = make_model("gqa", layers=2)
    with pytest.raises(QPrunerError, match="task directory not found"):
        zero_shot(model, tokenizer, [TASK], task_dir=tmp_path / "nowhere")
    with pytest.raises(QPrunerError, match="no task YAML"):
        zero_shot(model, tokenizer, [TASK], task_dir=tmp_path)
    with pytest.raises(QPrunerError, match="limit"):
        zero_shot(model, tokenizer, [TASK], limit=0)
    with pytest.raises(QPrunerError, match="no zero-shot tasks"):
        zero_shot(model, tokenizer, [" "])


def test_table_shows_both_metrics_and_missing_acc_norm():
    table = format_scores(
        {
            "a": TaskScore("a", 10, 0.5, 0.1, 0.6, 0.1),
            "b": TaskScore("b", 4, 0.25, None, None, None),
            "c": TaskScore("c", 4, 0.75, 0.2, None, None, other={"perplexity": 12.5, "perplexity_stderr": 1}),
        }
    )
    header, row_a, row_b, row_c = table.splitlines()[:4]
    assert "acc %" in header and "acc_norm %" in header
    assert "50.00" in row_a and "60.00" in row_a
    assert "25.00" in row_b and row_b.rstrip().endswith("n/a")
    assert row_c.rstrip().endswith("perplexity 12.500 ± 1.000")


def test_cli_eval_with_tasks_end_to_end(model_dir, task_dir, tmp_path, capsys):
    report = tmp_path / "report.json"
    argv = ["eval", "--model", model_dir, "--tasks", TASK, "--task-dir", task_dir, "--limit", "4"]
    rc = main([str(a) for a in [*argv, "--json", report, "--no-progress", "--device", "cpu"]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "acc %" in out and "acc_norm %" in out and TASK in out
    saved = json.loads(report.read_text())["zeroshot"][TASK]
    assert saved["samples"] == 4 and {"acc", "acc_norm", "acc_stderr", "acc_norm_stderr"} <= set(saved)

    rc = main(["eval", "--model", str(model_dir), "--tasks", "nope_task", "--task-dir", str(task_dir)])
    _, err = capsys.readouterr()
    assert rc == 1 and err.count("\n") == 1 and "nope_task" in err
