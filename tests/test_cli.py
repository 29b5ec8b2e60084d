import json

import pytest
from click.testing import CliRunner

from adaptertx.cli import main
from adaptertx.kernels import OPS
from adaptertx.tasks import TASKS


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_lists_the_commands():
    out = run("--help").output
    for cmd in ("env", "models", "tasks", "data", "retrieve"):
        assert cmd in out


def test_env_json_names_versions_and_kernels():
    info = json.loads(run("env", "--json").output)
    assert info["versions"]["transformers"].startswith("4.57")
    assert info["versions"]["adapters"].startswith("1.3")
    assert "cuda" in info["device"]
    assert set(info["kernels on cpu"]) == set(info["kernels on cuda"]) == set(OPS)


def test_tasks_lists_every_task_with_offline_availability():
    out = run("tasks").output
    for name in TASKS:
        assert f"\n{name} " in out or out.startswith(f"{name} ")
    line = next(row for row in out.splitlines() if row.startswith("mnli "))
    assert "Hub only" in line
    line = next(row for row in out.splitlines() if row.startswith("masakhaner "))
    assert "10 lang" in line and "validation=" in line and "test=" in line
    retrieval = run("tasks", "--family", "retrieval").output
    assert "tatoeba" in retrieval and "xnli" not in retrieval


def test_data_show_prints_real_examples():
    result = run("data", "show", "xnli", "--lang", "sw", "-n", "2")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("xnli · sw · test:") and "(low-resource)" in lines[0]
    rows = [json.loads(line) for line in lines[1:]]
    assert len(rows) == 2 and all(r["label"] in ("entailment", "neutral", "contradiction") for r in rows)


@pytest.mark.parametrize("args,message", [
    (("data", "show", "nosuch"), "unknown task 'nosuch'"),
    (("data", "show", "xnli", "--lang", "yo"), "task 'xnli' has no language 'yo'"),
    (("data", "show", "mnli"), "task 'mnli' has no bundled data"),
    (("data", "show", "xnli", "--lang", "sw", "--split", "dev"), "dev"),
    (("retrieve", "tatoeba", "--langs", "xx"), "unknown language code 'xx'"),
    (("retrieve", "tatoeba", "--langs", "de", "--model", "./missing-folder"), "unknown model"),
])
def test_bad_input_is_one_clear_line_and_nonzero_exit(args, message):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_retrieve_tatoeba_on_the_default_model(me5_dir, tmp_path):
    out = tmp_path / "scores.json"
    result = run("retrieve", "tatoeba", "--langs", "de,kab", "--max-pairs", "100", "--out", str(out))
    assert result.exit_code == 0, result.output
    scores = {s["lang"]: s for s in json.loads(out.read_text())}
    assert scores["de"]["pairs"] == 100 and scores["kab"]["low_resource"]
    # A real multilingual encoder: German retrieval is near perfect, far above chance (1%).
    assert scores["de"]["x_to_en"] > 90
    assert scores["kab"]["x_to_en"] > 5
    assert "low-resource" in result.output
    assert "chance %" in result.output  # each language's score beside one right answer among its 100 candidates
    assert [line.split()[-1] for line in result.output.splitlines() if line.startswith(("de ", "kab "))] == ["1.0"] * 2


def test_importing_the_library_prints_no_warning_about_4bit_kernels_it_never_uses():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import adaptertx.experiment, bitsandbytes"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gemm_4bit_forward" not in done.stderr
