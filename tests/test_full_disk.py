"""A full disk is one line naming the file, exit status 1, and nothing half-written.

The disk is real: a small tmpfs mounted in a private user and mount namespace (``unshare -rm``),
filled to leave a few kilobytes free before each command, so every write path (safetensors,
JSON, the metrics log, the adapters library's own files) meets a true ``ENOSPC``. Where the
machine allows no namespaces, the results store is still checked with an injected ``ENOSPC``.
"""

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptertx.cli import main
from adaptertx.errors import AdaptertxError

SCRIPT = r'''
import json, os, sys
from pathlib import Path
from click.testing import CliRunner
from adaptertx.cli import main
from adaptertx.errors import AdaptertxError
from adaptertx.results import ResultsStore

disk, model, run_a, run_b = (Path(a) for a in sys.argv[1:5])
filler = disk / "filler"


def leave(free):
    """Fill the disk so that ``free`` bytes stay free."""
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free))


def files(folder):
    return sorted(str(p.relative_to(disk)) for p in folder.rglob("*")) if folder.exists() else []


out = {}
for name, free, args, folder in [
    ("train", 24 << 10, ["train", "mrpc", "--model", str(model), "--out", str(disk / "run"), "--quant", "none",
                         "--max-examples", "16", "--epochs", "1", "--batch-size", "4", "--max-length", "32",
                         "--save-every", "1"], disk / "run"),
    ("merge", 8 << 10, ["merge", str(run_a), str(run_b), "--method", "average", "--out", str(disk / "avg")],
     disk / "avg"),
    ("export", 8 << 10, ["export", str(run_a), "--repo-id", "me/x", "--out", str(disk / "export")],
     disk / "export"),
]:
    leave(free)
    result = CliRunner().invoke(main, args)
    run_json = None
    if (folder / "run.json").is_file():
        run_json = json.loads((folder / "run.json").read_text())["status"]
    out[name] = {"exit": result.exit_code, "output": result.output, "files": files(folder), "run_json": run_json,
                 "exception": repr(result.exception), "leftovers": [p for p in files(disk) if "/." in "/" + p]}
leave(1 << 20)
store = ResultsStore(disk / "study" / "results.jsonl", {"study": "s", "study_hash": "h"})
leave(0)
try:
    store.add({"cell": "a|b|seed0", "status": "finished", "pad": "x" * 100000})
    out["store"] = {"error": None}
except AdaptertxError as e:
    out["store"] = {"error": str(e)}
filler.unlink()
lines = (disk / "study" / "results.jsonl").read_text().splitlines()
out["store"]["lines"] = [json.loads(line)["kind"] for line in lines]
print("RESULT " + json.dumps(out))
'''


def _namespaces_work(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k none {probe}"],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_xlmr_dir):
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 0), ("b", 1)):
        result = CliRunner().invoke(main, ["train", "mrpc", "--model", tiny_xlmr_dir, "--out", str(root / name),
                                           "--quant", "none", "--max-examples", "8", "--epochs", "1", "--batch-size",
                                           "4", "--max-length", "32", "--seed", str(seed)])
        assert result.exit_code == 0, result.output
    return root


def test_a_full_disk_during_train_merge_export_and_the_store(tmp_path, tiny_xlmr_dir, runs):
    if not _namespaces_work(tmp_path):
        pytest.skip("no user and mount namespaces here (unshare -rm): the injected ENOSPC test below still runs")
    disk = tmp_path / "disk"
    disk.mkdir()
    command = (f"mount -t tmpfs -o size=2m none {disk} && exec {sys.executable} -c \"$0\" {disk} {tiny_xlmr_dir} "
               f"{runs / 'a'} {runs / 'b'}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command, SCRIPT], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[1])
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, done.stdout[-2000:] + done.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    for name in ("train", "merge", "export"):
        case = out[name]
        assert case["exit"] == 1, (name, case)
        message = case["output"].strip().splitlines()[-1]  # after the log's notes (truncated examples)
        assert message.startswith("Error: could not write "), (name, case["output"])
        assert "no space left on the device" in message and "Traceback" not in case["output"], (name, message)
        assert case["leftovers"] == [], (name, case)
    # train: run.json says running (the same command finishes the run once there is space); nothing else half-written
    assert out["train"]["run_json"] == "running" and "run/adapter" not in out["train"]["files"]
    assert out["merge"]["files"] == [] and out["export"]["files"] == []  # all or nothing
    assert "could not append to" in out["store"]["error"] and "no space left" in out["store"]["error"]
    assert out["store"]["lines"] == ["study"]  # the torn cell line is gone; the header is intact


def test_the_results_store_on_a_full_disk_injected(tmp_path, monkeypatch):
    import builtins

    from adaptertx.results import ResultsStore, read_store

    store = ResultsStore(tmp_path / "results.jsonl", {"study": "s", "study_hash": "h"})
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "a" in mode and str(path).endswith("results.jsonl") else f

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(AdaptertxError, match="could not append to .*no space left"):
        store.add({"cell": "a|b|seed0", "status": "finished"})
    monkeypatch.setattr(builtins, "open", real_open)
    ResultsStore(tmp_path / "results.jsonl", {"study": "s", "study_hash": "h"}).add(
        {"cell": "a|b|seed0", "status": "finished"})
    assert [c["cell"] for c in read_store(tmp_path)[1]] == ["a|b|seed0"]
