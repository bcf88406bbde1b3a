"""The shipped benchmark tasks (qp_*): they load, render lm-eval's prompts and score offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import make_model
from test_zeroshot import _rigged

from qpruner.errors import QPrunerError
from qpruner.eval.task_index import load_tasks, local_dirs, task_manager
from qpruner.eval.zeroshot import _quiet, check_tasks, zero_shot

# Task -> (its file in the task data folder, whether lm-eval defines acc_norm for it).
TASKS = {
    "qp_boolq": ("boolq.jsonl", False),
    "qp_piqa": ("piqa.jsonl", True),
    "qp_arc_easy": ("arc_easy.jsonl", True),
    "qp_arc_challenge": ("arc_challenge.jsonl", True),
    "qp_winogrande": ("winogrande.jsonl", False),
    "qp_openbookqa": ("openbook_qa.jsonl", True),
    "qp_copa": ("copa.jsonl", False),
    "qp_lambada": ("lambada_openai.jsonl", False),
}
N = 3  # items per task in the test's files


def _rows(task: str, i: int) -> dict:
    """Row ``i`` of ``task`` in the local files' format; the right answer always holds "dog"."""
    noun = ("cat", "bird", "fish")[i % 3]
    four = ["the dog", "a river", "my tree", "one house"]
    four = four[i:] + four[:i]  # the right answer at index (4 - i) % 4
    gold4 = four.index("the dog")
    if task == "qp_boolq":
        return {
            "query": f"Passage: the {noun} sees a dog\nQuestion: the {noun} sees a dog?",
            "choices": ["no", "yes"],
            "gold": i % 2,
        }
    if task == "qp_piqa":
        two = ["a dog", "a river"] if i % 2 == 0 else ["a river", "a dog"]
        return {"query": f"Question: the {noun} finds\n", "choices": two, "gold": two.index("a dog")}
    if task in ("qp_arc_easy", "qp_arc_challenge"):
        return {"query": f"Question: what does the {noun} see?", "choices": four, "gold": gold4}
    if task == "qp_openbookqa":
        return {"query": f"the {noun} likes", "choices": four, "gold": gold4}
    if task == "qp_copa":
        two = ["the dog runs.", "the tree runs."] if i % 2 == 0 else ["the tree runs.", "the dog runs."]
        return {
            "query": f"the {noun} runs, {('because', 'therefore')[i % 2]}",
            "choices": two,
            "gold": two.index("the dog runs."),
        }
    if task == "qp_winogrande":
        return {
            "context_options": [
                f"the {noun} sees the dog so the {noun}",
                f"the {noun} sees the dog so the dog",
            ],
            "continuation": "runs.",
            "gold": i % 2,
        }
    return {"context": f"the {noun} sees the", "continuation": "dog"}  # qp_lambada


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zeroshot")
    for task, (file, _) in TASKS.items():
        (root / file).write_text("".join(json.dumps(_rows(task, i)) + "\n" for i in range(N)))
    return root


def _requests(names: list[str], data: Path) -> dict[str, list[tuple[str, str]]]:
    """The (context, continuation) pairs lm-eval scores for each task's first item."""
    with _quiet(progress=False):
        loaded = load_tasks(task_manager(names, local_dirs(None), data), names)
        out = {}
        for name, task in loaded["tasks"].items():
            task.build_all_requests(limit=1, rank=0, world_size=1)
            out[name] = [tuple(inst.arguments) for inst in task.instances]
    return out


def test_every_task_scores_a_tiny_model_offline(task_data, tokenizer):
    scores = zero_shot(
        make_model("gqa", layers=2), tokenizer, ["qp_zeroshot"], task_data=task_data, progress=False
    )
    assert set(scores) == set(TASKS)  # the tag runs all eight
    for name, (_, has_norm) in TASKS.items():
        s = scores[name]
        assert s.samples == N, name
        assert 0.0 <= s.acc <= 1.0 and s.acc_stderr is not None, name
        assert (s.acc_norm is not None) == has_norm and (s.acc_norm_stderr is not None) == has_norm, name
    ppl = scores["qp_lambada"].other
    assert ppl["perplexity"] > 1.0 and ppl["perplexity_stderr"] >= 0.0


def test_prompts_are_lm_evals(task_data):
    got = _requests(list(TASKS), task_data)
    assert got["qp_boolq"] == [
        ("the cat sees a dog\nQuestion: the cat sees a dog?\nAnswer:", " no"),
        ("the cat sees a dog\nQuestion: the cat sees a dog?\nAnswer:", " yes"),
    ]
    assert got["qp_piqa"] == [
        ("Question: the cat finds\nAnswer:", " a dog"),
        ("Question: the cat finds\nAnswer:", " a river"),
    ]
    for arc in ("qp_arc_easy", "qp_arc_challenge"):
        assert got[arc][0] == ("Question: what does the cat see?\nAnswer:", " the dog")
        assert len(got[arc]) == 4
    assert got["qp_openbookqa"][1] == ("the cat likes", " a river")
    # lm-eval's COPA: premise without the period, no comma; choices carry their own leading space.
    assert got["qp_copa"] == [
        ("the cat runs because", "  the dog runs."),
        ("the cat runs because", "  the tree runs."),
    ]
    # WinoGrande's partial scoring: the options sit in the contexts, the continuation is shared.
    assert got["qp_winogrande"] == [
        ("the cat sees the dog so the cat", " runs."),
        ("the cat sees the dog so the dog", " runs."),
    ]
    assert got["qp_lambada"] == [("the cat sees the", " dog")]


def test_gold_answers_are_wired(task_data, tokenizer):
    """A model that always predicts "dog" picks every right answer (each holds "dog")."""
    names = ["qp_piqa", "qp_arc_easy", "qp_openbookqa", "qp_copa", "qp_lambada"]
    scores = zero_shot(_rigged("dog"), tokenizer, names, task_data=task_data, progress=False)
    for name in names:
        assert scores[name].acc == 1.0, name
    assert scores["qp_lambada"].other["perplexity"] == pytest.approx(1.0, abs=1e-3)
    wrong = zero_shot(_rigged("river"), tokenizer, ["qp_arc_easy"], task_data=task_data, progress=False)
    assert wrong["qp_arc_easy"].acc == 0.0


def test_task_data_errors_are_one_line(task_data, tmp_path):
    with pytest.raises(QPrunerError) as info:
        check_tasks(["qp_boolq"])
    msg = str(info.value)
    assert "\n" not in msg and "boolq.jsonl" in msg and "--task-data" in msg
    with pytest.raises(QPrunerError, match="task data folder not found"):
        check_tasks(["qp_copa"], task_data=tmp_path / "nowhere")
    with pytest.raises(QPrunerError, match="copa.jsonl") as info:
        check_tasks(["qp_copa"], task_data=tmp_path)  # a folder without the file
    assert "\n" not in str(info.value)
    assert check_tasks(["qp_copa", "wikitext_cloze"], task_data=task_data) == ["qp_copa", "wikitext_cloze"]


def _shared_zeroshot() -> Path | None:
    base = os.environ.get("QPRUNER_DATA")
    path = (
        Path(base) / "zeroshot"
        if base
        else Path(__file__).resolve().parents[2] / "shared" / "data" / "zeroshot"
    )
    return path if path.is_dir() else None


@pytest.mark.slow
def test_real_files_load_with_their_item_counts():
    data = _shared_zeroshot()
    if data is None:
        pytest.skip("../shared/data/zeroshot not found")
    counts = {
        "qp_boolq": 3270,
        "qp_piqa": 1838,
        "qp_arc_easy": 2376,
        "qp_arc_challenge": 1172,
        "qp_winogrande": 1267,
        "qp_openbookqa": 500,
        "qp_copa": 100,
        "qp_lambada": 5153,
    }
    with _quiet(progress=False):
        loaded = load_tasks(task_manager(list(counts), local_dirs(None), data), list(counts))
    assert {name: len(task.eval_docs) for name, task in loaded["tasks"].items()} == counts
    got = _requests(["qp_boolq", "qp_copa"], data)
    assert got["qp_boolq"][0][0].endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )
    assert not got["qp_boolq"][0][0].startswith("Passage:")
    assert got["qp_copa"][0] == ("The man turned on the faucet therefore", "  the toilet filled with water.")


def test_eval_config_checks_tasks_against_its_task_data(task_data):
    """What evaluate_model and qpruner run check before loading a model reads the same folder."""
    from qpruner.eval.evaluate import EvalConfig

    assert EvalConfig(tasks=["qp_copa"], task_data=str(task_data)).check() == ["qp_copa"]
    with pytest.raises(QPrunerError, match="--task-data"):
        EvalConfig(tasks=["qp_copa"]).check()
