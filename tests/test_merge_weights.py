"""Merge weights chosen on English dev sets (``--weights dev``): real tiny runs, real evaluation."""

import json
import math
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from adaptertx.errors import AdaptertxError
from adaptertx.merging import MergeOptions, merge
from adaptertx.merging.dev_weights import MAX_GRID, best_candidate, dev_rows, grid_size, simplex_grid
from adaptertx.merging.strategies import adapter_state, average_state, initial_adapter_state, task_arithmetic_state
from adaptertx.rundir import load_run
from adaptertx.training import TrainConfig, train

DEV = 64  # dev examples per task; the runs validated on the same fixed subset (max_examples=64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_xlmr_dir):
    """Three finished tiny runs (mrpc, copa, siqa) on one base with one adapter seed, trained
    long enough (lr 5e-2, 40 steps) that their adapters change the predictions."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for task in ("mrpc", "copa", "siqa"):
        cfg = TrainConfig(task=task, model=tiny_xlmr_dir, out=str(root / task), epochs=50, batch_size=8,
                          max_examples=DEV, max_length=48, max_steps=40, lr=5e-2, quant="none")
        train(cfg, progress=False)
        out[task] = root / task
    return out


@pytest.fixture(scope="module")
def dev_merge(runs, tmp_path_factory):
    """The grid-searched average of the three runs."""
    out = tmp_path_factory.mktemp("merged") / "avg"
    return merge("average", [runs["mrpc"], runs["copa"], runs["siqa"]], out,
                 MergeOptions(weights="dev", dev_examples=DEV, progress=False))


def score_folder(folder, task_name, tiny_xlmr_dir):
    """The saved merged adapter with the task's saved head, evaluated from scratch on the task's dev subset."""
    from adaptertx.modeling import BuiltModel, load_base
    from adaptertx.tasks import get_task
    from adaptertx.training.data import encode
    from adaptertx.training.scoring import score_features

    task = get_task(task_name)
    model, tokenizer = load_base(tiny_xlmr_dir, "none")
    name = model.load_adapter(str(folder / "adapter"), with_head=False, use_safetensors=True)
    model.set_active_adapters(name)
    model.load_head(str(folder / "heads" / task_name), load_as="scored", use_safetensors=True)
    model.active_head = "scored"
    rows = dev_rows(task, DEV)
    features = encode(task, rows, tokenizer, 48, "dev")
    return score_features(BuiltModel(model, tokenizer, name, "", autocast=False), task, features, rows)["accuracy"]


def test_simplex_grid_has_the_combinatorial_count():
    for n, k in [(1, 4), (2, 4), (3, 4), (4, 4), (3, 1), (2, 10)]:
        points = simplex_grid(n, k)
        assert len(points) == grid_size(n, k) == math.comb(n + k - 1, n - 1)
        assert len({tuple(p) for p in points}) == len(points)
        assert all(len(p) == n and math.isclose(sum(p), 1.0) and all(round(w * k) == w * k for w in p) for p in points)
    assert grid_size(3, 4) == 15 and grid_size(4, 4) == 35 <= MAX_GRID < grid_size(5, 4) == 70
    assert best_candidate([{"weights": [1.0, 0.0], "mean": 5.0}, {"weights": [0.5, 0.5], "mean": 5.0},
                           {"weights": [0.0, 1.0], "mean": 4.0}])["weights"] == [0.5, 0.5]


def test_dev_weights_are_the_argmax_of_the_recorded_table(dev_merge, runs):
    recipe = json.loads((dev_merge.out / "recipe.json").read_text())
    assert recipe == json.loads(json.dumps(dev_merge.recipe))
    dev = recipe["dev"]
    assert recipe["weights_from"] == "dev" and recipe["weights_given"] is None
    assert dev["search"] == "grid" and dev["grid_step"] == 4 and dev["split"] == "validation"
    assert dev["tasks"] == ["mrpc", "copa", "siqa"] and dev["metrics"] == dict.fromkeys(dev["tasks"], "accuracy")
    assert dev["examples"] == {"mrpc": DEV, "copa": 43, "siqa": DEV}  # copa's English validation split has 43
    candidates = dev["candidates"]
    assert sorted(map(tuple, (c["weights"] for c in candidates))) == sorted(map(tuple, simplex_grid(3, 4)))
    assert len(candidates) == 15
    for c in candidates:
        assert set(c["scores"]) == set(dev["tasks"]) and c["mean"] == pytest.approx(sum(c["scores"].values()) / 3)
    assert len({c["mean"] for c in candidates}) > 1, "the adapters should matter on the dev sets"
    # The chosen weights: the best mean, ties broken towards uniform.
    top = max(c["mean"] for c in candidates)
    chosen = next(c for c in candidates if c["weights"] == recipe["weights"])
    assert chosen["mean"] == top == dev["chosen_mean"]
    uniform_gap = lambda w: sum((x - 1 / 3) ** 2 for x in w)  # noqa: E731
    assert all(uniform_gap(chosen["weights"]) <= uniform_gap(c["weights"]) for c in candidates if c["mean"] == top)
    assert [i["weight"] for i in recipe["inputs"]] == recipe["weights"]
    # A run alone (one-hot weights) scores what its own training run recorded on the same subset:
    # the search evaluates with train's per-epoch evaluation.
    for k, task in enumerate(dev["tasks"]):
        alone = next(c for c in candidates if c["weights"][k] == 1.0)
        validation = json.loads((runs[task] / "run.json").read_text())["validation"]["accuracy"]
        assert alone["scores"][task] == pytest.approx(validation, abs=1e-9)


def test_dev_merged_folder_is_the_chosen_average_and_reproduces_its_scores(dev_merge, runs, tiny_xlmr_dir):
    recipe = dev_merge.recipe
    inputs = [load_run(runs[t]) for t in ("mrpc", "copa", "siqa")]
    expected = average_state([adapter_state(i, dev_merge.name) for i in inputs], recipe["weights"])
    saved = load_file(str(dev_merge.out / "adapter" / "adapter.safetensors"))
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], v) for k, v in expected.items())
    chosen = next(c for c in recipe["dev"]["candidates"] if c["weights"] == recipe["weights"])
    for task in recipe["dev"]["tasks"]:
        assert score_folder(dev_merge.out, task, tiny_xlmr_dir) == pytest.approx(chosen["scores"][task], abs=1e-9)


def test_greedy_soup_and_auto_switch(runs, tmp_path):
    trio = [runs["mrpc"], runs["copa"], runs["siqa"]]
    # Step 1/9 would be C(11, 2) = 55 grid points > 50: auto searches a greedy soup.
    result = merge("average", trio, tmp_path / "soup", MergeOptions(weights="dev", grid_step=9, dev_examples=DEV,
                                                                   progress=False))
    dev = result.recipe["dev"]
    assert dev["search"] == "greedy_soup" and dev["grid_step"] is None
    candidates = dev["candidates"]
    singles = candidates[:3]
    assert [c["weights"] for c in singles] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    # Replay the recipe: runs by their own score, each kept when the soup's mean does not drop.
    order = sorted(range(3), key=lambda i: -singles[i]["mean"])
    soup, best, tried = [order[0]], singles[order[0]]["mean"], candidates[3:]
    assert len(tried) == 2
    for i, trial in zip(order[1:], tried, strict=True):
        members = soup + [i]
        assert trial["weights"] == [1 / len(members) if j in members else 0.0 for j in range(3)]
        if trial["mean"] >= best:
            soup, best = members, trial["mean"]
    assert result.recipe["weights"] == [1 / len(soup) if j in soup else 0.0 for j in range(3)]
    assert best == max(c["mean"] for c in candidates) == dev["chosen_mean"]
    saved = load_file(str(result.out / "adapter" / "adapter.safetensors"))
    expected = average_state([adapter_state(load_run(r), result.name) for r in trio], result.recipe["weights"])
    assert all(torch.equal(saved[k], v) for k, v in expected.items())


def test_task_arithmetic_uses_the_dev_weights(runs, tmp_path):
    pair = [runs["copa"], runs["siqa"]]
    result = merge("task_arithmetic", pair, tmp_path / "ta",
                   MergeOptions(weights="dev", dev_tasks=["siqa"], dev_examples=DEV, scale=0.5, progress=False))
    dev = result.recipe["dev"]
    assert dev["tasks"] == ["siqa"] and len(dev["candidates"]) == grid_size(2, 4) == 5
    assert result.recipe["weights"] == best_candidate(dev["candidates"])["weights"]
    inputs = [load_run(r) for r in pair]
    expected = task_arithmetic_state(initial_adapter_state(inputs[0], result.name),
                                     [adapter_state(i, result.name) for i in inputs], result.recipe["weights"], 0.5)
    saved = load_file(str(result.out / "adapter" / "adapter.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in expected.items())


def test_given_and_uniform_weights_say_so(runs, tmp_path):
    pair = [runs["mrpc"], runs["copa"]]
    given = merge("average", pair, tmp_path / "given", MergeOptions(weights=[1, 3]))
    assert given.recipe["weights_from"] == "given" and given.recipe["weights"] == [0.25, 0.75]
    assert given.recipe["weights_given"] == [1, 3] and "dev" not in given.recipe
    uniform = merge("average", pair, tmp_path / "uniform")
    assert uniform.recipe["weights_from"] == "uniform" and uniform.recipe["weights"] == [0.5, 0.5]


def test_single_input_keeps_weight_one(runs, tmp_path):
    result = merge("average", [runs["copa"]], tmp_path / "one", MergeOptions(weights="dev", progress=False))
    assert result.recipe["weights"] == [1.0] and result.recipe["weights_from"] == "dev"
    assert result.recipe["dev"]["search"] == "none" and result.recipe["dev"]["candidates"] == []
    for f in ("adapter.safetensors", "model_head.safetensors"):
        assert (result.out / "adapter" / f).read_bytes() == (runs["copa"] / "adapter" / f).read_bytes()
    with pytest.raises(AdaptertxError, match="dev task 'mrpc' is none of the inputs' tasks"):
        merge("average", [runs["copa"]], tmp_path / "two", MergeOptions(weights="dev", dev_tasks=["mrpc"]))


def test_bad_dev_requests_are_clear_errors(runs, tmp_path):
    pair = [runs["mrpc"], runs["copa"]]
    no_dev = tmp_path / "xcopa_run"  # a run folder claiming a task with no English data at all
    shutil.copytree(runs["copa"], no_dev)
    body = json.loads((no_dev / "run.json").read_text())
    body["config"]["task"] = "xcopa"
    (no_dev / "run.json").write_text(json.dumps(body))
    headless = tmp_path / "headless"
    shutil.copytree(runs["copa"], headless)
    (headless / "adapter" / "model_head.safetensors").unlink()
    dev = dict(weights="dev", progress=False)
    cases = [
        ("average", pair, MergeOptions(dev_tasks=["siqa"], **dev),
         r"dev task 'siqa' is none of the inputs' tasks \(mrpc, copa\)"),
        ("average", pair, MergeOptions(dev_tasks=["nosuch"], **dev), "unknown task 'nosuch'"),
        ("average", pair, MergeOptions(dev_tasks=[], **dev), "--dev-tasks is empty"),
        ("average", [runs["mrpc"], no_dev], MergeOptions(**dev), "dev task 'xcopa' has no English dev split"),
        ("average", [runs["mrpc"], headless], MergeOptions(**dev), "dev task 'copa': the run in .* saved no head"),
        ("fusion", pair, MergeOptions(target="mrpc", **dev), "does not apply to --method fusion"),
        ("multitask", pair, MergeOptions(**dev), "does not apply to --method multitask"),
        ("fusion", [runs["mrpc"]], MergeOptions(target="mrpc", **dev), "does not apply to --method fusion"),
        ("average", pair, MergeOptions(dev_tasks=["mrpc"]), "--dev-tasks apply with --weights dev only"),
        ("average", pair, MergeOptions(weights=[1, 2], dev_examples=5), "--dev-examples apply with --weights dev"),
        ("average", pair, MergeOptions(grid_step=0, **dev), "grid step is 1/k for a whole k >= 1"),
        ("average", pair, MergeOptions(dev_examples=0, **dev), "dev examples per task must be at least 1"),
        ("average", pair, MergeOptions(dev_search="best", **dev), "unknown weight search 'best'"),
        ("average", pair, MergeOptions(weights="devv"), "weights are numbers, one per run folder, or 'dev'"),
    ]
    for method, run_dirs, options, message in cases:
        with pytest.raises(AdaptertxError, match=message):
            merge(method, run_dirs, tmp_path / "merged", options)
        assert not (tmp_path / "merged").exists(), message


def test_cli_weights_dev(runs, tmp_path):
    from adaptertx.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["merge", str(runs["mrpc"]), str(runs["copa"]), "--out", str(tmp_path / "m"),
                              "--weights", "dev", "--dev-tasks", "mrpc,copa", "--dev-examples", "32"])
    assert ok.exit_code == 0, ok.output
    recipe = json.loads((tmp_path / "m" / "recipe.json").read_text())
    assert recipe["dev"]["examples"] == {"mrpc": 32, "copa": 32} and len(recipe["dev"]["candidates"]) == 5
    w = recipe["weights"]
    assert f"weights: mrpc {w[0]:.3f}, copa {w[1]:.3f}" in ok.output
    assert "5 candidates (grid, step 1/4)" in ok.output and "top 5 of 5 candidates" in ok.output
    table = ok.output.split("candidates by mean dev score:\n", 1)[1].splitlines()
    assert table[0].split() == ["w:mrpc", "w:copa", "dev:mrpc", "dev:copa", "mean", "chosen"]
    assert table[2].split()[:2] == [f"{w[0]:.3f}", f"{w[1]:.3f}"] and table[2].split()[-1] == "*"
    bad = runner.invoke(main, ["merge", "--method", "fusion", "--target", "mrpc", str(runs["mrpc"]), str(runs["copa"]),
                               "--out", str(tmp_path / "f"), "--weights", "dev"])
    assert bad.exit_code == 1 and "does not apply to --method fusion" in bad.output
    stray = runner.invoke(main, ["merge", str(runs["mrpc"]), str(runs["copa"]), "--out", str(tmp_path / "s"),
                                 "--dev-examples", "8"])
    assert stray.exit_code == 1 and "--dev-examples apply with --weights dev only" in stray.output
