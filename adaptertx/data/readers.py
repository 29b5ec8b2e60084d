"""Parsers for the public release formats of the datasets adaptertx uses.

One parser per format. Every parser returns examples in the common schema of its task
family (see :mod:`adaptertx.data`) and raises :class:`~adaptertx.errors.AdaptertxError`
naming the file, the line and what was expected on malformed input (missing fields,
labels outside the label set, wrong column counts, an empty file, bytes that are not
UTF-8). Bad rows are never skipped. Files ending in ``.xz``, ``.gz`` or ``.bz2`` are
decompressed on the fly.

Ids: row formats without an id column number their examples ``"0"``, ``"1"``, ... in file
order (for tagging formats: sentence order); formats with ids keep them.

Text is Unicode NFC-normalised as it is read (every format, bundled files and user files
alike): releases differ (MasakhaNER 2.0 Yoruba ships decomposed, NFD) and a model's
tokenizer sees NFC text. Character offsets (QA answers, XQuAD-R sentence breaks, Mewsli-X
spans) are moved to the same characters of the normalised text.

Files that cannot be scored are refused rather than read: QA questions whose gold answers
are empty (XTREME's download script blanks the test annotations) or whose offsets do not
point at the answer, and classification files with one label only.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adaptertx.errors import AdaptertxError
from adaptertx.languages import normalize_or_keep

NLI_LABELS = ("entailment", "neutral", "contradiction")
PARAPHRASE_LABELS = ("0", "1")
UPOS_TAGS = frozenset(
    "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split()
)
_BIO = re.compile(r"^(O|[BI]-[A-Za-z][A-Za-z0-9_]*)$")

# XCOPA/COPA question templates. English for every language (XCOPA ships the question
# type, not a question; the model sees the same English template in every language).
COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}


def _fail(path: str | os.PathLike, line: int | None, msg: str) -> AdaptertxError:
    where = f"{path}" if line is None else f"{path}, line {line}"
    return AdaptertxError(f"{where}: {msg}")


def _read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if p.is_dir():
        raise AdaptertxError(f"{path} is a folder, not a data file (a folder of files is given with --data-dir)")
    if not p.is_file():
        raise AdaptertxError(f"{path}: no such file")
    if not os.access(p, os.R_OK):
        raise AdaptertxError(f"{path}: cannot read it (permission denied)")
    opener: Callable[..., Any] = open
    if p.suffix == ".xz":
        opener = lzma.open
    elif p.suffix == ".gz":
        opener = gzip.open
    elif p.suffix == ".bz2":
        opener = bz2.open
    try:
        with opener(p, "rb") as f:
            return f.read()
    except OSError as e:
        if opener is open or e.errno is not None:
            raise AdaptertxError(f"{path}: cannot read it ({e.strerror or e})") from None
        raise AdaptertxError(f"{path}: cannot read compressed file ({e})") from None
    except (lzma.LZMAError, EOFError) as e:
        raise AdaptertxError(f"{path}: cannot read compressed file ({e})") from None


def _read_text(path: str | os.PathLike, expected: str, in_nfc: bool = True) -> str:
    """The whole file as text (UTF-8, BOM dropped, CRLF→LF, NFC unless ``in_nfc`` is false: JSON
    files are normalised string by string after parsing); errors on empty or non-UTF-8."""
    data = _read_bytes(path)
    if not data.strip():
        raise _fail(path, None, f"file is empty; expected {expected}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _fail(path, line, f"not valid UTF-8 (byte 0x{data[e.start]:02x}); expected UTF-8 text") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n")
    return nfc(text) if in_nfc else text


def nfc(value: Any) -> Any:
    """``value`` with every string in it (through lists and dicts) in Unicode NFC."""
    if isinstance(value, str):
        return value if unicodedata.is_normalized("NFC", value) else unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [nfc(v) for v in value]
    if isinstance(value, dict):
        return {k: nfc(v) for k, v in value.items()}
    return value


def nfc_offsets(path, where: str, text: str) -> tuple[str, Callable[[int], int]]:
    """``text`` in NFC and a function moving a character offset of ``text`` to the same place
    in it. An offset inside a character that NFC composes (a base letter and its accent) has
    no place in the normalised text and is refused."""
    norm = nfc(text)
    if norm == text:
        return text, lambda offset: offset

    def move(offset: int) -> int:
        head = unicodedata.normalize("NFC", text[:offset])
        if not norm.startswith(head):
            raise _fail(path, None, f"{where}: offset {offset} splits a character that Unicode NFC composes; "
                                    f"expected offsets between whole characters")
        return len(head)
    return norm, move


def _lines(path: str | os.PathLike, expected: str, in_nfc: bool = True) -> list[str]:
    text = _read_text(path, expected, in_nfc)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _columns(path, lineno: int, line: str, n: int, expected: str) -> list[str]:
    cols = line.split("\t")
    if len(cols) != n:
        raise _fail(path, lineno, f"found {len(cols)} tab-separated columns, expected {n} ({expected})")
    return cols


def _nonempty(path, lineno, value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, lineno, f"field {field!r} is missing or empty; expected a non-empty string")
    return value


def _jsonl(path, expected: str, in_nfc: bool = True) -> Iterator[tuple[int, dict]]:
    """Every line's JSON object (its strings in NFC unless ``in_nfc`` is false)."""
    for lineno, line in enumerate(_lines(path, expected, in_nfc=False), 1):
        if not line.strip():
            raise _fail(path, lineno, f"empty line; expected one JSON object per line ({expected})")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(path, lineno, f"invalid JSON ({e.msg}); expected {expected}") from None
        if not isinstance(obj, dict):
            raise _fail(path, lineno, f"expected a JSON object ({expected})")
        yield lineno, nfc(obj) if in_nfc else obj


def _field(path, lineno, obj: dict, key: str, expected: str) -> Any:
    if key not in obj:
        raise _fail(path, lineno, f"missing field {key!r}; expected {expected}")
    return obj[key]


def _span(path, lineno, value, limit: int, where: str, of: str = "text") -> tuple[int, int]:
    """``value`` as a ``[start, end]`` pair of character offsets into a text of ``limit`` characters."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in value)
            or not 0 <= value[0] <= value[1] <= limit):
        raise _fail(path, lineno, f"{where}: expected [start, end] with 0 <= start <= end <= {limit} ({of} length), "
                                  f"got {value!r}")
    return value[0], value[1]


def _check_unique(path, examples: list[dict]) -> list[dict]:
    seen: set[str] = set()
    for ex in examples:
        if ex["id"] in seen:
            raise _fail(path, None, f"duplicate example id {ex['id']!r}; ids must be unique")
        seen.add(ex["id"])
    return examples


def _scorable_labels(path, examples: list[dict]) -> list[dict]:
    """``examples`` if they have at least two labels: a set with one label scores any model that
    always answers it 100% and tells nothing (a filtered file, a wrong column)."""
    labels = {ex["label"] for ex in examples}
    if not labels:
        raise _fail(path, None, "no examples found")
    if len(labels) < 2:
        raise _fail(path, None, f"all {len(examples)} examples have the label {next(iter(labels))!r}; a "
                                f"classification set needs at least two labels to be scored")
    return examples


# ---------------------------------------------------------------- sequence classification


def read_xnli_tsv(path) -> list[dict]:
    """XTREME XNLI: ``premise<TAB>hypothesis<TAB>label``, no header; labels
    entailment/neutral/contradiction (``contradictory`` is read as contradiction)."""
    what = "premise<TAB>hypothesis<TAB>entailment|neutral|contradiction"
    out = []
    for lineno, line in enumerate(_lines(path, what), 1):
        a, b, label = _columns(path, lineno, line, 3, what)
        label = "contradiction" if label == "contradictory" else label
        if label not in NLI_LABELS:
            raise _fail(path, lineno, f"label {label!r} is not one of {', '.join(NLI_LABELS)}")
        _nonempty(path, lineno, a, "premise")
        _nonempty(path, lineno, b, "hypothesis")
        out.append({"id": str(lineno - 1), "text_a": a, "text_b": b, "label": label})
    return _scorable_labels(path, out)


#: Columns of the XNLI-1.0 release's xnli.dev.tsv / xnli.test.tsv that adaptertx reads (of its header's 19).
XNLI10_COLUMNS = ("language", "gold_label", "sentence1", "sentence2", "pairID")


def read_xnli10_tsv(path) -> dict[str, list[dict]]:
    """The XNLI-1.0 release file (``xnli.test.tsv`` / ``xnli.dev.tsv``): every language in one
    tab-separated file with a header (``language, gold_label, sentence1_binary_parse, ...,
    sentence1, sentence2, promptID, pairID, genre, ...``). Returns ``{language: examples}`` in
    file order; ids are the ``pairID`` (shared by an item's translations)."""
    what = "the XNLI-1.0 header (language, gold_label, ..., sentence1, sentence2, ..., pairID, ...)"
    lines = _lines(path, what)
    header = lines[0].split("\t")
    if not set(XNLI10_COLUMNS) <= set(header):
        raise _fail(path, 1, f"header lacks {', '.join(c for c in XNLI10_COLUMNS if c not in header)}; "
                             f"expected {what}")
    col = {name: header.index(name) for name in XNLI10_COLUMNS}
    by_lang: dict[str, list[dict]] = {}
    for lineno, line in enumerate(lines[1:], 2):
        cols = _columns(path, lineno, line, len(header), "one value per header column")
        label = "contradiction" if cols[col["gold_label"]] == "contradictory" else cols[col["gold_label"]]
        if label not in NLI_LABELS:
            raise _fail(path, lineno, f"gold_label {label!r} is not one of {', '.join(NLI_LABELS)}")
        lang = normalize_or_keep(_nonempty(path, lineno, cols[col["language"]], "language"))
        by_lang.setdefault(lang, []).append({
            "id": _nonempty(path, lineno, cols[col["pairID"]], "pairID"),
            "text_a": _nonempty(path, lineno, cols[col["sentence1"]], "sentence1"),
            "text_b": _nonempty(path, lineno, cols[col["sentence2"]], "sentence2"), "label": label})
    if not by_lang:
        raise _fail(path, None, "no rows after the header")
    for lang, rows in by_lang.items():
        _check_unique(f"{path} ({lang})", rows)
        _scorable_labels(f"{path} ({lang})", rows)
    return by_lang


def read_pawsx_tsv(path) -> list[dict]:
    """PAWS-X: XTREME's ``sentence1<TAB>sentence2<TAB>label`` (no header), or the original
    release with header ``id sentence1 sentence2 label``. Labels 0 (not paraphrase) / 1."""
    what = "sentence1<TAB>sentence2<TAB>0|1"
    lines = _lines(path, what)
    with_id = lines[0].split("\t") == ["id", "sentence1", "sentence2", "label"]
    out = []
    for lineno, line in enumerate(lines, 1):
        if with_id and lineno == 1:
            continue
        if with_id:
            ident, a, b, label = _columns(path, lineno, line, 4, "id<TAB>sentence1<TAB>sentence2<TAB>0|1")
        else:
            a, b, label = _columns(path, lineno, line, 3, what)
            ident = str(lineno - 1)
        if label not in PARAPHRASE_LABELS:
            raise _fail(path, lineno, f"label {label!r} is not 0 or 1")
        _nonempty(path, lineno, a, "sentence1")
        _nonempty(path, lineno, b, "sentence2")
        out.append({"id": ident, "text_a": a, "text_b": b, "label": label})
    return _scorable_labels(path, _check_unique(path, out))


def read_mrpc_tsv(path) -> list[dict]:
    """MRPC as released by Microsoft: header ``Quality #1 ID #2 ID #1 String #2 String``,
    tab-separated; id = ``"<#1 ID>-<#2 ID>"``; label = Quality (0/1)."""
    what = "Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String"
    lines = _lines(path, what)
    if lines[0].split("\t") != ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]:
        raise _fail(path, 1, f"header not found; expected {what}")
    out = []
    for lineno, line in enumerate(lines[1:], 2):
        label, id1, id2, a, b = _columns(path, lineno, line, 5, what)
        if label not in PARAPHRASE_LABELS:
            raise _fail(path, lineno, f"Quality {label!r} is not 0 or 1")
        _nonempty(path, lineno, a, "#1 String")
        _nonempty(path, lineno, b, "#2 String")
        out.append({"id": f"{id1}-{id2}", "text_a": a, "text_b": b, "label": label})
    if not out:
        raise _fail(path, None, "no rows after the header")
    return _scorable_labels(path, _check_unique(path, out))


def read_anli_jsonl(path) -> list[dict]:
    """ANLI release format: jsonl with ``uid``, ``premise``, ``hypothesis``, ``label`` (e/n/c)."""
    what = '{"uid", "premise", "hypothesis", "label": "e"|"n"|"c"}'
    names = {"e": "entailment", "n": "neutral", "c": "contradiction"}
    out = []
    for lineno, obj in _jsonl(path, what):
        label = _field(path, lineno, obj, "label", what)
        if label not in names:
            raise _fail(path, lineno, f"label {label!r} is not one of e, n, c")
        out.append({
            "id": _nonempty(path, lineno, _field(path, lineno, obj, "uid", what), "uid"),
            "text_a": _nonempty(path, lineno, _field(path, lineno, obj, "premise", what), "premise"),
            "text_b": _nonempty(path, lineno, _field(path, lineno, obj, "hypothesis", what), "hypothesis"),
            "label": names[label],
        })
    return _scorable_labels(path, _check_unique(path, out))


# ---------------------------------------------------------------- multiple choice


def read_copa_jsonl(path) -> list[dict]:
    """COPA / XCOPA jsonl: ``premise``, ``choice1``, ``choice2``, ``question`` (cause|effect),
    ``label`` (0|1), ``idx``. The question becomes an English template (see COPA_QUESTIONS)."""
    what = '{"premise", "choice1", "choice2", "question": "cause"|"effect", "label": 0|1, "idx"}'
    out = []
    for lineno, obj in _jsonl(path, what):
        q = _field(path, lineno, obj, "question", what)
        if q not in COPA_QUESTIONS:
            raise _fail(path, lineno, f"question {q!r} is not 'cause' or 'effect'")
        label = _field(path, lineno, obj, "label", what)
        if label not in (0, 1) or isinstance(label, bool):
            raise _fail(path, lineno, f"label {label!r} is not 0 or 1")
        idx = obj.get("idx", lineno - 1)
        out.append({
            "id": str(idx),
            "context": _nonempty(path, lineno, _field(path, lineno, obj, "premise", what), "premise"),
            "question": COPA_QUESTIONS[q],
            "choices": [_nonempty(path, lineno, _field(path, lineno, obj, k, what), k) for k in ("choice1", "choice2")],
            "label": label,
        })
    return _check_unique(path, out)


def read_siqa_jsonl(path) -> list[dict]:
    """Social IQa jsonl with the answer inline: ``context``, ``question``, ``answerA/B/C``,
    ``correct`` (A|B|C). Ids are line numbers from 0."""
    what = '{"context", "question", "answerA", "answerB", "answerC", "correct": "A"|"B"|"C"}'
    out = []
    for lineno, obj in _jsonl(path, what):
        correct = _field(path, lineno, obj, "correct", what)
        if correct not in ("A", "B", "C"):
            raise _fail(path, lineno, f"correct {correct!r} is not A, B or C")
        out.append({
            "id": str(lineno - 1),
            "context": _nonempty(path, lineno, _field(path, lineno, obj, "context", what), "context"),
            "question": _nonempty(path, lineno, _field(path, lineno, obj, "question", what), "question"),
            "choices": [_nonempty(path, lineno, _field(path, lineno, obj, f"answer{k}", what), f"answer{k}")
                        for k in "ABC"],
            "label": "ABC".index(correct),
        })
    return out


def read_commonsenseqa_jsonl(path) -> list[dict]:
    """CommonsenseQA jsonl, either the original schema (``question: {stem, choices: [{label,
    text}]}``) or the Hugging Face one (``question`` string, ``choices: {label, text}``);
    ``answerKey`` A–E. Context is empty (CommonsenseQA has none)."""
    what = '{"id", "question", "choices", "answerKey"}'
    out = []
    for lineno, obj in _jsonl(path, what):
        q = _field(path, lineno, obj, "question", what)
        if isinstance(q, dict):
            stem = q.get("stem")
            labels = [c.get("label") for c in q.get("choices", []) if isinstance(c, dict)]
            texts = [c.get("text") for c in q.get("choices", []) if isinstance(c, dict)]
        else:
            stem = q
            ch = _field(path, lineno, obj, "choices", what)
            if not isinstance(ch, dict):
                raise _fail(path, lineno, "choices must be an object {label: [...], text: [...]}")
            labels, texts = ch.get("label") or [], ch.get("text") or []
        _nonempty(path, lineno, stem, "question")
        if len(labels) < 2 or len(labels) != len(texts):
            raise _fail(path, lineno, "choices must have matching label and text lists with at least 2 entries")
        for t in texts:
            _nonempty(path, lineno, t, "choice text")
        key = _field(path, lineno, obj, "answerKey", what)
        if key not in labels:
            raise _fail(path, lineno, f"answerKey {key!r} is not one of the choice labels {labels}")
        out.append({
            "id": _nonempty(path, lineno, _field(path, lineno, obj, "id", what), "id"),
            "context": "", "question": stem, "choices": list(texts), "label": labels.index(key),
        })
    return _check_unique(path, out)


def read_cosmosqa_csv(path) -> list[dict]:
    """Cosmos QA csv: header ``id,context,question,answer0,answer1,answer2,answer3,label``."""
    cols = ["id", "context", "question", "answer0", "answer1", "answer2", "answer3", "label"]
    text = _read_text(path, ",".join(cols))
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    if header != cols:
        raise _fail(path, 1, f"header {header!r} does not match; expected {','.join(cols)}")
    out = []
    for row in reader:
        lineno = reader.line_num
        if len(row) != len(cols):
            raise _fail(path, lineno, f"found {len(row)} columns, expected {len(cols)} ({','.join(cols)})")
        rec = dict(zip(cols, row, strict=True))
        if rec["label"] not in ("0", "1", "2", "3"):
            raise _fail(path, lineno, f"label {rec['label']!r} is not 0, 1, 2 or 3")
        for k in cols[:7]:
            if k != "context":
                _nonempty(path, lineno, rec[k], k)
        out.append({
            "id": rec["id"], "context": rec["context"], "question": rec["question"],
            "choices": [rec[f"answer{i}"] for i in range(4)], "label": int(rec["label"]),
        })
    if not out:
        raise _fail(path, None, "no rows after the header")
    return _check_unique(path, out)


def read_hellaswag_txt(path) -> list[dict]:
    """HellaSwag in the 6-lines-per-item text form (klosax/hellaswag_text_data): context,
    gold label 0–3, four endings. Context becomes ``context``; ``question`` is empty."""
    what = "6 lines per item: context, label 0-3, ending0..ending3"
    lines = _lines(path, what)
    if len(lines) % 6:
        raise _fail(path, len(lines), f"file has {len(lines)} lines, not a multiple of 6 ({what})")
    out = []
    for i in range(0, len(lines), 6):
        ctx, label, *ends = lines[i : i + 6]
        _nonempty(path, i + 1, ctx, "context")
        if label not in ("0", "1", "2", "3"):
            raise _fail(path, i + 2, f"label {label!r} is not 0, 1, 2 or 3 ({what})")
        for j, e in enumerate(ends):
            _nonempty(path, i + 3 + j, e, f"ending{j}")
        out.append({"id": str(i // 6), "context": ctx, "question": "", "choices": ends, "label": int(label)})
    return out


# ---------------------------------------------------------------- token tagging


def _sentences(path, what: str) -> Iterator[tuple[int, list[tuple[int, str]]]]:
    """Yield (first line number, [(line number, line), ...]) per blank-line separated block."""
    block: list[tuple[int, str]] = []
    for lineno, line in enumerate(_lines(path, what), 1):
        if line.strip():
            block.append((lineno, line))
        elif block:
            yield block[0][0], block
            block = []
    if block:
        yield block[0][0], block


def _check_bio(path, lineno, tag: str) -> str:
    if not _BIO.match(tag):
        raise _fail(path, lineno, f"tag {tag!r} is not a BIO tag (O, B-TYPE or I-TYPE)")
    return tag


_CONLLU_ID = re.compile(r"^[1-9][0-9]*(?:-[1-9][0-9]*|\.[1-9][0-9]*)?$")


def read_conllu(path) -> list[dict]:
    """CoNLL-U: UPOS (column 4) per syntactic word, as UD scores it. Multiword-token range lines
    (``3-4``, the surface token of words 3 and 4) and empty nodes (``5.1``) are skipped; comment
    lines start with ``#`` (none are needed)."""
    what = "CoNLL-U: 10 tab-separated columns per word line, blank line between sentences"
    out = []
    for _, block in _sentences(path, what):
        tokens, tags = [], []
        for lineno, line in block:
            if line.startswith("#"):
                continue
            cols = _columns(path, lineno, line, 10, what)
            ident = cols[0]
            if not _CONLLU_ID.match(ident):
                raise _fail(path, lineno, f"word id {ident!r} is not an integer, a range (3-4) or a decimal (5.1)")
            if "-" in ident or "." in ident:
                continue
            if cols[3] not in UPOS_TAGS:
                raise _fail(path, lineno, f"UPOS {cols[3]!r} is not one of the 17 UPOS tags")
            tokens.append(_nonempty(path, lineno, cols[1], "FORM"))
            tags.append(cols[3])
        if tokens:
            out.append({"id": str(len(out)), "tokens": tokens, "tags": tags})
    if not out:
        raise _fail(path, None, f"no sentences found; expected {what}")
    return out


def _two_col_tagging(path, what: str, split: Callable[[str], list[str]], check: Callable) -> list[dict]:
    out = []
    ncols = None
    for _, block in _sentences(path, what):
        tokens, tags = [], []
        for lineno, line in block:
            cols = split(line)
            if cols[0] == "-DOCSTART-":
                break
            if ncols is None:
                ncols = len(cols)
            if len(cols) < 2 or len(cols) != ncols:
                expected = ncols if ncols and ncols >= 2 else 2
                raise _fail(path, lineno, f"found {len(cols)} columns, expected {expected} ({what})")
            tokens.append(_nonempty(path, lineno, cols[0], "token"))
            tags.append(check(path, lineno, cols[-1]))
        if tokens:
            out.append({"id": str(len(out)), "tokens": tokens, "tags": tags})
    if not out:
        raise _fail(path, None, f"no sentences found; expected {what}")
    return out


def read_conll_ner(path) -> list[dict]:
    """CoNLL-2003 / MasakhaNER column format: whitespace-separated columns, token first, BIO
    tag last (same number of columns on every line), blank line between sentences;
    ``-DOCSTART-`` blocks are skipped."""
    return _two_col_tagging(path, "token ... BIO-tag per line, blank line between sentences",
                            str.split, _check_bio)


def read_panx_tsv(path) -> list[dict]:
    """PAN-X/WikiANN as XTREME writes it: ``token<TAB>BIO-tag``, blank line between sentences."""
    def split(line: str) -> list[str]:
        return line.split("\t")
    return _two_col_tagging(path, "token<TAB>BIO-tag per line, blank line between sentences", split, _check_bio)


def read_udpos_tsv(path) -> list[dict]:
    """XTREME UD-POS: ``token<TAB>UPOS``, blank line between sentences. A CoNLL-U file is refused
    with a pointer to the ``conllu`` format (:func:`detect_format` picks it for UD-POS files)."""
    if looks_like_conllu(path):
        raise _fail(path, None, "this is CoNLL-U (10 tab-separated columns per word), not token<TAB>UPOS; "
                                "read it with the conllu format")
    def check(path, lineno, tag):
        if tag not in UPOS_TAGS:
            raise _fail(path, lineno, f"tag {tag!r} is not one of the 17 UPOS tags")
        return tag

    def split(line: str) -> list[str]:
        return line.split("\t")
    return _two_col_tagging(path, "token<TAB>UPOS per line, blank line between sentences", split, check)


_COMPRESSED = (".xz", ".gz", ".bz2")


def looks_like_conllu(path) -> bool:
    """Whether ``path`` is CoNLL-U: named ``*.conllu`` (compressed or not), or its first line
    that is not a comment has 10 tab-separated columns and a CoNLL-U word id first."""
    name = Path(path).name
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    if name.endswith(".conllu"):
        return True
    for line in _read_text(path, "CoNLL-U or token<TAB>tag lines").split("\n"):
        if line.strip() and not line.startswith("#"):
            cols = line.split("\t")
            return len(cols) == 10 and bool(_CONLLU_ID.match(cols[0]))
    return False


def looks_like_xnli10(path) -> bool:
    """Whether ``path`` is the XNLI-1.0 release's all-language file (its header names ``language``
    and ``gold_label`` first)."""
    return _read_text(path, "XNLI rows").split("\n", 1)[0].split("\t")[:2] == ["language", "gold_label"]


def detect_format(path, fmt: str) -> str:
    """The format of ``path``, a file of a task whose files are in ``fmt``: UD-POS files
    (``udpos_tsv``) that are CoNLL-U (:func:`looks_like_conllu`) are ``conllu``; XNLI files
    (``xnli_tsv``) that are the XNLI-1.0 all-language file are ``xnli10_tsv``. Otherwise ``fmt``."""
    if fmt == "udpos_tsv" and looks_like_conllu(path):
        return "conllu"
    if fmt == "xnli_tsv" and looks_like_xnli10(path):
        return "xnli10_tsv"
    return fmt


# ---------------------------------------------------------------- extractive QA


def _squad_paragraphs(path, what: str) -> Iterator[tuple[int, int, str, str, dict]]:
    """Every paragraph of a SQuAD-style JSON file as ``(article index, paragraph index, article
    title, JSON path, paragraph)``, its ``context`` a string and ``qas`` a list (clear errors
    naming the JSON path otherwise). Strings are as written (not yet NFC: offsets point into them)."""
    text = _read_text(path, what, in_nfc=False)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, e.lineno, f"invalid JSON ({e.msg}); expected {what}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise _fail(path, None, f"top level must be an object with a 'data' list ({what})")
    for ai, art in enumerate(doc["data"]):
        where = f"data[{ai}]"
        if not isinstance(art, dict) or not isinstance(art.get("paragraphs"), list):
            raise _fail(path, None, f"{where}: expected an object with a 'paragraphs' list")
        for pi, par in enumerate(art["paragraphs"]):
            pw = f"{where}.paragraphs[{pi}]"
            if (not isinstance(par, dict) or not isinstance(par.get("context"), str)
                    or not isinstance(par.get("qas"), list)):
                raise _fail(path, None, f"{pw}: expected an object with 'context' (string) and 'qas' (list)")
            yield ai, pi, nfc(art.get("title") or ""), pw, par


def _squad_qas(path, pw: str, par: dict) -> Iterator[tuple[str, dict]]:
    """Every question of a paragraph as ``(JSON path, qa)``, with ``id``, ``question`` and ``answers``."""
    for qi, qa in enumerate(par["qas"]):
        qw = f"{pw}.qas[{qi}]"
        if not isinstance(qa, dict):
            raise _fail(path, None, f"{qw}: expected an object")
        for k in ("id", "question", "answers"):
            if k not in qa:
                raise _fail(path, None, f"{qw}: missing field {k!r}; expected id, question, answers")
        yield qw, qa


def _squad_answers(path, qw: str, qa: dict, ctx: str, move: Callable[[int], int]) -> tuple[list[str], list[int]]:
    """A question's gold answers (NFC) and their offsets into the NFC context; each must be the
    text of the context at its offset. Empty answers are returned as they are (counted by the caller)."""
    if not isinstance(qa["answers"], list) or not qa["answers"]:
        raise _fail(path, None, f"{qw}: 'answers' must be a non-empty list")
    texts, starts = [], []
    for ni, ans in enumerate(qa["answers"]):
        aw = f"{qw}.answers[{ni}]"
        if (not isinstance(ans, dict) or not isinstance(ans.get("text"), str)
                or not isinstance(ans.get("answer_start"), int) or isinstance(ans.get("answer_start"), bool)):
            raise _fail(path, None, f"{aw}: expected {{'text': str, 'answer_start': int}}")
        s, t = ans["answer_start"], ans["text"]
        if s < 0 or s + len(t) > len(ctx):
            raise _fail(path, None, f"{aw}: answer_start {s} (+{len(t)} chars) lies outside the context "
                                    f"({len(ctx)} chars)")
        if ctx[s : s + len(t)] != t:
            raise _fail(path, None, f"{aw}: context at answer_start {s} is {ctx[s:s + len(t)]!r}, "
                                    f"not the answer {t!r}; the offsets do not match the context")
        move(s + len(t))  # the answer's end, too, lies between whole characters of the NFC context
        texts.append(nfc(t))
        starts.append(move(s))
    return texts, starts


def read_squad_json(path) -> list[dict]:
    """SQuAD v1.1 json (XQuAD, MLQA, TyDiQA-GoldP): ``{"data": [{"title", "paragraphs":
    [{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}``.
    Every answer must be the text of the context at its ``answer_start``, and not empty (a file
    whose answers are blank, as XTREME's download script leaves the test sets, is refused).
    Structure errors name the JSON path (``data[3].paragraphs[0]``)."""
    what = "SQuAD v1.1 json"
    out, empty = [], []
    for _, _, title, pw, par in _squad_paragraphs(path, what):
        ctx, move = nfc_offsets(path, f"{pw}.context", par["context"])
        for qw, qa in _squad_qas(path, pw, par):
            texts, starts = _squad_answers(path, qw, qa, par["context"], move)
            if not any(t.strip() for t in texts):
                empty.append(qw)
            out.append({
                "id": str(qa["id"]), "title": title, "context": ctx,
                "question": nfc(_nonempty(path, None, qa["question"], f"{qw}.question")),
                "answers": {"text": texts, "answer_start": starts},
            })
    if not out:
        raise _fail(path, None, f"no questions found ({what})")
    if empty:
        raise _fail(path, None, f"{len(empty)} of {len(out)} questions have only empty gold answers (first: "
                                f"{empty[0]}), so nothing can be scored; XTREME's download script blanks the "
                                f"test answers: use the release's own file")
    return _check_unique(path, out)


def read_xquadr_json(path) -> dict[str, list[dict]]:
    """XQuAD-R json (LAReQA's release, one file per language, ``xquad-r/<lang>.json``): SQuAD
    v1.1 json whose paragraphs also carry ``sentences`` (list of str) and ``sentence_breaks``
    (``[start, end]`` character offsets into ``context``, one per sentence).

    Returns ``{"candidates": [{"id", "text", "context"}], "questions": [{"id", "question",
    "answer_sentence"}]}``: every sentence of every paragraph, id ``"<article>.<paragraph>.<sentence>"``
    (file order), and every question with the id of the sentence holding its answer (the sentence
    whose break range contains the first answer's ``answer_start``). Question ids are kept (they are
    shared across the languages of XQuAD-R). A paragraph without sentence breaks is refused:
    sentences are never guessed.
    """
    what = "XQuAD-R json (SQuAD v1.1 with 'sentences' and 'sentence_breaks' per paragraph)"
    candidates, questions = [], []
    for ai, pi, _, pw, par in _squad_paragraphs(path, what):
        raw = par["context"]
        ctx = nfc(raw)  # sentence breaks and answer offsets are compared in the text as written
        sents, breaks = par.get("sentences"), par.get("sentence_breaks")
        if not isinstance(sents, list) or not isinstance(breaks, list):
            raise _fail(path, None, f"{pw}: no 'sentences' and 'sentence_breaks' lists; XQuAD-R (LAReQA's "
                                    f"release) has them, plain SQuAD/XQuAD files do not")
        if len(sents) != len(breaks) or not sents:
            raise _fail(path, None, f"{pw}: {len(sents)} sentences but {len(breaks)} sentence breaks; "
                                    f"expected one [start, end] per sentence, at least one")
        spans = []
        for si, (sent, br) in enumerate(zip(sents, breaks, strict=True)):
            _nonempty(path, None, sent, f"{pw}.sentences[{si}]")
            spans.append(_span(path, None, br, len(raw), f"{pw}.sentence_breaks[{si}]", of="context"))
            candidates.append({"id": f"{ai}.{pi}.{si}", "text": nfc(sent), "context": ctx})
        for qw, qa in _squad_qas(path, pw, par):
            answers = qa["answers"]
            if not isinstance(answers, list) or not answers or not isinstance(answers[0], dict) \
                    or not isinstance(answers[0].get("answer_start"), int):
                raise _fail(path, None, f"{qw}: 'answers' must be a non-empty list of {{'text', 'answer_start': int}}")
            start = answers[0]["answer_start"]
            # End offsets exclusive first; an inclusive end is accepted where no range holds the start.
            hit = next((si for si, (a, b) in enumerate(spans) if a <= start < b), None)
            if hit is None:
                hit = next((si for si, (a, b) in enumerate(spans) if a <= start <= b), None)
            if hit is None:
                raise _fail(path, None, f"{qw}: answer_start {start} lies in no sentence break range")
            questions.append({"id": str(qa["id"]),
                              "question": nfc(_nonempty(path, None, qa["question"], f"{qw}.question")),
                              "answer_sentence": f"{ai}.{pi}.{hit}"})
    if not questions:
        raise _fail(path, None, f"no questions found ({what})")
    _check_unique(path, questions)
    return {"candidates": candidates, "questions": questions}


# ---------------------------------------------------------------- retrieval


def read_tatoeba_pair(path, target: str | os.PathLike | None = None) -> list[dict]:
    """Two line-aligned plain-text files: ``path`` (non-English) and ``target`` (English).
    ``path`` may also be a ``(source, target)`` pair. Ids are line indices from 0."""
    if target is None:
        if isinstance(path, (tuple, list)) and len(path) == 2:
            path, target = path
        else:
            raise AdaptertxError(f"{path}: tatoeba_pair needs the English file too: "
                                 "read_file(src, 'tatoeba_pair', target=eng)")
    what = "one sentence per line, line-aligned with the other file"
    src, tgt = _lines(path, what), _lines(target, what)
    if len(src) != len(tgt):
        raise AdaptertxError(f"{path} has {len(src)} lines but {target} has {len(tgt)}; expected line-aligned files")
    out = []
    for i, (s, t) in enumerate(zip(src, tgt, strict=True), 1):
        _nonempty(path, i, s, "sentence")
        _nonempty(target, i, t, "sentence")
        out.append({"id": str(i - 1), "source": s, "target": t})
    return out


def read_bucc_sentences(path) -> dict[str, str]:
    """BUCC sentence file: ``<lang>-<id><TAB>sentence`` per line → {id: sentence}."""
    what = "<id><TAB><sentence>"
    out: dict[str, str] = {}
    for lineno, line in enumerate(_lines(path, what), 1):
        ident, sent = _columns(path, lineno, line, 2, what)
        _nonempty(path, lineno, ident, "id")
        if ident in out:
            raise _fail(path, lineno, f"duplicate sentence id {ident!r}")
        out[ident] = sent
    return out


def read_bucc_gold(path) -> list[tuple[str, str]]:
    """BUCC gold file: ``<source id><TAB><English id>`` per line."""
    what = "<source-id><TAB><en-id>"
    out = []
    for lineno, line in enumerate(_lines(path, what), 1):
        a, b = _columns(path, lineno, line, 2, what)
        _nonempty(path, lineno, a, "source id")
        _nonempty(path, lineno, b, "English id")
        out.append((a, b))
    return out


def read_mewsli_candidates(path) -> list[dict]:
    """Mewsli-X candidate set (``candidate_set_entities.jsonl``): one entity per line with
    ``entity_id`` (WikiData QID), ``description`` (up to three sentences of its Wikipedia page)
    and ``description_language``; ``title``, ``description_url`` and ``sentence_spans`` are not
    needed. Returns ``[{"id", "text", "language"}]`` in file order; ids must be unique.
    """
    what = "Mewsli-X candidate jsonl (entity_id, description, description_language per line)"
    out = []
    for lineno, obj in _jsonl(path, what):
        out.append({"id": _nonempty(path, lineno, _field(path, lineno, obj, "entity_id", what), "entity_id"),
                    "text": _nonempty(path, lineno, _field(path, lineno, obj, "description", what), "description"),
                    "language": str(obj.get("description_language") or "")})
    if not out:
        raise _fail(path, None, f"no entities found ({what})")
    return _check_unique(path, out)


def read_mewsli_mentions(path) -> list[dict]:
    """Mewsli-X WikiNews mentions (``wikinews_mentions-{dev,test}.jsonl``): one article per line,
    ``{"context": {"document_id", "language", "text", "sentence_spans": [[start, end], ...]},
    "mentions": [{"example_id", "entity_id", "mention_span": {"text", "start", "end"}}]}``
    (character offsets into ``context.text``).

    Returns one row per mention: ``{"id", "language", "entity_id", "mention", "sentence"}``, where
    ``sentence`` is the sentence of the article that holds the mention (the sentence span that
    contains its start). The released ``wikinews_mentions_no_text-*.jsonl`` files have empty
    article text; they are refused with the step that restores it.
    """
    what = "Mewsli-X wikinews_mentions jsonl ({context: {language, text, sentence_spans}, mentions: [...]} per line)"
    out = []
    for lineno, obj in _jsonl(path, what, in_nfc=False):
        ctx = _field(path, lineno, obj, "context", what)
        mentions = _field(path, lineno, obj, "mentions", what)
        if not isinstance(ctx, dict) or not isinstance(mentions, list):
            raise _fail(path, lineno, f"'context' must be an object and 'mentions' a list ({what})")
        text = ctx.get("text")
        if not isinstance(text, str) or not text:
            raise _fail(path, lineno, "context.text is empty: the released wikinews_mentions_no_text-*.jsonl files "
                                      "leave the article text out; run the release's get-mewsli-x.sh to restore it "
                                      "into wikinews_mentions-*.jsonl")
        norm, move = nfc_offsets(f"{path}, line {lineno}", "context.text", text)
        lang = _nonempty(path, lineno, _field(path, lineno, ctx, "language", what), "context.language")
        spans = [_span(path, lineno, s, len(text), f"context.sentence_spans[{i}]")
                 for i, s in enumerate(_field(path, lineno, ctx, "sentence_spans", what) or [])]
        for mi, m in enumerate(mentions):
            where = f"mentions[{mi}]"
            if not isinstance(m, dict) or not isinstance(m.get("mention_span"), dict):
                raise _fail(path, lineno, f"{where}: expected an object with 'mention_span'")
            ms = m["mention_span"]
            start, end = _span(path, lineno, [ms.get("start"), ms.get("end")], len(text), f"{where}.mention_span")
            surface = _nonempty(path, lineno, ms.get("text"), f"{where}.mention_span.text")
            if text[start:end] != surface:
                raise _fail(path, lineno, f"{where}: the article text at [{start}, {end}] is {text[start:end]!r}, "
                                          f"not the mention {surface!r}")
            a, b = next(((a, b) for a, b in spans if a <= start < b), (start, end))
            out.append({"id": _nonempty(path, lineno, m.get("example_id"), f"{where}.example_id"), "language": lang,
                        "entity_id": _nonempty(path, lineno, m.get("entity_id"), f"{where}.entity_id"),
                        "mention": nfc(surface), "sentence": norm[move(a):move(max(b, end))].strip()})
    if not out:
        raise _fail(path, None, f"no mentions found ({what})")
    return _check_unique(path, out)


READERS: dict[str, Callable[..., Any]] = {
    "xnli_tsv": read_xnli_tsv,
    "xnli10_tsv": read_xnli10_tsv,
    "pawsx_tsv": read_pawsx_tsv,
    "mrpc_tsv": read_mrpc_tsv,
    "anli_jsonl": read_anli_jsonl,
    "copa_jsonl": read_copa_jsonl,
    "xcopa_jsonl": read_copa_jsonl,  # same format as COPA (XCOPA adds an ignored "changed" field)
    "siqa_jsonl": read_siqa_jsonl,
    "commonsenseqa_jsonl": read_commonsenseqa_jsonl,
    "cosmosqa_csv": read_cosmosqa_csv,
    "hellaswag_txt": read_hellaswag_txt,
    "conllu": read_conllu,
    "conll_ner": read_conll_ner,
    "panx_tsv": read_panx_tsv,
    "udpos_tsv": read_udpos_tsv,
    "squad_json": read_squad_json,
    "tatoeba_pair": read_tatoeba_pair,
    "bucc_sentences": read_bucc_sentences,
    "bucc_gold": read_bucc_gold,
    "xquadr_json": read_xquadr_json,
    "mewsli_candidates": read_mewsli_candidates,
    "mewsli_mentions": read_mewsli_mentions,
}
