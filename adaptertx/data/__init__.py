"""Real data bundled with adaptertx, and readers for the public release formats.

Every example has a unique string ``"id"`` (unique within its dataset, language and split;
items of parallel datasets keep the same id in every language) and the schema of its task
family:

* sequence classification (anli, mrpc, xnli, pawsx):
  ``{"id", "text_a", "text_b", "label": str}`` — NLI labels ``entailment`` / ``neutral`` /
  ``contradiction``; paraphrase labels ``"0"`` (not paraphrase) / ``"1"`` (paraphrase).
* multiple choice (copa, xcopa, siqa, cosmosqa, commonsenseqa, hellaswag):
  ``{"id", "context", "question", "choices": list[str], "label": int}``. COPA/XCOPA:
  context = premise, question = "What was the cause?" / "What happened as a result?" (the
  English template in every language), choices = [choice1, choice2].
* extractive QA (xquad, mlqa, tydiqa): SQuAD style ``{"id", "title", "context", "question",
  "answers": {"text": [...], "answer_start": [...]}}``.
* token tagging (udpos, masakhaner, conll03, panx): ``{"id", "tokens", "tags"}`` (UPOS for
  udpos, BIO for NER).
* retrieval (tatoeba, bucc): ``{"id", "source", "target"}`` (source = the non-English
  sentence, target = its English translation; Tatoeba in file order).

Text is in Unicode NFC, whatever the file held (see :mod:`adaptertx.data.readers`).
Language codes are :func:`adaptertx.languages.normalize` codes. Splits are ``"train"``,
``"validation"`` and ``"test"``; how each dataset's splits are formed is described in
:mod:`adaptertx.data.splits` and ``bundled/README.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from adaptertx.data import splits as _splits
from adaptertx.data.readers import READERS, detect_format
from adaptertx.errors import AdaptertxError
from adaptertx.languages import normalize

__all__ = ["load", "available", "read_file", "detect_format", "load_bucc", "BuccData", "FORMATS", "FAMILIES",
           "bundled_dir"]

FORMATS = tuple(sorted(READERS))

#: Each bundled dataset's task family (:data:`adaptertx.tasks.FAMILIES`), written into the manifest.
FAMILIES = {
    "anli": "classification", "mrpc": "classification", "xnli": "classification", "pawsx": "classification",
    "copa": "multiple_choice", "xcopa": "multiple_choice", "siqa": "multiple_choice",
    "cosmosqa": "multiple_choice", "commonsenseqa": "multiple_choice", "hellaswag": "multiple_choice",
    "xquad": "extractive_qa", "mlqa": "extractive_qa", "tydiqa": "extractive_qa",
    "udpos": "tagging", "masakhaner": "tagging", "conll03": "tagging", "panx": "tagging",
    "tatoeba": "retrieval", "bucc": "retrieval",
}

# How the released files (keyed by their own split name) become adaptertx splits.
_INTERMEDIATE = {"anli", "cosmosqa", "commonsenseqa", "hellaswag"}
_PARALLEL = {"xnli", "pawsx", "xquad"}
_CARVE = {"mrpc": ("train", "test"), "siqa": ("dev", "tst"), "copa": ("train", "val")}  # (carved, held out)
_RELEASED = {"train": "train", "dev": "validation", "val": "validation", "test": "test"}
_RELEASED_OVERRIDES = {"tydiqa": {"train": "train", "dev": "test"}}
# Formats whose ids are row numbers (prefixed with the released split name to stay unique).
_NUMBERED = {"xnli_tsv", "pawsx_tsv", "siqa_jsonl", "hellaswag_txt", "conllu", "conll_ner", "panx_tsv",
             "udpos_tsv", "tatoeba_pair", "copa_jsonl", "xcopa_jsonl"}


def bundled_dir() -> Path:
    """Folder of the bundled data (``ADAPTERTX_DATA_DIR`` overrides it, e.g. for a rebuild)."""
    env = os.environ.get("ADAPTERTX_DATA_DIR")
    return Path(env) if env else Path(__file__).with_name("bundled")


def read_file(path: str | os.PathLike | tuple, fmt: str, **kw: Any) -> Any:
    """Parse a user file in a public release format into the common schema.

    ``fmt`` is one of :data:`FORMATS`; ``tatoeba_pair`` takes ``target=<English file>`` (or
    ``path=(source, target)``). Raises :class:`AdaptertxError` naming file and line on
    malformed input.
    """
    if fmt not in READERS:
        raise AdaptertxError(f"unknown format {fmt!r}; available: {', '.join(FORMATS)}")
    return READERS[fmt](path, **kw)


@lru_cache(maxsize=4)
def _manifest(root: str) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise AdaptertxError(f"bundled data manifest {path} is missing; "
                             "rebuild with python -m adaptertx.data.build --src <data>")
    return json.loads(path.read_text(encoding="utf-8"))


def available(dataset: str | None = None) -> dict:
    """``{dataset: {lang: {split: n_examples}}}`` of the bundled data (read from the manifest)."""
    ds = _manifest(str(bundled_dir()))["datasets"]
    if dataset is None:
        return {name: {lang: dict(s) for lang, s in v["counts"].items()} for name, v in ds.items()}
    name = _check_dataset(dataset)
    return {name: {lang: dict(s) for lang, s in ds[name]["counts"].items()}}


def _check_dataset(dataset: str) -> str:
    name = dataset.strip().lower()
    ds = _manifest(str(bundled_dir()))["datasets"]
    if name not in ds:
        raise AdaptertxError(f"unknown dataset {dataset!r}; bundled: {', '.join(sorted(ds))}")
    return name


def _parse(root: Path, entry: dict) -> list[dict]:
    paths = entry["path"]
    if isinstance(paths, list):
        return READERS[entry["fmt"]](root / paths[0], target=root / paths[1])
    return READERS[entry["fmt"]](root / paths)


def _bucc_pairs(root: Path, files: dict) -> list[dict]:
    data = _bucc_from(root, files)
    return [{"id": f"{s}|{t}", "source": data.source[s], "target": data.target[t]} for s, t in data.gold]


def build_splits(dataset: str, lang: str, root: Path, files: dict) -> dict[str, list[dict]]:
    """All adaptertx splits of one dataset/language from its released files."""
    if dataset == "bucc":
        return {"test": _bucc_pairs(root, files)}
    released: dict[str, list[dict]] = {}
    for orig, entry in files.items():
        rows = _parse(root, entry)
        if entry["fmt"] in _NUMBERED:
            rows = [dict(ex, id=f"{orig}-{ex['id']}") for ex in rows]
        released[orig] = rows
    out: dict[str, list[dict]] = {}

    def add(split: str, ex: dict) -> None:
        out.setdefault(split, []).append(ex)

    if dataset in _INTERMEDIATE:
        for rows in released.values():
            for ex in rows:
                add(_splits.intermediate_split(dataset, ex["id"]), ex)
    elif dataset in _PARALLEL:
        key = _splits.parallel_key(dataset)
        if dataset == "pawsx":  # items sharing an English sentence stay in one split
            groups = _pawsx_groups(str(root))
            key = lambda ex: groups.get(ex["id"], ex["id"])  # noqa: E731
        for rows in released.values():
            for ex in rows:
                split = _splits.parallel_split(dataset, key(ex), lang)
                if split is not None:
                    add(split, ex)
    elif dataset in _CARVE:
        carved, held_out = _CARVE[dataset]
        for ex in released.get(carved, []):
            add(_splits.carve_split(dataset, ex["id"]), ex)
        if held_out in released:
            out["test"] = released[held_out]
    elif dataset == "mlqa":
        # MLQA-en (dev) is English QA training data as a whole; the other languages' dev
        # files are translations of subsets of it, offered as validation.
        out["train" if lang == "en" else "validation"] = released["dev"]
    else:
        names = _RELEASED_OVERRIDES.get(dataset, _RELEASED)
        for orig, rows in released.items():
            out.setdefault(names[orig], []).extend(rows)
    for split, rows in out.items():
        ids = [ex["id"] for ex in rows]
        if len(set(ids)) != len(ids):
            raise AdaptertxError(f"{dataset}/{lang}/{split}: duplicate example ids in the bundled data")
    return {s: out[s] for s in _splits.SPLITS if s in out}


@lru_cache(maxsize=2)
def _pawsx_groups(root: str) -> dict[str, str]:
    """PAWS-X item id → the group of English items sharing a sentence with it."""
    rows = []
    for orig, entry in _manifest(root)["datasets"]["pawsx"]["files"]["en"].items():
        parsed = _parse(Path(root), entry)
        if entry["fmt"] in _NUMBERED:
            parsed = [dict(ex, id=f"{orig}-{ex['id']}") for ex in parsed]
        rows += parsed
    return _splits.sentence_groups(rows)


@lru_cache(maxsize=32)
def _load_lang(root: str, dataset: str, lang: str) -> dict[str, list[dict]]:
    files = _manifest(root)["datasets"][dataset]["files"][lang]
    return build_splits(dataset, lang, Path(root), files)


def _copy(ex: dict) -> dict:
    out = {}
    for k, v in ex.items():
        if isinstance(v, list):
            v = list(v)
        elif isinstance(v, dict):
            v = {kk: list(vv) if isinstance(vv, list) else vv for kk, vv in v.items()}
        out[k] = v
    return out


def load(dataset: str, lang: str, split: str) -> list[dict]:
    """Examples of a bundled ``dataset`` in ``lang`` and ``split`` (train/validation/test).

    >>> len(load("xcopa", "sw", "test"))
    500
    """
    name = _check_dataset(dataset)
    root = str(bundled_dir())
    counts = _manifest(root)["datasets"][name]["counts"]
    try:
        code = normalize(lang)
    except AdaptertxError:
        code = lang
    if code not in counts:
        raise AdaptertxError(f"{name} has no language {lang!r}; bundled: {', '.join(sorted(counts))}")
    if split not in counts[code]:
        raise AdaptertxError(f"{name}/{code} has no split {split!r}; available: {', '.join(counts[code])}")
    return [_copy(ex) for ex in _load_lang(root, name, code)[split]]


@dataclass(frozen=True)
class BuccData:
    """BUCC 2018 mining data for one language pair (XTREME's "dev" = BUCC's sample split).

    ``source``: id → sentence in the non-English language; ``target``: id → English sentence;
    ``gold``: (source id, English id) pairs of true translations.
    """

    lang: str
    source: dict[str, str]
    target: dict[str, str]
    gold: list[tuple[str, str]]


def _bucc_from(root: Path, files: dict, lang: str = "zh") -> BuccData:
    source = READERS["bucc_sentences"](root / files["source"]["path"])
    target = READERS["bucc_sentences"](root / files["target"]["path"])
    gold = READERS["bucc_gold"](root / files["gold"]["path"])
    for s, t in gold:
        if s not in source or t not in target:
            missing = s if s not in source else t
            raise AdaptertxError(f"{files['gold']['path']}: gold pair ({s}, {t}) names unknown sentence id {missing!r}")
    return BuccData(lang=lang, source=source, target=target, gold=gold)


def load_bucc(lang: str = "zh") -> BuccData:
    """The bundled BUCC 2018 sentences and gold pairs for ``lang``-English (only zh is bundled)."""
    root = str(bundled_dir())
    files = _manifest(root)["datasets"]["bucc"]["files"]
    code = normalize(lang)
    if code not in files:
        raise AdaptertxError(f"bucc has no language {lang!r}; bundled: {', '.join(sorted(files))}")
    return _bucc_from(Path(root), files[code], code)
