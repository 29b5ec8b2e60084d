"""Every bad input of a careful user ends in one line naming the file or value, exit status 1
(2 for usage errors), and writes nothing."""

import errno
import json
import os
import shutil
import stat
import time

import pytest
from click.testing import CliRunner

from adaptertx.cli import main
from adaptertx.errors import AdaptertxError


def one_line(args, status=1):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == status, result.output + repr(result.exception)
    message = result.output.strip().splitlines()[-1]
    assert "Traceback" not in result.output and message.startswith("Error: "), result.output
    return message


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_xlmr_dir):
    """A finished tiny run (and the model it was trained on)."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    result = CliRunner().invoke(main, ["train", "mrpc", "--model", tiny_xlmr_dir, "--out", str(out), "--quant",
                                       "none", "--max-examples", "8", "--epochs", "1", "--batch-size", "4",
                                       "--max-length", "32", "--save-every", "1"])
    assert result.exit_code == 0, result.output
    return out


def copy_of(run, tmp_path, name="copy"):
    dest = tmp_path / name
    shutil.copytree(run, dest)
    return dest


def train_args(run, out, *extra):
    config = json.loads((run / "run.json").read_text())["config"]
    return ["train", "mrpc", "--model", config["model"], "--out", out, "--quant", "none", "--max-examples", "8",
            "--epochs", "1", "--batch-size", "4", "--max-length", "32", "--save-every", "1", *extra]


def test_a_corrupt_run_json_on_resume(run, tmp_path):
    broken = copy_of(run, tmp_path)
    (broken / "run.json").write_text("{not json")
    message = one_line(train_args(run, broken, "--resume"))
    assert f"{broken / 'run.json'} is not valid JSON" in message


def test_a_truncated_checkpoint_on_resume(run, tmp_path):
    unfinished = copy_of(run, tmp_path)
    body = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**body, "status": "running"}))
    last = unfinished / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[:40])
    message = one_line(train_args(run, unfinished, "--resume"))
    assert f"the checkpoint in {unfinished / 'checkpoints'} is damaged" in message and "--overwrite" in message


def test_merge_of_a_truncated_adapter(run, tmp_path):
    broken = copy_of(run, tmp_path)
    weights = broken / "adapter" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    message = one_line(["merge", broken, run, "--method", "average", "--out", tmp_path / "avg"])
    assert f"{weights} is damaged or not a safetensors file" in message
    assert not (tmp_path / "avg").exists()


def test_a_model_folder_of_pickles_is_refused_by_name(tmp_path, tiny_xlmr_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(os.path.join(tiny_xlmr_dir, "config.json"), folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    for args in (["retrieve", "tatoeba", "--model", folder, "--langs", "de", "--max-pairs", "4"],
                 ["train", "mrpc", "--model", folder, "--out", tmp_path / "run"]):
        message = one_line(args)
        assert "holds its weights as pytorch_model.bin, not model.safetensors" in message
        assert "TF 2.0" not in message
    assert not (tmp_path / "run").exists()


def test_an_unknown_model_fails_in_one_line_within_seconds(tmp_path, monkeypatch):
    from hub_server import HubServer

    import adaptertx.evaluation  # noqa: F401 (imported before the clock starts: only the failure is timed)
    import adaptertx.experiment  # noqa: F401
    import adaptertx.training  # noqa: F401

    def quickly(args):
        start = time.monotonic()
        message = one_line(args)
        assert time.monotonic() - start < 10, args
        assert "nosuch-org/nosuch-model" in message and "pass a local folder" in message
        return message

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: offline
    message = quickly(["train", "mrpc", "--model", "nosuch-org/nosuch-model", "--out", tmp_path / "a"])
    assert "it is not in the local Hugging Face cache and the Hub is not reachable" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    quickly(["retrieve", "tatoeba", "--model", "nosuch-org/nosuch-model", "--langs", "de"])
    study = tmp_path / "study.toml"
    study.write_text('[study]\nname = "s"\nmodel = "nosuch-org/nosuch-model"\n\n[[configs]]\nname = "none"\n'
                     'method = "none"\n\n[targets]\ntasks = ["xcopa"]\n')
    quickly(["experiment", study, "--out", tmp_path / "study"])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with HubServer("hf_token") as hub:  # online: the Hub answers that it has no such model
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        quickly(["train", "mrpc", "--model", "nosuch-org/nosuch-model", "--out", tmp_path / "b"])
    assert not [p for p in tmp_path.iterdir() if p.name != "study.toml"]


def test_data_files_that_are_folders_unreadable_or_outside_langs(tmp_path, monkeypatch):
    common = ["evaluate", "xcopa", "--out", tmp_path / "cell"]
    assert "is a folder, not a data file (a folder of files is given with --data-dir)" in one_line(
        [*common, "--data-file", f"sw={tmp_path}"])
    message = one_line([*common, "--langs", "sw", "--data-file", f"qu={tmp_path / 'test.qu.jsonl'}"], status=2)
    assert "not a language of --langs (sw)" in message
    locked = tmp_path / "test.sw.jsonl"
    locked.write_text("{}\n")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: make the read itself fail
        from adaptertx.data import readers

        real = readers.open if hasattr(readers, "open") else open

        def denied(path, *args, **kwargs):
            if str(path) == str(locked):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(readers, "open", denied, raising=False)
    message = one_line([*common, "--data-file", f"sw={locked}"])
    assert str(locked) in message and "cannot read it" in message and "compressed" not in message
    locked.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert not (tmp_path / "cell").exists()


def test_resume_compares_the_folder_not_the_text_of_out(run, tmp_path, monkeypatch):
    from adaptertx import rundir

    moved = copy_of(run, tmp_path, "moved")
    body = json.loads((moved / "run.json").read_text())
    (moved / "run.json").write_text(json.dumps({**body, "status": "running"}))
    config = dict(body["config"])
    monkeypatch.chdir(tmp_path)
    for out in (f"{moved}/", "moved", "./moved/"):  # a trailing slash, a relative path, a moved folder
        assert rundir.prepare(rundir.Path(out), {**config, "out": out}, resume=True) == rundir.RESUME
    with pytest.raises(AdaptertxError, match=r"differs in: lr\)"):
        rundir.prepare(moved, {**config, "lr": 0.5}, resume=True)
    (moved / "checkpoints" / "last.safetensors").unlink()  # killed before its first checkpoint
    assert rundir.prepare(moved, config) == rundir.RESTART


def test_outputs_honour_the_umask(tmp_path):
    from adaptertx.io import atomic_dir, atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "sub").mkdir()
            atomic_write_text(tmp / "sub" / "b.json", "{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"a.json": 0o640, "folder": 0o750, "sub": 0o750, "b.json": 0o640}
