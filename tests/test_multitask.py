import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from adaptertx.environment import resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.merging import MergeOptions, merge
from adaptertx.modeling import build_adapter_model
from adaptertx.settings import TRAIN
from adaptertx.tasks import get_task
from adaptertx.training import train_multitask
from adaptertx.training.sampling import epoch_plan, sampling_probabilities, task_schedule

TINY = dict(quant="none", max_examples=16, batch_size=4, max_length=32, lr=1e-2, epochs=1)
IDS = torch.tensor([[0, 3293, 83, 2, 2, 10, 3034, 2], [0, 47, 1294, 2, 2, 7, 2, 1]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_xlmr_dir):
    """A finished multi-task run over mrpc (classification) and copa (multiple choice)."""
    out = tmp_path_factory.mktemp("mt") / "mt"
    result = train_multitask(["mrpc", "copa"], out, model=tiny_xlmr_dir, target="mrpc", max_steps=3,
                             progress=False, **TINY)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_xlmr_dir):
    """Two finished single-task runs (mrpc, copa) on one base."""
    from adaptertx.training import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    for task in ("mrpc", "copa"):
        train(TrainConfig(task=task, model=tiny_xlmr_dir, out=str(root / task), max_steps=1, **TINY), progress=False)
    return {task: root / task for task in ("mrpc", "copa")}


# ------------------------------------------------------------------------------ sampling


def test_sampling_probabilities_match_hand_computed_values():
    assert sampling_probabilities([100, 400], "proportional") == pytest.approx([0.2, 0.8])
    assert sampling_probabilities([100, 400, 7], "uniform") == pytest.approx([1 / 3] * 3)
    # T = 2: sqrt(100) = 10, sqrt(400) = 20.
    assert sampling_probabilities([100, 400], "temperature", 2.0) == pytest.approx([1 / 3, 2 / 3])
    # T = 3 on (8, 64, 27): 2, 4, 3.
    assert sampling_probabilities([8, 64, 27], "temperature", 3.0) == pytest.approx([2 / 9, 4 / 9, 3 / 9])
    assert sampling_probabilities([3, 5, 11], "temperature", 1.0) == pytest.approx(
        sampling_probabilities([3, 5, 11], "proportional"))
    # A tiny temperature puts all mass on the largest task without overflowing; a huge one is uniform.
    assert sampling_probabilities([10, 10_000_000], "temperature", 0.01) == pytest.approx([0.0, 1.0])
    assert sampling_probabilities([10, 10_000_000], "temperature", 1e9) == pytest.approx([0.5, 0.5])
    for args, message in [(([10], "nosuch"), "unknown sampling"), (([10, 20], "temperature", 0.0), "temperature must"),
                          (([10, 20], "temperature", -1.0), "temperature must"), (([], "uniform"), "no tasks"),
                          (([10, 0], "proportional"), "at least one training example")]:
        with pytest.raises(AdaptertxError, match=message):
            sampling_probabilities(*args)


def test_task_schedule_is_deterministic_and_follows_the_probabilities():
    probs = [0.2, 0.5, 0.3]
    a = task_schedule(probs, 50, seed=3, epoch=0)
    assert a == task_schedule(probs, 50, seed=3, epoch=0)
    assert a != task_schedule(probs, 50, seed=4, epoch=0) and a != task_schedule(probs, 50, seed=3, epoch=1)
    long = torch.tensor(task_schedule(probs, 20_000, seed=0, epoch=0))
    freq = torch.bincount(long, minlength=3).double() / len(long)
    torch.testing.assert_close(freq, torch.tensor(probs, dtype=torch.float64), rtol=0, atol=0.015)
    assert set(task_schedule([0.0, 1.0], 100, seed=0, epoch=0)) == {1}


def test_epoch_plan_covers_each_task_and_splits_rows_across_processes():
    rows, probs = [10, 7], [0.5, 0.5]
    plan = epoch_plan(rows, 4, probs, seed=1, epoch=0)
    assert len(plan) == 3 + 2  # ceil(10 / 4) + ceil(7 / 4)
    assert [t for t, _ in plan] == task_schedule(probs, 5, seed=1, epoch=0)
    assert all(t1 == t2 and torch.equal(i1, i2)
               for (t1, i1), (t2, i2) in zip(plan, epoch_plan(rows, 4, probs, 1, 0), strict=True))
    # Every batch has rows of its own task only, at most batch_size of them; a task's first pass
    # visits each of its rows once.
    for t, idx in plan:
        assert 0 < len(idx) <= 4 and int(idx.max()) < rows[t]
    first = {t: [] for t in range(2)}
    for t, idx in epoch_plan([12, 12], 4, [1.0, 0.0], seed=0, epoch=0):
        first[t].extend(idx.tolist())
    assert sorted(first[0][:12]) == list(range(12)) and first[1] == []
    # Two processes: the same task sequence, disjoint rows within a pass.
    r0 = epoch_plan([16, 16], 2, [0.5, 0.5], seed=2, epoch=0, rank=0, world=2)
    r1 = epoch_plan([16, 16], 2, [0.5, 0.5], seed=2, epoch=0, rank=1, world=2)
    assert [t for t, _ in r0] == [t for t, _ in r1] and len(r0) == 8 and len(set(t for t, _ in r0)) == 2
    for (_, a), (_, b) in zip(r0, r1, strict=True):
        assert not set(a.tolist()) & set(b.tolist())


# ------------------------------------------------------------------------------ model and heads


def test_each_head_gets_gradient_only_from_its_tasks_batches(tiny_xlmr_dir, tmp_path):
    from adaptertx.training.data import encode

    tasks = [get_task("mrpc"), get_task("copa")]
    built = build_adapter_model(tiny_xlmr_dir, tasks, quant="none", name="multitask")
    model = built.model
    assert model.active_adapters is not None and "multitask" in str(model.active_adapters)
    rows = [{"id": "a", "text_a": "A cat sat.", "text_b": "A cat was sitting.", "label": "1"},
            {"id": "b", "text_a": "It rains.", "text_b": "The sun shines.", "label": "0"}]
    batch = encode(tasks[0], rows, built.tokenizer, 32, "training").batch(torch.arange(2))
    model(**batch, head="mrpc").loss.backward()
    heads = {name: list(model.heads[name].parameters()) for name in ("mrpc", "copa")}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads["mrpc"])
    assert all(p.grad is None for p in heads["copa"])
    adapter = [p for n, p in model.named_parameters() if ".adapters.multitask." in n]
    assert adapter and all(p.requires_grad for p in adapter) and any(p.grad.abs().sum() > 0 for p in adapter)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".adapters." not in n and "heads." not in n)
    with pytest.raises(AdaptertxError, match="an adapter for several tasks needs a name"):
        build_adapter_model(tiny_xlmr_dir, tasks, quant="none")

    # In the training loop: after one optimiser step only the drawn task's head has moved.
    init = {n: p.detach().clone()
            for n, p in build_adapter_model(tiny_xlmr_dir, tasks, quant="none", name="multitask").model
            .named_parameters() if n.startswith("heads.")}
    result = train_multitask(["mrpc", "copa"], tmp_path / "one", model=tiny_xlmr_dir, max_steps=1, progress=False,
                             **TINY)
    first = json.loads((result.out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and len(first["tasks"]) == 1
    drawn = first["tasks"][0]
    for name in ("mrpc", "copa"):
        saved = load_file(str(result.out / "heads" / name / "model_head.safetensors"))
        same = all(torch.equal(v, init[k]) for k, v in saved.items())
        assert same == (name != drawn), name


# ------------------------------------------------------------------------------ output folder


def test_output_layout_loads_in_plain_adapters_with_the_trained_logits(trained, tiny_xlmr_dir):
    from adapters import AutoAdapterModel

    from adaptertx.modeling import load_trainable_state

    out = trained.out
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"]
    for task in ("mrpc", "copa"):
        assert sorted(p.name for p in (out / "heads" / task).iterdir()) == ["head_config.json",
                                                                             "model_head.safetensors"]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    run = json.loads((out / "run.json").read_text())
    recipe = json.loads((out / "recipe.json").read_text())
    assert run["status"] == "finished" and run["fingerprint"] == recipe["fingerprint"]
    assert run["device"] == recipe["device"] == str(resolve_device("auto"))
    for task in ("mrpc", "copa"):  # each task's test score against its majority baseline, paired
        versus = run["test_vs_majority"][task]
        assert versus["difference"] == pytest.approx(
            run["test"][task]["accuracy"] - run["test_majority_baseline"][task])
        assert versus["low"] <= versus["difference"] <= versus["high"]
    assert recipe["method"] == "multitask" and recipe["tasks"] == ["mrpc", "copa"] and recipe["target"] == "mrpc"
    assert recipe["sampling"] == "proportional" and sum(recipe["probabilities"].values()) == pytest.approx(1)
    assert recipe["heads"] == {"mrpc": "heads/mrpc", "copa": "heads/copa"} and recipe["inputs"] == []
    assert set(recipe["validation"]) == set(recipe["test"]) == {"mrpc", "copa"}
    assert recipe["mean_validation"] == pytest.approx(
        (recipe["validation"]["mrpc"]["accuracy"] + recipe["validation"]["copa"]["accuracy"]) / 2)
    assert recipe["train"]["max_steps"] == 3 and "adaptertx" in recipe["versions"]
    assert recipe["steps"] == 3 and sum(recipe["batches"].values()) == 3
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2, 3]

    # The trained model: the same construction with the best checkpoint's tensors.
    ref = build_adapter_model(tiny_xlmr_dir, [get_task("mrpc"), get_task("copa")], quant="none", name="multitask").model
    load_trainable_state(ref, load_file(str(out / "checkpoints" / "best.safetensors")))
    ref.eval()
    plain = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    assert plain.load_adapter(str(out / "adapter"), use_safetensors=True) == "multitask"
    assert plain.load_head(str(out / "heads" / "mrpc"), use_safetensors=True)[1] == "mrpc"
    assert plain.load_head(str(out / "heads" / "copa"), use_safetensors=True)[1] == "copa"
    plain.set_active_adapters("multitask")
    plain.eval()
    choices = dict(input_ids=IDS.unsqueeze(0), attention_mask=MASK.unsqueeze(0))  # (1, 2 choices, 8)
    with torch.no_grad():
        mrpc = ref(input_ids=IDS, attention_mask=MASK, head="mrpc").logits
        copa = ref(**choices, head="copa").logits
        torch.testing.assert_close(plain(input_ids=IDS, attention_mask=MASK, head="mrpc").logits, mrpc)
        torch.testing.assert_close(plain(input_ids=IDS, attention_mask=MASK, head="multitask").logits, mrpc)
        torch.testing.assert_close(plain(**choices, head="copa").logits, copa)
    assert mrpc.shape == (2, 2) and copa.shape == (1, 2)


def test_finished_output_is_not_overwritten(trained, tiny_xlmr_dir):
    before = (trained.out / "adapter" / "adapter.safetensors").read_bytes()
    with pytest.raises(AdaptertxError, match="already holds a merged model; pass --overwrite"):
        train_multitask(["mrpc", "copa"], trained.out, model=tiny_xlmr_dir, max_steps=3, progress=False, **TINY)
    with pytest.raises(AdaptertxError, match="finished merge; nothing to resume"):
        train_multitask(["mrpc", "copa"], trained.out, model=tiny_xlmr_dir, target="mrpc", max_steps=3,
                        resume=True, progress=False, **TINY)
    assert (trained.out / "adapter" / "adapter.safetensors").read_bytes() == before


def test_resume_reaches_the_same_result(tmp_path, tiny_xlmr_dir):
    kw = dict(TINY, model=tiny_xlmr_dir, epochs=2, max_steps=10, save_every=3, lr=1e-3, sampling="uniform",
              progress=False)
    full = train_multitask(["mrpc", "copa"], tmp_path / "a", **kw)

    def interrupt(step, record):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_multitask(["mrpc", "copa"], tmp_path / "b", on_step=interrupt, **kw)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["status"] == "running"
    assert not (tmp_path / "b" / "recipe.json").exists()
    with pytest.raises(AdaptertxError, match=r"different config \(differs in: lr\)"):
        train_multitask(["mrpc", "copa"], tmp_path / "b", resume=True, **dict(kw, lr=5e-4))
    resumed = train_multitask(["mrpc", "copa"], tmp_path / "b", **kw)  # the same call continues it
    assert resumed.steps == full.steps == 10
    for rel in ("adapter/adapter.safetensors", "heads/mrpc/model_head.safetensors",
                "heads/copa/model_head.safetensors"):
        a, b = load_file(str(full.out / rel)), load_file(str(resumed.out / rel))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    log_a = [json.loads(line) for line in (full.out / "metrics.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (resumed.out / "metrics.jsonl").read_text().splitlines()]
    assert [(rec["step"], rec.get("tasks")) for rec in log_a] == [(rec["step"], rec.get("tasks")) for rec in log_b]
    assert resumed.validation.keys() == full.validation.keys()
    assert all(resumed.validation[t] == pytest.approx(full.validation[t]) for t in full.validation)
    assert json.loads((resumed.out / "recipe.json").read_text())["batches"] == full.recipe["batches"]


# ------------------------------------------------------------------------------ from runs, bad input, CLI


def test_merge_of_runs_trains_on_their_tasks_and_base(runs, tmp_path, monkeypatch):
    import adaptertx.training.multitask as multitask_module
    from adaptertx.modeling import trainable_state

    build, initial = multitask_module.build_adapter_model, []

    def keep_initial(*args, **kwargs):  # the multi-task model's tensors before its first step
        built = build(*args, **kwargs)
        initial.append({k: v for k, v in trainable_state(built.model).items() if ".adapters.multitask." in k})
        return built

    monkeypatch.setattr(multitask_module, "build_adapter_model", keep_initial)
    opts = MergeOptions(sampling="temperature", temperature=3.0, progress=False,
                        settings=TRAIN.replace(max_steps=2, max_examples=16, batch_size=4, max_length=32))
    result = merge("multitask", [runs["mrpc"], runs["copa"]], tmp_path / "mt", opts)
    recipe = result.recipe
    run = json.loads((runs["mrpc"] / "run.json").read_text())
    assert recipe["tasks"] == ["mrpc", "copa"] and recipe["fingerprint"] == run["fingerprint"]
    assert [i["task"] for i in recipe["inputs"]] == ["mrpc", "copa"]
    assert recipe["temperature"] == 3.0 and recipe["train"]["quant"] == "none"
    assert recipe["train"]["adapter_seed"] == run["config"]["adapter_seed"]
    # The multi-task adapter starts from the runs' shared initialisation: value for value the
    # adapter of a single-task model built with the runs' adapter seed.
    from adaptertx.merging.strategies import initial_adapter_state
    from adaptertx.rundir import load_run

    (multi_init,) = initial
    single = build_adapter_model(run["config"]["model"], get_task("mrpc"), quant="none",
                                 adapter_seed=run["config"]["adapter_seed"]).model
    single_init = {k.replace(".adapters.mrpc.", ".adapters.multitask."): v
                   for k, v in trainable_state(single).items() if ".adapters.mrpc." in k}
    assert multi_init and multi_init.keys() == single_init.keys()
    for key, value in single_init.items():
        torch.testing.assert_close(multi_init[key], value, rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")
    recreated = initial_adapter_state(load_run(runs["mrpc"]), "multitask")
    saved = load_file(str(result.out / "adapter" / "adapter.safetensors"))
    assert recreated.keys() == multi_init.keys() == saved.keys()
    assert all(torch.equal(recreated[k], multi_init[k]) for k in multi_init)
    other_seed = build_adapter_model(run["config"]["model"], get_task("mrpc"), quant="none",
                                     adapter_seed=run["config"]["adapter_seed"] + 1).model
    assert any(not torch.equal(v, single_init[k.replace(".adapters.mrpc.", ".adapters.multitask.")])
               for k, v in trainable_state(other_seed).items() if ".adapters.mrpc." in k)
    # One run: returned unchanged, like every method.
    one = merge("multitask", [runs["copa"]], tmp_path / "one")
    assert (one.out / "adapter" / "adapter.safetensors").read_bytes() == \
        (runs["copa"] / "adapter" / "adapter.safetensors").read_bytes()


def edited_copy(src, dest, **fields):
    shutil.copytree(src, dest)
    body = json.loads((dest / "run.json").read_text())
    body.update(fields)
    (dest / "run.json").write_text(json.dumps(body))
    return dest


def test_bad_input_is_a_clear_error_and_nothing_is_written(runs, tmp_path, tiny_xlmr_dir):
    other_base = edited_copy(runs["copa"], tmp_path / "other_base", fingerprint="0123456789abcdef")
    twin = edited_copy(runs["mrpc"], tmp_path / "twin")
    direct = [
        (dict(tasks=[]), "no tasks to train"),
        (dict(tasks=["mrpc", "nosuch"]), "unknown task 'nosuch'"),
        (dict(tasks=["mrpc", "MRPC"]), "task 'mrpc' is given twice"),
        (dict(tasks=["mrpc", "tatoeba"]), "retrieval task: adapters are trained for"),
        (dict(tasks=["mrpc", "mnli"]), "task 'mnli' has no bundled English data"),
        (dict(tasks="mrpc,copa"), "tasks is a list of task names"),
        (dict(tasks=["mrpc", "copa"], sampling="nosuch"), "unknown sampling 'nosuch'"),
        (dict(tasks=["mrpc", "copa"], sampling="temperature", temperature=0.0), "temperature must be a positive"),
        (dict(tasks=["mrpc", "copa"], target="siqa"), "--target 'siqa' is none of the tasks"),
        (dict(tasks=["mrpc", "copa"], batch_size=0), "batch_size must be at least 1"),
        (dict(tasks=["mrpc", "copa"], adapter="no_such_adapter"), "unknown adapter config 'no_such_adapter'"),
        (dict(tasks=["mrpc", "copa"], name="a.b"), "adapter name 'a.b'"),
        (dict(tasks=["mrpc", "copa"], steps=3), "unknown multi-task setting"),
    ]
    for kwargs, message in direct:
        kwargs = dict(dict(model=tiny_xlmr_dir, quant="none", progress=False), **kwargs)
        with pytest.raises(AdaptertxError, match=message):
            train_multitask(out=tmp_path / "merged", **kwargs)
        assert not (tmp_path / "merged").exists(), message
    via_merge = [
        (dict(run_dirs=[runs["mrpc"], other_base]), "different base models"),
        (dict(run_dirs=[runs["mrpc"], twin]), "task 'mrpc' is given twice"),
        (dict(run_dirs=[runs["mrpc"], runs["copa"]], options=MergeOptions(weights=[1, 2])), "--weights applies"),
        (dict(run_dirs=[runs["mrpc"]], options=MergeOptions(tasks=["mrpc", "copa"])), "not both"),
        (dict(run_dirs=[]), r"nothing to merge: give at least one run folder \(or --tasks\)"),
        (dict(run_dirs=[], options=MergeOptions(tasks=[])), "no tasks to train"),
        (dict(run_dirs=[], method="average", options=MergeOptions(tasks=["mrpc"])), "--tasks applies"),
    ]
    for kwargs, message in via_merge:
        kwargs = dict(dict(method="multitask"), **kwargs)
        with pytest.raises(AdaptertxError, match=message):
            merge(out=tmp_path / "merged", **kwargs)
        assert not (tmp_path / "merged").exists(), message
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(AdaptertxError, match="exists and is not empty; choose another --out or pass --overwrite"):
        merge("multitask", [runs["mrpc"], runs["copa"]], existing, MergeOptions(settings=TRAIN.replace(max_steps=1)))
    with pytest.raises(AdaptertxError, match="exists and is not empty"):
        merge("multitask", [], existing, MergeOptions(tasks=["mrpc", "copa"]))
    assert [p.name for p in existing.iterdir()] == ["keep.txt"] and (existing / "keep.txt").read_text() == "mine"


def test_cli_multitask(runs, tmp_path, tiny_xlmr_dir):
    from adaptertx.cli import main

    runner = CliRunner()
    budget = ["--max-steps", "2", "--max-examples", "16", "--batch-size", "4", "--max-length", "32"]
    ok = runner.invoke(main, ["merge", "--method", "multitask", "--tasks", "mrpc,copa", "--model", tiny_xlmr_dir,
                              "--quant", "none", "--sampling", "uniform", "--out", str(tmp_path / "mt"), *budget])
    assert ok.exit_code == 0, ok.output
    assert "one adapter trained on mrpc, copa" in ok.output and "mrpc: p=0.500" in ok.output
    assert json.loads((tmp_path / "mt" / "recipe.json").read_text())["sampling"] == "uniform"
    again = runner.invoke(main, ["merge", "--method", "multitask", "--tasks", "mrpc,copa", "--model", tiny_xlmr_dir,
                                 "--out", str(tmp_path / "mt"), *budget])
    assert again.exit_code == 1 and "pass --overwrite" in again.output
    from_runs = runner.invoke(main, ["merge", str(runs["mrpc"]), str(runs["copa"]), "--method", "multitask",
                                     "--sampling", "temperature", "--temperature", "2", "--target", "copa",
                                     "--out", str(tmp_path / "runs_mt"), *budget])
    assert from_runs.exit_code == 0, from_runs.output
    assert (tmp_path / "runs_mt" / "adapter" / "model_head.safetensors").is_file()
    usage = runner.invoke(main, ["merge", str(runs["mrpc"]), str(runs["copa"]), "--sampling", "uniform",
                                 "--out", str(tmp_path / "x")])
    assert usage.exit_code == 2 and "apply to --method multitask only" in usage.output
    unknown = runner.invoke(main, ["merge", "--method", "multitask", "--tasks", "mrpc,nosuch",
                                   "--out", str(tmp_path / "y")])
    assert unknown.exit_code == 1 and "unknown task 'nosuch'" in unknown.output and "Traceback" not in unknown.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
