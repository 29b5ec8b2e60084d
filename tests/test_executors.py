"""The study graph on real engines: a local Ray cluster and submitit's local executor."""

import os
import signal
import sys
import threading
import time

import pytest

from adaptertx.errors import AdaptertxError
from adaptertx.experiment import load_study, run_study
from adaptertx.results import computed, read_store

STUDY = """
[study]
name = "spread"
model = "{model}"
quant = "none"
seeds = [0]

[intermediate]
epochs = 1
batch_size = 4
lr = 1e-2
max_length = 32
max_examples = 8

[[configs]]
name = "none"
method = "none"

[[configs]]
name = "mrpc"
method = "single"
tasks = ["mrpc"]

[[configs]]
name = "average"
method = "average"
tasks = ["mrpc", "siqa"]

[targets]
tasks = ["xcopa", "tatoeba"]
epochs = 1
batch_size = 4
lr = 1e-2
max_length = 32
max_examples = 8
max_eval_examples = 6

[targets.languages]
xcopa = ["sw"]
tatoeba = ["de"]
"""


def _by_cell(folder) -> dict:
    header, cells = read_store(folder)
    assert len(cells) == len({c["cell"] for c in cells})
    return {c["cell"]: computed(c) for c in cells}


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_xlmr_dir):
    root = tmp_path_factory.mktemp("spread")
    (root / "study.toml").write_text(STUDY.format(model=tiny_xlmr_dir))
    return load_study(root / "study.toml")


@pytest.fixture(scope="module")
def serial(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "out"
    result = run_study(study, out, progress=False, echo=lambda *_: None)
    assert not result.failed and len(result.ran) == 6
    return _by_cell(out)


def test_ray_on_two_local_workers_gives_the_serial_store(study, serial, tmp_path):
    from adaptertx.executors import RayExecutor

    lines = []
    result = run_study(study, tmp_path / "out", progress=False, echo=lines.append,
                       executor=RayExecutor(workers=2))
    assert not result.failed and sorted(result.ran) == sorted(serial)
    assert _by_cell(tmp_path / "out") == serial
    # every node logged where it ran, in the study folder
    logs = sorted(p.name for p in (tmp_path / "out" / "logs").iterdir())
    assert "cell-average-xcopa-seed0.log" in logs and "intermediate-siqa.log" in logs and "merge-average.log" in logs
    assert "started on" in (tmp_path / "out" / "logs" / "cell-none-xcopa-seed0.log").read_text()


def test_submitit_local_executor_gives_the_serial_store(study, serial, tmp_path):
    from adaptertx.executors import SubmititExecutor

    out = tmp_path / "out"
    result = run_study(study, out, progress=False, echo=lambda *_: None,
                       executor=SubmititExecutor(out / "jobs", local=True, timeout_min=20))
    assert not result.failed
    assert _by_cell(out) == serial


def test_a_worker_killed_mid_cell_is_rerun_and_recorded_once(study, serial, tmp_path):
    from adaptertx.executors import RayExecutor

    out = tmp_path / "out"
    killed = []

    def kill_first_cell():  # the pid a cell's log names, killed while that cell runs
        log = out / "logs" / "cell-mrpc-xcopa-seed0.log"
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if log.is_file() and "pid" in log.read_text():
                pid = int(log.read_text().split("pid ")[1].split()[0])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_first_cell, daemon=True)
    watcher.start()
    lines = []
    result = run_study(study, out, progress=False, echo=lines.append, executor=RayExecutor(workers=2))
    watcher.join(5)
    assert killed, "the cell's worker was never seen"
    assert any("its worker was lost" in line and "mrpc|xcopa|seed0" in line for line in lines), lines
    assert not result.failed
    assert _by_cell(out) == serial


def test_without_ray_the_executor_names_the_extra(monkeypatch):
    from adaptertx.executors import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(AdaptertxError, match=r"^--executor ray needs ray, which is not installed: "
                                             r"pip install 'adaptertx\[ray\]'$"):
        RayExecutor()


def test_an_unreachable_ray_address_is_one_line():
    import socket

    from adaptertx.executors import RayExecutor

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    with pytest.raises(AdaptertxError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port}: .*ray start"):
        RayExecutor(f"127.0.0.1:{port}")
    assert time.time() - start < 10
    with pytest.raises(AdaptertxError, match="expected auto, HOST:PORT or ray://HOST:PORT"):
        RayExecutor("nowhere")


def test_slurm_without_slurm_or_with_an_unknown_partition(monkeypatch, tmp_path):
    from adaptertx.executors import SubmititExecutor

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AdaptertxError, match="needs Slurm's commands .* login node"):
        SubmititExecutor(tmp_path / "jobs", partition="gpu")
    with pytest.raises(AdaptertxError, match="needs --partition"):
        SubmititExecutor(tmp_path / "jobs")
    # sinfo's own output format (`sinfo --noheader --format=%P`: the default partition starred)
    sinfo = tmp_path / "sinfo"
    sinfo.write_text("#!/bin/sh\nprintf 'debug*\\ngpu\\n'\n")
    sinfo.chmod(0o755)
    with pytest.raises(AdaptertxError, match=r"no Slurm partition 'a100' \(partitions: debug, gpu\)"):
        SubmititExecutor(tmp_path / "jobs", partition="a100")


def test_a_worker_that_cannot_see_the_study_folder_stops_the_study(tmp_path):
    from adaptertx.study_graph import Node, run_node

    answer = run_node(None, str(tmp_path / "elsewhere"), Node("intermediate", "siqa"), {}, "0123")
    assert not answer["ok"] and answer["fatal"]
    assert "cannot be read on" in answer["error"] and "shared storage" in answer["error"]


def test_the_cli_takes_an_executor(study, serial, tmp_path):
    from click.testing import CliRunner

    from adaptertx.cli import main

    config = tmp_path / "study.toml"
    config.write_text(STUDY.format(model=study.model))
    result = CliRunner().invoke(main, ["experiment", str(config), "--out", str(tmp_path / "out"), "--no-report",
                                       "--executor", "ray", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "6 cells run" in result.output
    lines = result.output.splitlines()  # each cell's line gives its scores beside their floors
    xcopa = [x for x in lines if "|xcopa|seed0: " in x]
    tatoeba = [x for x in lines if "|tatoeba|seed0: " in x]
    assert len(xcopa) == 3 and all("majority floor" in x and "chance floor 50.0" in x for x in xcopa), xcopa
    assert len(tatoeba) == 3 and all("chance floor" in x for x in tatoeba), tatoeba
    assert _by_cell(tmp_path / "out") == serial
    result = CliRunner().invoke(main, ["experiment", str(config), "--out", str(tmp_path / "out"), "--no-report",
                                       "--executor", "ray", "--address", "127.0.0.1:1"])
    assert result.exit_code == 1 and "cannot reach the Ray cluster at 127.0.0.1:1" in result.output
    assert result.output.count("\n") <= 2


def _cell_rows(out) -> int:
    store = out / "results.jsonl"
    return max(0, len(store.read_text().splitlines()) - 1) if store.is_file() else 0


def test_the_driver_killed_mid_study_then_the_same_command_skips_what_finished(study, serial, tmp_path):
    """``kill -9`` of the driver of a Ray study once it has recorded two cells: the same command
    again records the others, every cell once, and runs no recorded or finished cell again."""
    import subprocess

    config = tmp_path / "study.toml"
    config.write_text(STUDY.format(model=study.model))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "adaptertx.cli", "experiment", str(config), "--out", str(out), "--no-report",
               "--executor", "ray", "--workers", "2"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while _cell_rows(out) < 2 and driver.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert driver.poll() is None, "the study finished before the driver could be killed"
        driver.kill()  # the driver alone: its workers are left to the engine
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    recorded = {c["cell"] for c in read_store(out)[1]}
    assert 2 <= len(recorded) < len(serial)
    finished = {"|".join(p.parent.relative_to(out / "cells").parts) for p in (out / "cells").rglob("cell.json")}
    assert recorded <= finished  # a recorded cell had left its record in its folder first
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(recorded)} of {len(serial)} cells already finished" in again.stdout, again.stdout
    assert _by_cell(out) == serial  # every cell once, as the serial run computed it
    for cell in finished:  # no cell that had finished before the kill ran again
        log = (out / "logs" / f"cell-{cell.replace('|', '-')}.log").read_text()
        runs = log.count("started on")
        assert runs == 1 if cell in recorded else (runs == 2 and "finished before" in log), log


def test_a_task_larger_than_any_ray_node_is_one_line():
    from adaptertx.executors import RayExecutor

    with pytest.raises(AdaptertxError, match=r"no node of the Ray cluster has 1 CPUs and 1 GPUs for one task "
                                             r"\(--cpus-per-task, --gpus-per-task\); its nodes have 1 CPUs and 0 GPUs"):
        RayExecutor(workers=1, gpus_per_task=1)
