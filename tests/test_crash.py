"""Crash-only commands: ``kill -9`` at an awkward moment, then the same command finishes the work.

Where a checkpoint existed the result equals an uninterrupted run's, tensor for tensor; where none
did, the unfinished piece starts again from scratch (and, being seeded, ends equal too).
"""

import json

import pytest
import torch
from click.testing import CliRunner
from crashing import run_killed
from safetensors.torch import load_file

from adaptertx.cli import main


def cli(args, cwd=None):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def train_args(model, out):
    return ["train", "mrpc", "--model", model, "--out", out, "--quant", "none", "--epochs", "2", "--batch-size", "4",
            "--max-examples", "16", "--max-length", "32", "--save-every", "2", "--lr", "1e-3"]


def same_run(a, b):
    """Two finished run folders hold the same adapter, scores and log."""
    ta, tb = (load_file(str(f / "adapter" / "adapter.safetensors")) for f in (a, b))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-6)
    ra, rb = (json.loads((f / "run.json").read_text()) for f in (a, b))
    assert rb["status"] == "finished"
    assert (ra["validation"], ra["test"], ra["steps"]) == (rb["validation"], rb["test"], rb["steps"])
    la, lb = ([json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()] for f in (a, b))
    assert [r.get("step") for r in la] == [r.get("step") for r in lb]
    assert sum("test" in r for r in lb) == 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_xlmr_dir):
    out = tmp_path_factory.mktemp("reference") / "run"
    cli(train_args(tiny_xlmr_dir, out))
    return out


@pytest.mark.parametrize("point,n", [
    ("step", 1),        # before the first step: nothing to resume, it starts again from scratch
    ("checkpoint", 2),  # half way through writing the second checkpoint: the first one is used
    pytest.param("final", 1, marks=pytest.mark.slow),     # while adapter/ is written at the end
    pytest.param("step", 6, marks=pytest.mark.slow),      # mid-epoch, after a checkpoint
    pytest.param("finished", 1, marks=pytest.mark.slow),  # everything written but the finished run.json
])
def test_train_killed_then_run_again_equals_an_uninterrupted_run(tmp_path, tiny_xlmr_dir, reference, point, n):
    args = train_args(tiny_xlmr_dir, tmp_path / "run")
    run_killed(args, point, n, cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"
    cli(args)  # the same command, no --resume
    same_run(reference, tmp_path / "run")
    assert not [p for p in (tmp_path / "run").rglob(".*")]  # nothing an interrupted write left


@pytest.mark.slow
def test_a_moved_run_resumes_from_its_new_place(tmp_path, tiny_xlmr_dir, reference):
    args = train_args(tiny_xlmr_dir, tmp_path / "a")
    run_killed(args, "step", 4, cwd=tmp_path)
    (tmp_path / "a").rename(tmp_path / "b")
    cli(train_args(tiny_xlmr_dir, f"{tmp_path / 'b'}/") + ["--resume"])  # moved, and a trailing slash
    same_run(reference, tmp_path / "b")


def test_evaluate_killed_before_its_first_checkpoint(tmp_path, tiny_xlmr_dir):
    args = ["evaluate", "xcopa", "--model", tiny_xlmr_dir, "--quant", "none", "--langs", "sw", "--epochs", "1",
            "--batch-size", "4", "--max-examples", "8", "--max-length", "32", "--max-eval-examples", "8",
            "--out", tmp_path / "cell"]
    run_killed([str(a) for a in args], "step", 1, cwd=tmp_path)
    output = cli(args)
    assert "sw*" in output
    assert json.loads((tmp_path / "cell" / "run.json").read_text())["status"] == "finished"


def test_multitask_merge_killed_after_a_checkpoint_equals_an_uninterrupted_one(tmp_path, tiny_xlmr_dir):
    def args(out):
        return ["merge", "--method", "multitask", "--tasks", "mrpc,copa", "--model", tiny_xlmr_dir, "--quant", "none",
                "--epochs", "1", "--batch-size", "4", "--max-examples", "8", "--max-length", "32", "--save-every",
                "1", "--out", out]

    cli(args(tmp_path / "whole"))
    run_killed([str(a) for a in args(tmp_path / "killed")], "step", 3, cwd=tmp_path)
    assert not (tmp_path / "killed" / "recipe.json").exists()
    cli(args(tmp_path / "killed"))  # no --resume
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    whole, killed = (json.loads((tmp_path / f / "recipe.json").read_text()) for f in ("whole", "killed"))
    assert whole["validation"] == killed["validation"] and whole["steps"] == killed["steps"]


STUDY = """
[study]
name = "crash"
model = "{model}"
quant = "none"
seeds = [0]

[intermediate]
epochs = 1
batch_size = 4
max_length = 32
max_examples = 8

[[configs]]
name = "none"
method = "none"

[[configs]]
name = "mrpc"
method = "single"
tasks = ["mrpc"]

[targets]
tasks = ["xcopa"]
epochs = 1
batch_size = 4
max_length = 32
max_examples = 8
max_eval_examples = 8

[targets.languages]
xcopa = ["sw"]
"""


@pytest.mark.parametrize("kills", [
    (3,),  # the first cell's first step (the intermediate adapter, two steps, is finished)
    pytest.param((1, 3), marks=pytest.mark.slow),  # first the intermediate adapter's first step, then as above
])
def test_experiment_killed_before_any_checkpoint_finishes_when_run_again(tmp_path, tiny_xlmr_dir, kills):
    from adaptertx.results import read_store

    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(model=tiny_xlmr_dir))
    args = ["experiment", str(study), "--out", str(tmp_path / "out"), "--no-report"]
    for n in kills:  # a study keeps save_every = 100: nothing has checkpointed when it dies
        run_killed(args, "step", n, cwd=tmp_path)
    assert not (tmp_path / "out" / "results.jsonl").exists() or all(
        c["status"] == "finished" for c in read_store(tmp_path / "out")[1])
    output = cli(args)
    assert "2 cells run" in output and "failed" not in output.replace("0 failed", "")
    _, cells = read_store(tmp_path / "out")
    assert sorted(c["cell"] for c in cells if c["status"] == "finished") == ["mrpc|xcopa|seed0", "none|xcopa|seed0"]
