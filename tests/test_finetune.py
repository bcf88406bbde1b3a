"""Recovery end to end: data, resumable training, saved artifacts, CLI, predicted vs measured memory."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, make_text, make_tokenizer
from peft import PeftModel
from safetensors.torch import load_file

import qpruner.lora.train as train_mod
from qpruner import Plan, TrainConfig, finetune, load_model, load_pruned
from qpruner.cli import main
from qpruner.data_sources import open_dataset
from qpruner.errors import CheckpointError, QPrunerError
from qpruner.lora.data import IGNORE, BatchSchedule, load_examples
from qpruner.prune import PruneConfig, prune_model


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, text_file):
    """A pruned tiny GQA model (layers 1-2 at 50 %), saved in qpruner's format."""
    from qpruner.checkpoint import save_pruned
    from qpruner.prune.calibration import calibration_samples

    tok = make_tokenizer()
    model = make_model("gqa", layers=4)
    cfg = PruneConfig(ratio=0.5, layer_start=1, layer_end=3, n_samples=4, seq_len=32)
    prune_model(model, cfg, calibration_samples(text_file, tok, 4, 32, 0), progress=False)
    path = tmp_path_factory.mktemp("pruned") / "p"
    save_pruned(model, path, tok)
    return path


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.txt"
    path.write_text(make_text(300, seed=3))
    return path


def small(**kw) -> TrainConfig:
    base = dict(steps=4, batch_size=4, micro_batch=2, lr=5e-3, warmup_steps=1, cutoff_len=24, save_every=2)
    return TrainConfig(**{**base, **kw})


def mixed(n=4) -> Plan:
    plan = Plan.uniform(n, "nf4", rank=4, dtype="fp32")
    plan.layers[0].weight_format = "int8"
    plan.layers[1].weight_format = "hqq3"
    plan.layers[2].module_ranks = {"mlp.down_proj": 8}
    return plan


def test_alpaca_data(tmp_path):
    tok = make_tokenizer()
    records = [
        {"instruction": "the cat", "input": "", "output": "runs near the river"},
        {"instruction": "a dog", "input": "the bird", "output": "eats fish"},
    ]
    (tmp_path / "a.json").write_text(json.dumps(records))
    full = load_examples(tmp_path / "a.json", tok, cutoff_len=512)
    outputs_only = load_examples(tmp_path / "a.json", tok, cutoff_len=512, train_on_inputs=False)
    assert len(full) == 2 and full[0].ids[-1] == tok.eos_token_id
    assert full[0].labels == full[0].ids
    scored = [i for i, lbl in zip(outputs_only[0].ids, outputs_only[0].labels, strict=True) if lbl != IGNORE]
    assert tok.decode(scored).split()[:4] == ["runs", "near", "the", "river"]
    assert len(load_examples(tmp_path / "a.json", tok, cutoff_len=8)[0].ids) == 8
    (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(QPrunerError, match="record 0 lacks 'instruction'"):
        load_examples(tmp_path / "bad.json", tok)
    with pytest.raises(QPrunerError, match="training data not found"):
        load_examples(tmp_path / "missing.txt", tok)


def test_batches_are_a_function_of_the_step(train_file):
    ex = load_examples(train_file, make_tokenizer(), cutoff_len=16)
    a, b = BatchSchedule(ex, 3, 0, seed=1), BatchSchedule(ex, 3, 0, seed=1)
    for k in (0, 5, a.per_epoch + 2, 3 * a.per_epoch):  # any order, across epochs
        assert torch.equal(a.batch(k)["input_ids"], b.batch(k)["input_ids"])
    assert not torch.equal(a.batch(0)["input_ids"], a.batch(a.per_epoch)["input_ids"])  # reshuffled


def test_finetune_artifacts_and_memory(pruned_dir, train_file, tmp_path):
    out = tmp_path / "rec"
    res = finetune(pruned_dir, train_file, out, plan=mixed(), train_config=small(), progress=False)
    assert res.train.losses[-1] < res.train.losses[0]
    for k in ("packed_weights", "dense_weights", "lora_params", "optimizer_states"):
        assert res.measured.components[k] == res.predicted.components[k], k
    assert res.measured.components["step_peak"] > 0
    saved = Plan.load(out / "plan.json")
    assert saved.memory["measured"]["packed_weights"] == res.predicted.components["packed_weights"]
    assert [lp.prune_ratio > 0 for lp in saved.layers] == [False, True, True, False]
    # adapter loads with plain peft on top of the pruned model, ranks preserved
    base = load_pruned(pruned_dir)
    peft_model = PeftModel.from_pretrained(base, out / "adapter")
    assert peft_model.base_model.model.model.layers[2].mlp.down_proj.r["default"] == 8
    assert peft_model.base_model.model.model.layers[0].mlp.up_proj.r["default"] == 4
    # recovered dir = quantized base + adapter; merged export = dense weights
    ids = torch.randint(0, base.config.vocab_size, (1, 20))
    recovered, merged = load_model(out), load_model(out / "merged")
    with torch.no_grad():
        a, b = recovered(ids).logits, merged(ids).logits
    assert ((a - b).norm() / a.norm()).item() < 0.05  # int8 layer: activations quantized too
    assert json.loads((out / "recovery.json").read_text())["trainable_params"] == res.trainable_params


def test_resume_reproduces_an_uninterrupted_run(pruned_dir, train_file, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    finetune(
        pruned_dir, train_file, straight, plan=mixed(), train_config=small(), export=False, progress=False
    )

    crashed = tmp_path / "crashed"
    real_save = train_mod.save_checkpoint

    def save_then_die(ckpt_dir, step, *args, **kwargs):
        path = real_save(ckpt_dir, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt  # the machine goes away right after a checkpoint
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(
            pruned_dir, train_file, crashed, plan=mixed(), train_config=small(), export=False, progress=False
        )
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert not (crashed / "adapter").exists()
    with pytest.raises(QPrunerError, match="pass --resume"):
        finetune(
            pruned_dir, train_file, crashed, plan=mixed(), train_config=small(), export=False, progress=False
        )
    res = finetune(
        pruned_dir,
        train_file,
        crashed,
        plan=mixed(),
        train_config=small(),
        resume=True,
        export=False,
        progress=False,
    )
    assert res.train.resumed_from == 2 and len(res.train.losses) == 2
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(crashed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming with other settings is refused, not silently mixed
    with pytest.raises(CheckpointError, match="other settings"):
        finetune(
            pruned_dir,
            train_file,
            crashed,
            plan=mixed(),
            train_config=small(lr=1e-3),
            resume=True,
            progress=False,
        )


def test_plan_that_does_not_fit_fails_before_loading(pruned_dir, train_file, tmp_path):
    with pytest.raises(QPrunerError, match="plan has 6 layers but the model has 4"):
        finetune(
            pruned_dir,
            train_file,
            tmp_path / "x",
            plan=Plan.uniform(6, "nf4", dtype="fp32"),
            train_config=small(),
        )
    plan = mixed()
    plan.layers[3].lora_rank = 0
    with pytest.raises(QPrunerError, match=r"layers\[3\]\.lora_rank"):
        finetune(pruned_dir, train_file, tmp_path / "x", plan=plan, train_config=small())
    assert not (tmp_path / "x").exists()


def test_cli_end_to_end(pruned_dir, train_file, tmp_path, capsys):
    plan_file = tmp_path / "plan.json"
    assert (
        main(["plan", "--model", str(pruned_dir), "--bits", "4", "--rank", "4", "--out", str(plan_file)]) == 0
    )
    shown = capsys.readouterr().out
    assert "packed weights" in shown and "nf4" in shown
    plan = Plan.load(plan_file)
    plan.layers[1].weight_format = "hqq2"
    plan.layers[2].lora_rank = 2
    plan.save(plan_file)
    out = tmp_path / "rec"
    args = ["finetune", "--model", str(pruned_dir), "--data", str(train_file), "--out", str(out)]
    args += ["--plan", str(plan_file), "--steps", "3", "--batch-size", "2", "--micro-batch", "2"]
    args += ["--cutoff-len", "24", "--lr", "1e-3", "--loftq", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "trained 3 steps" in shown and "predicted" in shown and "measured" in shown and "hqq2" in shown
    assert (
        main(["eval", "--model", str(out), "--ppl", str(train_file), "--max-tokens", "200", "--no-progress"])
        == 0
    )
    assert "perplexity" in capsys.readouterr().out
    assert main(args) == 1  # exists, no --resume
    assert "pass --resume" in capsys.readouterr().err
    assert (
        main(
            [
                "finetune",
                "--model",
                str(pruned_dir),
                "--data",
                str(train_file),
                "--out",
                str(tmp_path / "b"),
                "--bits",
                "5",
            ]
        )
        == 1
    )
    assert "no format for 5-bit" in capsys.readouterr().err


def test_gradient_checkpointing_trains_the_same_and_is_priced_lower(train_file, tmp_path):
    from qpruner import apply_plan
    from qpruner.lora.train import train
    from qpruner.memory import estimate

    examples = load_examples(train_file, make_tokenizer(), cutoff_len=24)
    losses = []
    for gc in (False, True):
        torch.manual_seed(0)
        model = apply_plan(make_model("gqa", layers=4), Plan.uniform(4, "nf4", rank=4, dtype="fp32"))
        cfg = small(steps=3, gradient_checkpointing=gc)
        losses.append(train(model, examples, cfg, tmp_path / f"ck{gc}", 3, progress=False).losses)
    assert losses[0] == losses[1]  # recomputation replays the same dropout masks
    config = make_model("gqa", layers=4).config
    plan = Plan.uniform(4, "nf4", rank=4, dtype="fp32")
    with_gc = estimate(config, plan, 8, 128, gradient_checkpointing=True).components["step_peak"]
    assert with_gc < estimate(config, plan, 8, 128).components["step_peak"]


def test_dataset_sources(tmp_path):
    """Saved datasets (what hf:NAME@SPLIT loads on a machine with a hub) work like local files."""
    import datasets

    tok = make_tokenizer()
    records = [{"instruction": "the cat", "input": "", "output": "runs near the river"}] * 3
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "alpaca"))
    from_dir = load_examples(tmp_path / "alpaca", tok, cutoff_len=512)
    (tmp_path / "a.json").write_text(json.dumps(records))
    assert [e.ids for e in from_dir] == [
        e.ids for e in load_examples(tmp_path / "a.json", tok, cutoff_len=512)
    ]
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": make_text(20)}])}).save_to_disk(
        str(tmp_path / "text")
    )
    assert len(load_examples(tmp_path / "text", tok, cutoff_len=16)) > 5
    datasets.Dataset.from_list([{"q": "x"}]).save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(QPrunerError, match="neither Alpaca columns nor 'text'"):
        load_examples(tmp_path / "odd", tok)


@pytest.mark.parametrize(
    ("source", "call"),
    [
        ("hf:yahma/alpaca-cleaned@train", ("yahma/alpaca-cleaned", None, "train")),
        (
            "hf:Salesforce/wikitext:wikitext-2-raw-v1@test",
            ("Salesforce/wikitext", "wikitext-2-raw-v1", "test"),
        ),
        ("hf:wikitext:wikitext-2-raw-v1", ("wikitext", "wikitext-2-raw-v1", "train")),
    ],
)
def test_hub_datasets_are_named_with_their_org(source, call, monkeypatch):
    """LLM-Pruner's recovery set is yahma/alpaca-cleaned: an org/name id must reach the hub whole
    (it was once split into name 'yahma' and config 'alpaca-cleaned')."""
    import datasets

    seen = []
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, config, split: seen.append((name, config, split))
    )
    open_dataset(source, "train")
    assert seen == [call]


def test_bad_hub_names_fail_before_any_work(tmp_path, monkeypatch):
    import datasets

    from qpruner.preflight import check_input

    with pytest.raises(QPrunerError, match="--train-data 'hf:a/b/c': a hub dataset is named"):
        check_input("hf:a/b/c", flag="--train-data")

    def offline(*a, **k):
        raise ConnectionError("no hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(QPrunerError, match="no hub \\(a config goes after ':'"):
        open_dataset("hf:wikitext/wikitext-2-raw-v1", "test")


@pytest.mark.parametrize("fmt", ["nf4", "int8", "hqq3", "bf16"])
def test_bf16_plans_train_with_float32_adapters(fmt, train_file, tmp_path):
    """The GPU default (bf16 base and compute), run on CPU: trains, priced exactly, fp32 LoRA."""
    from qpruner import apply_plan
    from qpruner.lora.train import train
    from qpruner.memory import LORA_BYTES, estimate, held_memory

    plan = Plan.uniform(4, fmt, rank=4, dtype="bf16")
    model = make_model("gqa", layers=4)
    predicted = estimate(model.config, plan, 2, 24)
    peft_model = apply_plan(model, plan)
    examples = load_examples(train_file, make_tokenizer(), cutoff_len=24)
    res = train(peft_model, examples, small(steps=2), tmp_path / "ck", 3, progress=False)
    assert all(torch.isfinite(torch.tensor(res.losses)))
    held = held_memory(peft_model)
    for k in ("packed_weights", "dense_weights", "lora_params"):
        assert held[k] == predicted.components[k], k
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    assert {p.dtype for p in lora} == {torch.float32} and LORA_BYTES == 4
    assert peft_model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
