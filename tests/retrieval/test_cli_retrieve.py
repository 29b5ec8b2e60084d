"""``adaptertx retrieve tatoeba|bucc`` on user files with a small model folder."""

import json

import pytest
from click.testing import CliRunner

from adaptertx.cli import main


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_retrieve_tatoeba_on_user_files(tiny_xlmr_dir, tmp_path):
    _write(tmp_path / "tatoeba.deu-eng.deu", ["Ich habe Hunger.", "Das ist ein Buch."])
    _write(tmp_path / "tatoeba.deu-eng.eng", ["I am hungry.", "This is a book."])
    _write(tmp_path / "tatoeba.kab-eng.kab", ["Azul.", "Tanemmirt."])
    _write(tmp_path / "tatoeba.kab-eng.eng", ["Hello.", "Thanks."])
    out = tmp_path / "t.json"
    r = CliRunner().invoke(main, ["retrieve", "tatoeba", "--model", tiny_xlmr_dir, "--data-dir", str(tmp_path),
                                  "--fp32", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "kab *" in r.output and "low-resource * (1 langs)" in r.output and "other (1 langs)" in r.output
    assert [s["lang"] for s in json.loads(out.read_text())] == ["de", "kab"]
    r = CliRunner().invoke(main, ["retrieve", "tatoeba", "--model", tiny_xlmr_dir, "--data-dir", str(tmp_path),
                                  "--layer", "5"])
    assert r.exit_code == 1 and "layer 5 is outside the model" in r.output and "Traceback" not in r.output


def _bucc_files(tmp_path):
    _write(tmp_path / "zh-en.dev.zh", ["zh-1\t我饿了。", "zh-2\t这是一本书。"])
    _write(tmp_path / "zh-en.dev.en", ["en-1\tThis is a book.", "en-2\tI am hungry.", "en-3\tNice weather."])
    _write(tmp_path / "zh-en.dev.gold", ["zh-1\ten-2", "zh-2\ten-1"])


@pytest.mark.parametrize("flags", [(), pytest.param(("--int8",), marks=pytest.mark.slow),
                                   pytest.param(("--reference",), marks=pytest.mark.slow)])
def test_retrieve_bucc_on_user_files(tiny_xlmr_dir, tmp_path, flags):
    _bucc_files(tmp_path)
    r = CliRunner().invoke(main, ["retrieve", "bucc", "--model", tiny_xlmr_dir, "--data-dir", str(tmp_path), *flags])
    assert r.exit_code == 0, r.output
    assert "zh-en" in r.output and "F1 %" in r.output
    # Two sources, three targets, two gold pairs: chance F1 = 2 * (2/3) / (2 + 2) = 33.33%.
    assert "chance F1 %" in r.output and "33.33" in r.output


def test_retrieve_bucc_unknown_gold_id(tiny_xlmr_dir, tmp_path):
    _bucc_files(tmp_path)
    _write(tmp_path / "zh-en.dev.gold", ["zh-1\ten-7"])
    r = CliRunner().invoke(main, ["retrieve", "bucc", "--model", tiny_xlmr_dir, "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "names 'en-7', which is not in zh-en.dev.en" in r.output


def test_retrieve_on_the_cpu_by_name(tiny_xlmr_dir, tmp_path, monkeypatch):
    """``--device cpu`` encodes there end to end (and with ``auto`` on a machine without a GPU
    gives the same scores)."""
    _write(tmp_path / "tatoeba.deu-eng.deu", ["Ich habe Hunger.", "Das ist ein Buch."])
    _write(tmp_path / "tatoeba.deu-eng.eng", ["I am hungry.", "This is a book."])
    import torch

    from adaptertx.retrieval import encoder

    seen = []
    real = encoder.SentenceEncoder.__init__

    def recording(self, model, *args, **kwargs):
        real(self, model, *args, **kwargs)
        seen.append((model.device, self._packed.device, self.tokens_per_batch))

    monkeypatch.setattr(encoder.SentenceEncoder, "__init__", recording)
    outs = {}
    for device in ("cpu", "auto"):
        outs[device] = tmp_path / f"{device}.json"
        r = CliRunner().invoke(main, ["retrieve", "tatoeba", "--model", tiny_xlmr_dir, "--data-dir", str(tmp_path),
                                      "--fp32", "--device", device, "--out", str(outs[device])])
        assert r.exit_code == 0, r.output
    cpu = torch.device("cpu")
    assert seen[0] == (cpu, cpu, encoder.tokens_per_batch_for(cpu))
    if not torch.cuda.is_available():
        assert seen[1] == seen[0] and outs["cpu"].read_text() == outs["auto"].read_text()
