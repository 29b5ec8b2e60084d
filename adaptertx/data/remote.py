"""Task data from the Hugging Face Hub, converted to adaptertx's common schema.

Where the Hub is reachable, :func:`load_remote` loads a task's dataset (:attr:`Task.hub`)
with ``datasets.load_dataset`` and converts its rows to the schema of the task's family
(see :mod:`adaptertx.data`): string ids, unique within the split; class labels as
adaptertx label strings; tags as label names. Offline, the bundled data
(:func:`adaptertx.data.load`) or a user file (``--data-file``) serves instead.

Split names are adaptertx's ``"train"``, ``"validation"`` and ``"test"``; each task maps
them to the Hub's names (:data:`SPLITS`), e.g. MNLI's ``validation`` is the Hub's
``validation_matched`` and XQuAD's and Tatoeba's ``test`` is the Hub's only split,
``validation``. Splits whose labels the Hub hides (GLUE and SuperGLUE test sets, label
``-1``) are refused: they cannot be scored.

Language codes in the Hub configs are adaptertx codes, except Tatoeba (XTREME's ISO 639-3
codes, e.g. ``cmn``, ``pes``, ``swh``) and MasakhaNER (ISO 639-3, e.g. ``swa``, ``yor``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import pycountry

from adaptertx.data.readers import nfc, nfc_offsets
from adaptertx.errors import AdaptertxError
from adaptertx.tasks import Task, get_task

__all__ = ["load_remote", "convert", "hub_config", "hub_source", "remote_splits", "SPLITS", "CONVERTERS"]

_SAME = {"train": "train", "validation": "validation", "test": "test"}

# adaptertx split -> the Hub's split name, per task.
SPLITS: dict[str, dict[str, str]] = {
    "mnli": {"train": "train", "validation": "validation_matched", "test": "test_matched"},
    "qqp": _SAME, "mrpc": _SAME, "xnli": _SAME, "pawsx": _SAME,
    "squad": {"train": "train", "validation": "validation"},
    "squad_v2": {"train": "train", "validation": "validation"},
    "xquad": {"test": "validation"},
    "mlqa": {"validation": "validation", "test": "test"},
    "tydiqa": {"train": "train", "test": "validation"},  # as bundled: the released dev set is the test set
    "copa": _SAME, "xcopa": {"validation": "validation", "test": "test"},
    "udpos": _SAME, "panx": _SAME, "masakhaner": _SAME, "conll03": _SAME,
    "tatoeba": {"test": "validation"},
}

# Splits published without labels (label -1 on the Hub).
_UNLABELLED = {("mnli", "test"), ("qqp", "test"), ("mrpc", "test"), ("copa", "test")}

# Hub configs written with ISO 639-3 codes; where the Hub's code is not pycountry's alpha_3.
_ISO3 = {
    "tatoeba": {"zh": "cmn", "fa": "pes", "sw": "swh", "ms": "zsm", "lv": "lvs"},
    "masakhaner": {},
}

# TyDi QA's gold-passage ids start with the language's English name.
_TYDIQA_NAMES = {"ar": "arabic", "bn": "bengali", "en": "english", "fi": "finnish", "id": "indonesian",
                 "ko": "korean", "ru": "russian", "sw": "swahili", "te": "telugu"}


def _iso3(task: Task, code: str) -> str:
    if code in _ISO3[task.name]:
        return _ISO3[task.name][code]
    if len(code) == 3:
        return code
    lang = pycountry.languages.get(alpha_2=code)
    if lang is None:
        raise AdaptertxError(f"no ISO 639-3 code known for {code!r} (needed by the {task.name} Hub config)")
    return lang.alpha_3


def hub_config(task: Task, lang: str) -> str | None:
    """The Hub config name of ``task`` in language ``lang`` (an adaptertx code)."""
    template = task.hub.config
    if template is None or "{lang}" not in template:
        return template
    return template.replace("{lang}", _iso3(task, lang) if task.name in _ISO3 else lang)


def hub_source(task_name: str, lang: str) -> str:
    """``"<dataset>/<config>"`` (or ``"<dataset>"``) that :func:`load_remote` reads, for provenance."""
    task = get_task(task_name)
    config = hub_config(task, task.check_language(lang))
    return f"{task.hub.dataset}/{config}" if config else str(task.hub.dataset)


def remote_splits(task_name: str) -> tuple[str, ...]:
    """The adaptertx splits :func:`load_remote` serves for ``task_name`` (empty if none)."""
    return tuple(SPLITS.get(get_task(task_name).name, {}))


# ------------------------------------------------------------------------------ converters


def _label_names(ds: Any, column: str) -> list[str] | None:
    """ClassLabel names of ``column`` (or of its items for a sequence), else ``None``."""
    feature = ds.features.get(column)
    feature = getattr(feature, "feature", feature)  # Sequence / List of ClassLabel
    if isinstance(feature, list) and feature:
        feature = feature[0]
    return list(feature.names) if hasattr(feature, "names") else None


def _ids(ds: Any, task: Task) -> list[str]:
    """String ids: the rows' ``id`` (or ``idx``) column when present and unique, else row numbers."""
    for column in ("id", "idx"):
        if column in ds.column_names:
            ids = [str(v) for v in ds[column]]
            if len(set(ids)) == len(ids):
                return ids
    return [str(i) for i in range(len(ds))]


def _columns(ds: Any, task: Task, *names: str) -> None:
    missing = [n for n in names if n not in ds.column_names]
    if missing:
        raise AdaptertxError(f"{task.name}: the Hub dataset {task.hub.dataset} has no column(s) "
                             f"{', '.join(missing)} (columns: {', '.join(ds.column_names)})")


def _class_label(task: Task, value: Any, row: int) -> str:
    if value == -1:
        raise AdaptertxError(f"{task.name}: row {row} has label -1 (unlabelled); this split cannot be scored")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(task.labels):
        raise AdaptertxError(f"{task.name}: row {row} has label {value!r}; expected 0..{len(task.labels) - 1} "
                             f"({', '.join(task.labels)})")
    return task.labels[value]


def _pair(first: str, second: str) -> Callable[[Any, Task], list[dict]]:
    def convert_pair(ds: Any, task: Task) -> list[dict]:
        _columns(ds, task, first, second, "label")
        return [{"id": i, "text_a": a, "text_b": b, "label": _class_label(task, y, n)}
                for n, (i, a, b, y) in enumerate(zip(_ids(ds, task), ds[first], ds[second], ds["label"], strict=True))]
    return convert_pair


def _squad(ds: Any, task: Task) -> list[dict]:
    """SQuAD-style rows (the Hub's QA datasets already use this schema)."""
    _columns(ds, task, "context", "question", "answers")
    titles = ds["title"] if "title" in ds.column_names else [""] * len(ds)
    out = []
    for i, title, context, question, answers in zip(_ids(ds, task), titles, ds["context"], ds["question"],
                                                    ds["answers"], strict=True):
        out.append({"id": i, "title": title or "", "context": context, "question": question,
                    "answers": {"text": [str(t) for t in answers["text"]],
                                "answer_start": [int(s) for s in answers["answer_start"]]}})
    return out


def _copa(ds: Any, task: Task) -> list[dict]:
    """COPA/XCOPA rows through the bundled reader (:func:`adaptertx.data.readers.read_copa_jsonl`)."""
    from adaptertx.data.readers import read_copa_jsonl

    _columns(ds, task, "premise", "choice1", "choice2", "question", "label")
    keys = ("premise", "choice1", "choice2", "question", "label")
    ids = _ids(ds, task)
    fd, path = tempfile.mkstemp(suffix=".jsonl", prefix=f"adaptertx-{task.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for n, row in enumerate(zip(*(ds[k] for k in keys), strict=True)):
                if row[-1] == -1:
                    raise AdaptertxError(f"{task.name}: row {n} has label -1 (unlabelled); this split cannot be scored")
                f.write(json.dumps(dict(zip(keys, row, strict=True), idx=ids[n]), ensure_ascii=False) + "\n")
        return read_copa_jsonl(path)
    finally:
        os.unlink(path)


def _tagging(column: str) -> Callable[[Any, Task], list[dict]]:
    def convert_tags(ds: Any, task: Task) -> list[dict]:
        _columns(ds, task, "tokens", column)
        names = _label_names(ds, column) or list(task.labels)
        known = set(task.labels)
        out = []
        for n, (i, tokens, tags) in enumerate(zip(_ids(ds, task), ds["tokens"], ds[column], strict=True)):
            if len(tokens) != len(tags):
                raise AdaptertxError(f"{task.name}: row {n} has {len(tokens)} tokens but {len(tags)} tags")
            try:
                labels = [t if isinstance(t, str) else names[t] for t in tags]
            except (IndexError, TypeError):
                raise AdaptertxError(f"{task.name}: row {n} has tag ids outside 0..{len(names) - 1}: {tags}") from None
            unknown = sorted(set(labels) - known)
            if unknown:
                raise AdaptertxError(f"{task.name}: row {n} has tags {unknown} outside {', '.join(task.labels)}")
            out.append({"id": i, "tokens": list(tokens), "tags": labels})
        return out
    return convert_tags


def _tatoeba(ds: Any, task: Task) -> list[dict]:
    """XTREME's Tatoeba pairs in file order: source = the non-English sentence, target = English."""
    _columns(ds, task, "source_sentence", "target_sentence")
    src, tgt = ds["source_sentence"], ds["target_sentence"]
    if "source_lang" in ds.column_names and len(ds) and ds[0]["source_lang"] in ("eng", "en"):
        src, tgt = tgt, src
    return [{"id": str(n), "source": s.strip(), "target": t.strip()}
            for n, (s, t) in enumerate(zip(src, tgt, strict=True))]


# task name -> converter(datasets.Dataset, Task) -> rows in the common schema.
CONVERTERS: dict[str, Callable[[Any, Task], list[dict]]] = {
    "mnli": _pair("premise", "hypothesis"), "xnli": _pair("premise", "hypothesis"),
    "qqp": _pair("question1", "question2"), "mrpc": _pair("sentence1", "sentence2"),
    "pawsx": _pair("sentence1", "sentence2"),
    "squad": _squad, "squad_v2": _squad, "xquad": _squad, "mlqa": _squad, "tydiqa": _squad,
    "copa": _copa, "xcopa": _copa,
    "udpos": _tagging("pos_tags"), "panx": _tagging("ner_tags"), "masakhaner": _tagging("ner_tags"),
    "conll03": _tagging("ner_tags"),
    "tatoeba": _tatoeba,
}


def _in_nfc(task: Task, rows: list[dict]) -> list[dict]:
    """``rows`` with their text in Unicode NFC, as the readers give files (QA answer offsets moved with it)."""
    if task.family != "extractive_qa":
        return nfc(rows)
    out = []
    for n, row in enumerate(rows):
        context, move = nfc_offsets(f"{task.name} (Hub)", f"row {n} context", row["context"])
        answers = row["answers"]
        starts = [move(s) for s in answers["answer_start"]]
        out.append(dict(nfc(row), context=context, answers={"text": nfc(answers["text"]), "answer_start": starts}))
    return out


def convert(task_name: str, ds: Any, lang: str | None = None) -> list[dict]:
    """Rows of the Hub dataset split ``ds`` (a ``datasets.Dataset``) in ``task_name``'s schema.

    ``lang`` selects TyDi QA's language (its Hub config holds all languages). Raises
    :class:`AdaptertxError` on missing columns, unlabelled rows or labels outside the task's set.
    """
    task = get_task(task_name)
    if task.name not in CONVERTERS:
        raise AdaptertxError(f"no Hub converter for task {task.name!r}; converters exist for "
                             f"{', '.join(sorted(CONVERTERS))}")
    if task.name == "tydiqa" and lang is not None:
        prefix = _TYDIQA_NAMES[task.check_language(lang)] + "-"
        ds = ds.filter(lambda ex: str(ex["id"]).startswith(prefix))
    rows = _in_nfc(task, CONVERTERS[task.name](ds, task))
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise AdaptertxError(f"{task.name}: the Hub rows' ids are not unique")
    return rows


# ------------------------------------------------------------------------------ loading


def load_remote(task_name: str, lang: str, split: str) -> list[dict]:
    """The ``split`` of ``task_name`` in language ``lang``, loaded from the Hub and converted.

    Checks first (and fails fast, with :class:`AdaptertxError`) that the task has a Hub dataset
    and a converter, that ``lang`` is one of its languages, that ``split`` is one the Hub
    publishes with labels, and that the Hub (``HF_ENDPOINT``) answers.
    """
    task = get_task(task_name)
    if task.hub.dataset is None:
        raise AdaptertxError(f"task {task.name!r} has no Hub dataset: {task.hub.note}")
    if task.name not in SPLITS:
        instead = f"use its bundled data ({task.bundled!r})" if task.bundled else "pass it with --data-file"
        raise AdaptertxError(f"task {task.name!r} cannot be loaded from the Hub ({task.hub.dataset}) by adaptertx; "
                             + instead)
    code = task.check_language(lang)
    if split not in SPLITS[task.name]:
        raise AdaptertxError(f"task {task.name!r} has no split {split!r} on the Hub; splits: "
                             f"{', '.join(SPLITS[task.name])}")
    if (task.name, split) in _UNLABELLED:
        raise AdaptertxError(f"the {task.name} {split!r} split is unlabelled on the Hub (labels -1) and cannot be "
                             "scored; use 'validation'")
    config = hub_config(task, code)
    where = f"{task.hub.dataset}" + (f" (config {config})" if config else "")
    from adaptertx.models import hub_reachable

    if not hub_reachable():
        from huggingface_hub import constants

        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        instead = (f"the bundled data ({task.bundled!r}) where it has this language and split, or "
                   if task.bundled else "")
        raise AdaptertxError(f"the Hugging Face Hub ({endpoint}) is unreachable, so {task.name} {code} {split} "
                             f"cannot be loaded from {where}; use {instead}your own copy with --data-file")
    import datasets

    try:
        ds = datasets.load_dataset(task.hub.dataset, config, split=SPLITS[task.name][split])
    except Exception as e:  # the library's errors (not found, connection, bad split) become one clear line
        raise AdaptertxError(f"could not load {task.name} {code} {split} from {where} on the Hub: "
                             f"{type(e).__name__}: {e}") from e
    return convert(task.name, ds, code if task.name == "tydiqa" else None)
