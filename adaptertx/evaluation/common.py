"""What every zero-shot evaluation shares: its config, its results, and their bookkeeping."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from adaptertx import data
from adaptertx.environment import versions
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation.intermediate import Intermediate
from adaptertx.languages import LOW_RESOURCE_GIB, is_low_resource, normalize_or_keep, normalize_or_none
from adaptertx.rundir import sha256_file
from adaptertx.settings import ADAPTER, ADAPTER_SEED, DEFAULT_MODEL, QUANT, TargetSettings, check_quant
from adaptertx.tasks import Task, get_task, tasks

#: The public release format of each target's files (``--data-file``), by task.
FORMATS = {"xnli": "xnli_tsv", "pawsx": "pawsx_tsv", "xcopa": "xcopa_jsonl", "udpos": "udpos_tsv",
           "panx": "panx_tsv", "masakhaner": "conll_ner", "xquad": "squad_json", "mlqa": "squad_json",
           "tydiqa": "squad_json", "tatoeba": "tatoeba_pair", "lareqa": "xquadr_json",
           "mewsli_x": "mewsli_mentions"}

#: The :attr:`EvalConfig.data_files` key of a file that holds every language (the XNLI-1.0
#: release's ``xnli.test.tsv``): its rows name their languages.
ALL_LANGUAGES = "*"

#: How a file's name gives its language (``--data-dir``, ``--data-file PATH``): the first rule whose
#: pattern matches the name (lower-cased, ``.xz``/``.gz``/``.bz2`` dropped; ``LANG/test.txt`` is a
#: file in a sub-folder) wins. ``(release, pattern, example)``; the language is normalised
#: (:func:`adaptertx.languages.normalize`: ``hau`` -> ``ha``), ``*`` means every language.
FILE_NAMES = (
    ("XTREME", re.compile(r"(?:test|dev)-(?P<lang>[a-z]{2,3})\.[a-z]+"), "test-de.tsv, dev-de.tsv"),
    ("XQuAD", re.compile(r"xquad\.(?P<lang>[a-z]{2,3})\.json"), "xquad.de.json"),
    ("MLQA", re.compile(r"(?:test|dev)-context-(?P<lang>[a-z]{2,3})-question-(?P=lang)\.json"),
     "test-context-de-question-de.json"),
    ("TyDiQA-GoldP", re.compile(r"tydiqa\.goldp\.(?P<lang>[a-z]{2,3})\.dev\.json"), "tydiqa.goldp.sw.dev.json"),
    ("XCOPA", re.compile(r"(?:test|val)\.(?P<lang>[a-z]{2,3})\.jsonl"), "test.sw.jsonl"),
    ("UD", re.compile(r"(?P<lang>[a-z]{2,3})_[a-z0-9]+-ud-(?:test|dev)\.conllu"), "kk_ktb-ud-test.conllu"),
    ("MasakhaNER", re.compile(r"(?P<lang>[a-z]{2,3})/test\.txt"), "hau/test.txt"),
    ("XNLI-1.0", re.compile(r"xnli\.(?:test|dev)\.tsv"), "xnli.test.tsv (every language)"),
    ("plain", re.compile(r"(?!(?:dev|val|tst)\.)(?P<lang>[a-z]{2,3})\.[a-z]+"), "de.tsv"),
)
#: Files beside a MasakhaNER ``LANG/test.txt`` that are the release's other splits (not read).
_OTHER_SPLITS = ("dev.txt", "train.txt")


@dataclass(frozen=True)
class EvalConfig(TargetSettings):
    """One zero-shot evaluation: the target, the base, and the target training
    (:class:`adaptertx.settings.TargetSettings`: its fields are keyword-only).

    Attributes:
        target: a target task (``adaptertx tasks --role target``).
        model, quant, adapter: the base, how it is stored, and the target adapter's config.
        languages: the languages to evaluate (default: every language the target has data for).
        max_eval_examples: at most this many test examples per language (a fixed subset).
        adapter_seed: initialisation of the target adapter and head (one for all configurations).
        data_files: the user's own test files, ``((lang, path), ...)`` in the target's public
            release format (:data:`FORMATS`; UD-POS also CoNLL-U, XNLI also the XNLI-1.0 file);
            they replace the bundled data of those languages. One file per language; the key
            :data:`ALL_LANGUAGES` takes every language of an XNLI-1.0 file. Mewsli-X takes
            ``(("mentions", path), ("candidates", path))`` or the release folder's files by name.
        pretraining_gib: ``((code, GiB), ...)``: the CC-100 size of a language code adaptertx does
            not know (not ISO 639), which decides whether it is low-resource.
        unknown_lang_low_resource: count codes adaptertx does not know (and ``pretraining_gib``
            does not size) as low-resource instead of refusing them.
        max_candidates: Mewsli-X: score against at most this many candidate entities (every gold
            entity plus a seeded sample of the others) instead of the full million.
    """

    target: str
    model: str = DEFAULT_MODEL
    quant: str = QUANT
    adapter: str = ADAPTER
    languages: tuple[str, ...] | None = None
    max_eval_examples: int | None = None
    adapter_seed: int = ADAPTER_SEED
    data_files: tuple[tuple[str, str], ...] = ()
    max_candidates: int | None = None
    pretraining_gib: tuple[tuple[str, float], ...] = ()
    unknown_lang_low_resource: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_quant(self.quant)
        task = get_task(self.target)
        if task.role != "target":
            raise AdaptertxError(f"{self.target!r} is an intermediate task, not a target; targets: "
                                 f"{', '.join(t.name for t in _targets())}")
        if task.family != "retrieval":
            if task.english_train is None:
                raise AdaptertxError(f"target {task.name!r} has no English training data to fine-tune on")
            source = get_task(task.english_train)
            bundled = bool(source.bundled) and "train" in data.available(source.bundled)[source.bundled].get("en", {})
            if not bundled and source.hub.dataset is None:
                raise AdaptertxError(f"target {task.name!r} trains on {source.name!r}, which has no English "
                                     f"training data here or on the Hub")
        if self.max_eval_examples is not None and self.max_eval_examples < 1:
            raise AdaptertxError("max_eval_examples must be at least 1")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise AdaptertxError("max_candidates must be at least 1")
        for lang, path in self.data_files:
            if not Path(path).exists():
                raise AdaptertxError(f"data file for {lang!r} not found: {path}")
        if self.data_files and task.name not in FORMATS:
            raise AdaptertxError(f"own data files are not supported for {task.name!r}; supported: "
                                 f"{', '.join(sorted(FORMATS))}")
        self._check_languages(task)

    def _check_languages(self, task: Task) -> None:
        """Sizes only for codes adaptertx does not know; one file per language; every file's
        language known or sized (Mewsli-X's files are named by role, not language)."""
        for code, gib in self.pretraining_gib:
            if not isinstance(gib, (int, float)) or isinstance(gib, bool) or gib < 0:
                raise AdaptertxError(f"pretraining size of {code!r} must be a number of GiB >= 0, got {gib!r}")
            known = normalize_or_none(code)
            if known is None:
                continue
            raise AdaptertxError(f"{code!r} is the ISO 639 code {known!r}, whose CC-100 size adaptertx knows; "
                                 f"a pretraining size is for codes it does not know")
        if FORMATS.get(task.name) == "mewsli_mentions":
            return
        seen: dict[str, str] = {}
        for key, path in self.data_files:
            if key == ALL_LANGUAGES and FORMATS[task.name] != "xnli_tsv":
                raise AdaptertxError(f"{path}: a file of every language ({ALL_LANGUAGES}) is XNLI-1.0's; for "
                                     f"{task.name} name each file's language (--data-file LANG=PATH)")
            code = key if key == ALL_LANGUAGES else normalize_or_keep(key)
            if code in seen:
                raise AdaptertxError(f"two files for language {code!r}: {seen[code]} and {path}; give one file "
                                     f"per language")
            seen[code] = path
            if code != ALL_LANGUAGES:
                self.check_language(code, path)

    def check_language(self, code: str, path: str | os.PathLike) -> None:
        """Refuse a language ``code`` (of the file ``path``) that the low-resource rule cannot place."""
        try:
            is_low(code, self)
        except AdaptertxError as e:
            raise AdaptertxError(f"{path}: {e}") from None


def _is_other_split(root: Path, rel: str) -> bool:
    """Whether ``rel`` is a MasakhaNER ``LANG/dev.txt`` or ``LANG/train.txt`` beside a ``LANG/test.txt``."""
    parts = rel.split("/")
    return (len(parts) == 2 and parts[1] in _OTHER_SPLITS and (root / parts[0] / "test.txt").is_file()
            and file_language(f"{parts[0]}/test.txt") is not None)


def file_language(name: str) -> str | None:
    """The language a file's name gives by :data:`FILE_NAMES` (``test-de.tsv`` -> ``de``,
    ``hau/test.txt`` -> ``ha``, ``xnli.test.tsv`` -> :data:`ALL_LANGUAGES`), or ``None``."""
    name = name.lower()
    for suffix in (".xz", ".gz", ".bz2"):
        name = name.removesuffix(suffix)
    for _, pattern, _ in FILE_NAMES:
        m = pattern.fullmatch(name)
        if m:
            return normalize_or_keep(m.group("lang")) if "lang" in pattern.groupindex else ALL_LANGUAGES
    return None


def data_dir_files(folder: str | os.PathLike, target: str | None = None) -> tuple[tuple[str, str], ...]:
    """``((lang, path), ...)`` for the files of ``folder``, named by :func:`file_language`: what
    ``--data-dir`` gives :attr:`EvalConfig.data_files`. Files are read from the folder and its
    sub-folders (MasakhaNER's ``LANG/test.txt``; the ``dev.txt`` and ``train.txt`` beside it are
    left alone); hidden files are skipped. A name no rule understands is an error listing them all.
    Mewsli-X (``target="mewsli_x"``) names its release files by the part before the first dot
    (``wikinews_mentions-test``, ``candidate_set_entities``), top-level files only."""
    root = Path(folder)
    if not root.is_dir():
        raise AdaptertxError(f"no data folder at {folder}")
    top = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if target is not None and FORMATS.get(get_task(target).name) == "mewsli_mentions":
        found = tuple((p.name.split(".")[0], str(p)) for p in top if p.is_file())
    else:
        paths = [p for p in top if p.is_file()]
        paths += [f for d in top if d.is_dir() for f in sorted(d.iterdir()) if not f.name.startswith(".")]
        named, unknown = [], []
        for p in paths:
            rel = p.relative_to(root).as_posix()
            lang = file_language(rel) if p.is_file() else None
            if lang is not None:
                named.append((lang, str(p)))
            elif not _is_other_split(root, rel):
                unknown.append(rel + ("/" if p.is_dir() else ""))
        if unknown:
            rules = "; ".join(f"{release}: {example}" for release, _, example in FILE_NAMES)
            raise AdaptertxError(f"{folder}: cannot tell the language of {', '.join(unknown)}; file names "
                                 f"understood: {rules}")
        found = tuple(named)
    if not found:
        raise AdaptertxError(f"the data folder {folder} holds no files")
    return found


def own_sets(task: Task, config: EvalConfig) -> dict[str, tuple[list[dict], str]]:
    """``{lang: (examples, path)}`` of the user's files (:attr:`EvalConfig.data_files`), each read
    in the format its content shows (:func:`adaptertx.data.detect_format`); an XNLI-1.0 file
    under :data:`ALL_LANGUAGES` gives every language it holds, under a language that language's rows."""
    out: dict[str, tuple[list[dict], str]] = {}
    for key, path in config.data_files:
        fmt = data.detect_format(path, FORMATS[task.name])
        if fmt == "tatoeba_pair":
            raise AdaptertxError("Tatoeba files are given with `adaptertx retrieve tatoeba --data-dir`")
        rows = data.read_file(path, fmt)
        if fmt != "xnli10_tsv":
            if key == ALL_LANGUAGES:
                raise AdaptertxError(f"{path}: a file of every language ({ALL_LANGUAGES}) must be XNLI-1.0's "
                                     f"xnli.test.tsv / xnli.dev.tsv (header language, gold_label, ...)")
            by_lang = {normalize_or_keep(key): rows}
        elif key == ALL_LANGUAGES:
            by_lang = rows
        else:
            code = normalize_or_keep(key)
            if code not in rows:
                raise AdaptertxError(f"{path} has no rows of language {key!r}; it holds {', '.join(sorted(rows))}")
            by_lang = {code: rows[code]}
        for code, lang_rows in by_lang.items():
            if code in out:
                raise AdaptertxError(f"two files for language {code!r}: {out[code][1]} and {path}; give one file "
                                     f"per language")
            config.check_language(code, path)
            out[code] = (lang_rows, str(path))
    return out


def _targets() -> list[Task]:
    return tasks(role="target")


@dataclass(frozen=True)
class LanguageResult:
    """One language's zero-shot result.

    Attributes:
        scores: the metric's scores in percent (e.g. ``{"accuracy"}``, ``{"f1", "exact_match"}``).
        n: test examples scored. low_resource: the registry's rule.
        split, source: which split of which data (``bundled``, ``hub:<dataset>/<config>`` or a file path).
        stats: one row of counts per example (``None`` where the metric has none, e.g. BUCC F1).
        ids_sha: SHA-256 of the example ids in order (paired comparisons check it).
        floor: the primary score of a model that learned nothing on the same examples:
            ``{"majority", "chance"}`` (:func:`adaptertx.floors.floors`; either may be ``None``).
    """

    scores: dict
    n: int
    low_resource: bool
    split: str
    source: str
    stats: list | None = None
    ids_sha: str | None = None
    floor: dict | None = None


@dataclass(frozen=True)
class EvalResult:
    """A target's zero-shot results under one intermediate configuration.

    ``learned`` is the target adapter's English held-out score against its majority floor
    (:func:`adaptertx.floors.versus_floor`, with ``"learned"``: the interval above zero, and
    ``"split"``); ``None`` for retrieval targets, which train nothing. ``fusion_attention``: under
    a Fusion, its attention over the task adapters per language and layer
    (:mod:`adaptertx.fusion_attention`); ``None`` otherwise.
    """

    target: str
    metric: str
    primary: str
    languages: dict[str, LanguageResult]
    missing: dict[str, str]
    trace: dict
    notes: list[str] = field(default_factory=list)
    learned: dict | None = None
    fusion_attention: dict | None = None

    def record(self) -> dict:
        """As stored in a results store (see :mod:`adaptertx.results`)."""
        body = {"target": self.target, "metric": self.metric, "primary": self.primary,
                "languages": {k: dataclasses.asdict(v) for k, v in self.languages.items()},
                "missing": self.missing, "trace": self.trace, "notes": self.notes, "learned": self.learned}
        if self.fusion_attention is not None:
            body["fusion_attention"] = self.fusion_attention
        return body


def is_low(code: str, config: EvalConfig | None = None) -> bool:
    """The low-resource rule (:func:`adaptertx.languages.is_low_resource`). A code that is not
    ISO 639 is placed by ``config``: its :attr:`~EvalConfig.pretraining_gib` size, or low-resource
    with :attr:`~EvalConfig.unknown_lang_low_resource`; otherwise it is an error."""
    try:
        return is_low_resource(code)
    except AdaptertxError:
        sizes = dict(config.pretraining_gib) if config is not None else {}
        if code in sizes:
            return sizes[code] < LOW_RESOURCE_GIB
        if config is not None and config.unknown_lang_low_resource:
            return True
    raise AdaptertxError(f"unknown language code {code!r} (not ISO 639-1 or 639-3): whether it is low-resource "
                         f"depends on its pretraining text; give its CC-100 size with --pretraining-gib "
                         f"{code}=GIB (0 if the model never saw it), or pass --unknown-lang-low-resource")


def ids_sha(rows: list[dict]) -> str:
    """SHA-256 (16 hex digits) of the example ids in order (paired comparisons check it)."""
    return hashlib.sha256("\n".join(str(r["id"]) for r in rows).encode()).hexdigest()[:16]


def progress_bar(items, progress: bool, desc: str):
    """``items`` with a progress bar over languages."""
    items = list(items)
    return tqdm(items, desc=desc, unit="lang", disable=not progress, leave=False)


def rounded(scores: dict) -> dict:
    """Scores (or floors) to four decimals; ``None`` stays ``None``."""
    return {k: None if v is None else round(v, 4) for k, v in scores.items()}


def trace(config: EvalConfig, inter: Intermediate, fingerprint: str | None, out: Path | None, start: float, *,
          device=None) -> dict:
    """What a result records of how it was made: base, intermediate, target run, checkpoints, config, versions,
    and the device it was computed on (when given)."""
    checkpoints = inter.checkpoints()
    if out is not None and (out / "checkpoints" / "best.safetensors").is_file():
        best = out / "checkpoints" / "best.safetensors"
        checkpoints.append({"role": "target", "path": str(best.resolve()), "sha256": sha256_file(best)})
    return {"model": config.model, "quant": config.quant, "fingerprint": fingerprint,
            "intermediate": inter.describe(), "target_run": str(out.resolve()) if out is not None else None,
            "checkpoints": checkpoints, "config": dataclasses.asdict(config), "versions": versions(),
            **({"device": str(device)} if device is not None else {}), "seconds": round(time.time() - start, 1)}
