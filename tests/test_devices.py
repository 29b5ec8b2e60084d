"""``--device`` and the library's ``device``: one resolver, clear errors, and adapters and heads
placed on the base's device (checked on the ``meta`` device, a device that is not the CPU)."""

import pytest
import torch
from click.testing import CliRunner

from adaptertx import modeling
from adaptertx.cli import main
from adaptertx.environment import check_device, resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.modeling import build_adapter_model
from adaptertx.tasks import get_task

META = torch.device("meta")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_names_resolve_on_a_machine_without_cuda(no_cuda):
    assert resolve_device("auto") == resolve_device(None) == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(META) == META  # another torch device is taken as given
    assert check_device("CUDA:1") == "cuda:1" and check_device(None) == "auto"
    for bad in ("gpu", "cpu:1", "cuda:", "cuda:x", "auto:0", ""):
        with pytest.raises(AdaptertxError, match="unknown device .*; choose auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    for name in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(AdaptertxError) as e:
            resolve_device(name)
        assert "no CUDA device: torch.cuda.is_available() is False; this torch is " + torch.__version__ in str(e.value)
        assert "\n" not in str(e.value)


def test_names_resolve_on_a_machine_with_one_gpu(one_gpu, monkeypatch):
    assert resolve_device("auto") == resolve_device("cuda") == resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(AdaptertxError, match=r"device 'cuda:5': this machine has 1 CUDA device \(cuda:0\)"):
        resolve_device("cuda:5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")  # a torchrun / accelerate launch process: its own GPU
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def _study(tmp_path, model):
    path = tmp_path / "study.toml"
    path.write_text(f'[study]\nname = "s"\nmodel = "{model}"\n[[configs]]\nname = "none"\nmethod = "none"\n'
                    f'[targets]\ntasks = ["xcopa"]\n')
    return str(path)


@pytest.mark.parametrize("command", ["train", "evaluate", "merge", "experiment", "retrieve"])
def test_cuda_without_cuda_is_one_line_before_any_work(no_cuda, tiny_xlmr_dir, tmp_path, command):
    out = tmp_path / "out"
    args = {"train": ["train", "copa", "--model", tiny_xlmr_dir, "--out", str(out)],
            "evaluate": ["evaluate", "xcopa", "--model", tiny_xlmr_dir, "--out", str(out)],
            "merge": ["merge", "--method", "multitask", "--tasks", "mrpc,copa", "--model", tiny_xlmr_dir,
                      "--out", str(out)],
            "experiment": ["experiment", _study(tmp_path, tiny_xlmr_dir), "--out", str(out), "--no-report"],
            "retrieve": ["retrieve", "tatoeba", "--model", tiny_xlmr_dir, "--langs", "de"]}[command]
    r = CliRunner().invoke(main, [*args, "--device", "cuda"])
    assert r.exit_code == 1, r.output
    error = r.output.strip().splitlines()[-1]
    assert error.startswith("Error: device 'cuda': no CUDA device: torch.cuda.is_available() is False")
    assert "Traceback" not in r.output and not (out / "run.json").exists() and not (out / "results.jsonl").exists()
    r = CliRunner().invoke(main, [*args, "--device", "gpu"])
    assert r.exit_code == 1 and "unknown device 'gpu'; choose auto, cpu, cuda or cuda:N" in r.output


@pytest.mark.parametrize("quant", ["none", "int8"])
def test_adapter_and_heads_go_to_the_base_device(tiny_xlmr_dir, monkeypatch, quant):
    """The train path (``build_adapter_model``, as ``adaptertx train`` and multi-task training
    call it) on a base placed on ``meta``: the adapter and every head end there too. The
    ``adapters`` library creates them on the CPU whatever the base's device, so without
    :func:`adaptertx.modeling.to_base_device` they stay there (checked below: the test can fail)."""
    monkeypatch.setattr(modeling, "fingerprint", lambda model: "meta")  # meta weights have no bytes to hash
    tasks = [get_task("copa"), get_task("mrpc")]
    built = build_adapter_model(tiny_xlmr_dir, tasks, quant=quant, name="joint", device=META)
    params = dict(built.model.named_parameters())
    assert any(".adapters.joint." in n for n in params) and {"copa", "mrpc"} <= set(built.model.heads)
    assert [n for n, p in params.items() if p.device != META] == []
    assert [n for n, b in built.model.named_buffers() if b.device != META] == []
    assert modeling.base_device(built.model) == META
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert trainable and all(".adapters.joint." in n or n.startswith("heads.") for n in trainable)

    monkeypatch.setattr(modeling, "to_base_device", lambda model: None)
    unplaced = build_adapter_model(tiny_xlmr_dir, tasks, quant=quant, name="joint", device=META)
    left = {n.split(".")[0] if n.startswith("heads.") else "adapter" for n, p in unplaced.model.named_parameters()
            if p.device.type == "cpu"}
    assert left == {"heads", "adapter"}
