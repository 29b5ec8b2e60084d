import json
import logging
import re
import string
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

import adaptertx.training.single as train_module
from adaptertx.environment import resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.tasks import get_task
from adaptertx.training import TrainConfig, scoring, train
from adaptertx.training.data import encode, english_splits


def config(tmp_path, task, model, **kw):
    base = dict(task=task, model=model, out=str(tmp_path / task), epochs=1, batch_size=4, max_examples=24,
                max_length=48, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def built_models(monkeypatch):
    """Every model ``train`` builds, as built; a finished run leaves its best adapter and head
    loaded in it."""
    build, models = train_module.build_adapter_model, []

    def keep_built(*args, **kwargs):
        models.append(build(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(train_module, "build_adapter_model", keep_built)
    return models


def _squad_normalize(text):
    """The SQuAD evaluation script's answer normalisation."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _squad_f1(pred, gold):
    p, g = _squad_normalize(pred).split(), _squad_normalize(gold).split()
    if not p or not g:
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    return 0.0 if same == 0 else 2 * same / (len(p) + len(g))


def _by_hand(task, preds, rows):
    """The task's validation scores (percent) counted directly from predictions and gold."""
    if task.family in ("classification", "multiple_choice"):
        return {"accuracy": 100 * sum(p == r["label"] for p, r in zip(preds, rows, strict=True)) / len(rows)}
    if task.metric == "accuracy":  # tagging: over words, not sentences
        words = [(p, g) for pt, r in zip(preds, rows, strict=True) for p, g in zip(pt, r["tags"], strict=True)]
        return {"accuracy": 100 * sum(p == g for p, g in words) / len(words)}
    if task.metric in ("entity_f1", "tag_f1"):  # tag_f1: XTREME's UD-POS F1, seqeval over the POS tags
        import warnings

        from seqeval.metrics import f1_score

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {"f1": 100 * f1_score([r["tags"] for r in rows], [list(p) for p in preds])}
    answers = [preds.get(r["id"], "") for r in rows]  # extractive QA: {id: answer text}
    golds = [[g for g in r["answers"]["text"] if _squad_normalize(g)] or [""] for r in rows]
    return {"f1": 100 * sum(max(_squad_f1(a, g) for g in gs) for a, gs in zip(answers, golds, strict=True)) / len(rows),
            "exact_match": 100 * sum(max(_squad_normalize(a) == _squad_normalize(g) for g in gs)
                                     for a, gs in zip(answers, golds, strict=True)) / len(rows)}


@pytest.mark.parametrize("task,metric", [("mrpc", "accuracy"), ("copa", "accuracy"), ("xquad", "f1"),
                                         ("conll03", "f1"), ("udpos", "f1")])
def test_each_family_trains_end_to_end(tmp_path, tiny_xlmr_dir, task, metric, built_models):
    max_length = 128 if task == "xquad" else 48  # room for the context after a 64-token question
    cfg = config(tmp_path, task, tiny_xlmr_dir, max_steps=3, max_length=max_length)
    result = train(cfg, progress=False)
    run = json.loads((result.out / "run.json").read_text())
    assert run["status"] == "finished" and run["steps"] == 3
    assert run["device"] == str(resolve_device("auto"))  # where it trained, beside the versions
    # One epoch, so the validation scores are the final adapter's: its predictions on the
    # validation rows, scored by hand.
    (built,) = built_models
    the_task = get_task(task)
    train_rows, dev_rows, test_rows = english_splits(the_task, cfg.max_examples)

    def predict(rows):  # as the run's evaluation does it
        features = encode(the_task, rows, built.tokenizer, max_length, "held-out")
        return scoring.predict(built, the_task, features, batch_size=2 * cfg.batch_size)

    want = _by_hand(the_task, predict(dev_rows), dev_rows)
    assert metric in run["validation"]
    assert {k: run["validation"][k] for k in want} == pytest.approx(want)
    assert run["trainable_params"] < 0.02 * run["total_params"] or task == "udpos"
    # A standard AdapterHub folder: adapter + head, safetensors only.
    files = sorted(p.name for p in (result.out / "adapter").iterdir())
    assert files == ["adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"]
    lines = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines if "loss" in rec] == [1, 2, 3]
    versus = run["test_vs_majority"]
    if test_rows is None:
        assert versus is None and run["test_majority_baseline"] is None
        return
    by_hand = _by_hand(the_task, predict(test_rows), test_rows)
    assert {k: run["test"][k] for k in by_hand} == pytest.approx(by_hand)
    # The floor: the training rows' most frequent label (or word tag; no answer for QA), scored on the test rows.
    if the_task.family == "extractive_qa":
        floor_preds = {r["id"]: "" for r in test_rows}
    else:
        counts = Counter(t for r in train_rows for t in (r["tags"] if the_task.family == "tagging" else [r["label"]]))
        majority = min(counts, key=lambda x: (-counts[x], str(x)))
        floor_preds = ([[majority] * len(r["tags"]) for r in test_rows] if the_task.family == "tagging"
                       else [majority] * len(test_rows))
    assert run["test_majority_baseline"] == pytest.approx(_by_hand(the_task, floor_preds, test_rows)[metric])
    assert versus["difference"] == pytest.approx(run["test"][metric] - run["test_majority_baseline"])
    assert versus["low"] <= versus["difference"] <= versus["high"] and versus["n"] == len(test_rows)


@pytest.mark.slow
def test_adapter_on_the_int8_default_model_memorises_a_batch(tmp_path, me5_dir):
    losses = []
    train(config(tmp_path, "mrpc", "me5-small", max_examples=8, batch_size=8, epochs=12, lr=3e-3, warmup=0.0),
          progress=False, on_step=lambda step, rec: losses.append(rec["loss"]))
    assert losses[0] > 0.5 and losses[-1] < 0.5 * losses[0]


def test_saved_adapter_loads_in_plain_adapters_with_same_outputs(tmp_path, tiny_xlmr_dir, built_models):
    from adapters import AutoAdapterModel

    result = train(config(tmp_path, "mrpc", tiny_xlmr_dir, max_steps=2, quant="none"), progress=False)
    (built,) = built_models
    trained = built.model.eval()  # holds the best adapter and head, as saved

    model = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    name = model.load_adapter(str(result.out / "adapter"), use_safetensors=True)
    model.set_active_adapters(name)
    model.eval()
    saved = load_file(str(result.out / "adapter" / "adapter.safetensors"))
    params = dict(model.named_parameters())
    for key, value in saved.items():
        torch.testing.assert_close(params[key], value)
    batch = built.tokenizer(["The cat sat on the mat.", "Stocks fell sharply on Monday."],
                            ["A cat was sitting on a mat.", "Markets rose on Tuesday morning."],
                            padding=True, return_tensors="pt")
    with torch.no_grad():
        reloaded_logits = model(**batch).logits
        trained_logits = trained(**batch).logits
        hidden = model.base_model(**batch).last_hidden_state
        bare_hidden = AutoAdapterModel.from_pretrained(tiny_xlmr_dir).base_model(**batch).last_hidden_state
    assert reloaded_logits.shape == (2, 2)
    torch.testing.assert_close(reloaded_logits, trained_logits)
    # The adapter changes the encoder's output, so the comparison above sees a lost adapter.
    assert not torch.allclose(hidden, bare_hidden, atol=1e-4)


def test_resume_reaches_the_same_result(tmp_path, tiny_xlmr_dir):
    kw = dict(max_steps=6, save_every=2, epochs=2, max_examples=16)
    full = train(config(tmp_path / "a", "mrpc", tiny_xlmr_dir, **kw), progress=False)

    def interrupt(step, record):
        if step == 3:
            raise KeyboardInterrupt

    cfg = config(tmp_path / "b", "mrpc", tiny_xlmr_dir, **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, on_step=interrupt)
    assert json.loads((tmp_path / "b" / "mrpc" / "run.json").read_text())["status"] == "running"
    # The same command again continues from the last checkpoint (--resume says so explicitly).
    resumed = train(cfg, progress=False)
    a = load_file(str(full.out / "adapter" / "adapter.safetensors"))
    b = load_file(str(resumed.out / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    log_a = [json.loads(line) for line in (full.out / "metrics.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (resumed.out / "metrics.jsonl").read_text().splitlines()]
    assert [rec.get("step") for rec in log_a] == [rec.get("step") for rec in log_b]
    assert resumed.validation == pytest.approx(full.validation)


def test_finished_runs_are_not_overwritten(tmp_path, tiny_xlmr_dir):
    cfg = config(tmp_path, "copa", tiny_xlmr_dir, max_steps=1)
    train(cfg, progress=False)
    before = (tmp_path / "copa" / "adapter" / "adapter.safetensors").read_bytes()
    with pytest.raises(AdaptertxError, match="already holds a finished run; pass --overwrite"):
        train(cfg, progress=False)
    with pytest.raises(AdaptertxError, match="holds a finished run; nothing to resume"):
        train(cfg, resume=True, progress=False)
    assert (tmp_path / "copa" / "adapter" / "adapter.safetensors").read_bytes() == before
    train(cfg, overwrite=True, progress=False)


def test_resume_refuses_other_configs_and_damaged_checkpoints(tmp_path, tiny_xlmr_dir):
    cfg = config(tmp_path, "mrpc", tiny_xlmr_dir, max_steps=4, save_every=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, on_step=lambda s, r: (_ for _ in ()).throw(KeyboardInterrupt) if s == 2 else None)
    other = config(tmp_path, "mrpc", tiny_xlmr_dir, max_steps=4, save_every=1, lr=5e-4)
    with pytest.raises(AdaptertxError, match=r"different config \(differs in: lr\)"):
        train(other, resume=True, progress=False)
    state = tmp_path / "mrpc" / "checkpoints" / "last.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(AdaptertxError, match="checkpoint in .* is damaged"):
        train(cfg, resume=True, progress=False)


@pytest.mark.parametrize("kwargs,message", [
    (dict(task="tatoeba"), "retrieval task: adapters are trained for"),
    (dict(task="mnli"), "task 'mnli' has no bundled English data"),
    (dict(task="nosuch"), "unknown task 'nosuch'"),
    (dict(task="mrpc", adapter="no_such_adapter"), "unknown adapter config 'no_such_adapter'"),
    (dict(task="mrpc", quant="int4"), "unknown quantisation 'int4'"),
    (dict(task="mrpc", batch_size=0), "batch_size must be at least 1"),
])
def test_bad_input_is_a_clear_error(tmp_path, tiny_xlmr_dir, kwargs, message):
    with pytest.raises(AdaptertxError, match=message):
        train(config(tmp_path, model=tiny_xlmr_dir, **kwargs), progress=False)


def test_long_inputs_are_truncated_with_a_warning(tmp_path, tiny_xlmr_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="adaptertx.training.data"):
        train(config(tmp_path, "mrpc", tiny_xlmr_dir, max_steps=1, max_length=12), progress=False)
    assert "were longer than 12 tokens and were truncated" in caplog.text


def test_lora_trains_on_the_int8_base(tmp_path, tiny_xlmr_dir):
    result = train(config(tmp_path, "mrpc", tiny_xlmr_dir, max_steps=2, adapter="lora"), progress=False)
    saved = load_file(str(result.out / "adapter" / "adapter.safetensors"))
    assert any("lora_A" in k for k in saved)


def test_summarize_runs_lists_each_task_of_a_multitask_run(tmp_path):
    import json

    from adaptertx.rundir import summarize_runs

    (tmp_path / "mt").mkdir()
    (tmp_path / "mt" / "run.json").write_text(json.dumps({
        "method": "multitask", "status": "finished", "steps": 30, "seconds": 12.0,
        "config": {"tasks": ["siqa", "mrpc"]},
        "validation": {"siqa": {"accuracy": 40.5}, "mrpc": {"accuracy": 68.0}},
        "test": {"siqa": {"accuracy": 38.0}, "mrpc": {"accuracy": 65.0}},
        "test_majority_baseline": {"siqa": 33.9, "mrpc": 66.5}}))
    rows = summarize_runs(tmp_path)
    assert [(r["run"], r["task"], r["validation"], r["test"], r["baseline"]) for r in rows] == [
        ("mt[siqa]", "siqa", 40.5, 38.0, 33.9), ("mt[mrpc]", "mrpc", 68.0, 65.0, 66.5)]


def test_runs_command_marks_runs_clearly_above_the_baseline(tmp_path):
    from click.testing import CliRunner

    from adaptertx.cli import main

    def run(name, test, baseline, low, high):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({
            "status": "finished", "steps": 10, "seconds": 1.0, "config": {"task": "mrpc"},
            "validation": {"accuracy": test}, "test": {"accuracy": test}, "test_majority_baseline": baseline,
            "test_vs_majority": {"difference": test - baseline, "low": low, "high": high, "n": 400}}))

    run("clear", 74.6, 65.8, 3.1, 14.5)
    run("unclear", 67.0, 65.8, -2.0, 4.4)
    (tmp_path / "old").mkdir()  # a run written before the interval was recorded
    (tmp_path / "old" / "run.json").write_text(json.dumps({
        "status": "finished", "config": {"task": "mrpc"}, "test": {"accuracy": 70.0}, "test_majority_baseline": 65.8}))
    result = CliRunner().invoke(main, ["runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[2:]}
    assert "+8.8 [+3.1, +14.5]" in lines["clear"] and lines["clear"].rstrip().endswith("yes")
    assert "+1.2 [-2.0, +4.4]" in lines["unclear"] and lines["unclear"].rstrip().endswith("no")
    assert "+4.2" in lines["old"] and lines["old"].rstrip().endswith("-")
