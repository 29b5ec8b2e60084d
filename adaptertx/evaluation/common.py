"""What every zero-shot evaluation shares: its config, its results, and their bookkeeping."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from adaptertx import data
from adaptertx.environment import versions
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation.intermediate import Intermediate
from adaptertx.languages import is_low_resource
from adaptertx.rundir import sha256_file
from adaptertx.settings import ADAPTER, ADAPTER_SEED, DEFAULT_MODEL, QUANT, TargetSettings, check_quant
from adaptertx.tasks import Task, get_task, tasks

#: The public release format of each target's files (``--data-file``), by task.
FORMATS = {"xnli": "xnli_tsv", "pawsx": "pawsx_tsv", "xcopa": "xcopa_jsonl", "udpos": "udpos_tsv",
           "panx": "panx_tsv", "masakhaner": "conll_ner", "xquad": "squad_json", "mlqa": "squad_json",
           "tydiqa": "squad_json", "tatoeba": "tatoeba_pair", "lareqa": "xquadr_json",
           "mewsli_x": "mewsli_mentions"}


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
            release format (:data:`FORMATS`); they replace the bundled data of those languages.
            Mewsli-X takes ``(("mentions", path), ("candidates", path))`` or the release folder's
            files by name (:func:`_mewsli_files`).
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


def data_dir_files(folder: str | os.PathLike) -> tuple[tuple[str, str], ...]:
    """``((name, path), ...)`` for every file of ``folder``, named by the part before its first
    dot (``de.tsv`` -> ``de``; ``wikinews_mentions-test.jsonl`` -> ``wikinews_mentions-test``):
    what ``--data-dir`` gives :attr:`EvalConfig.data_files`. Hidden files and subfolders are skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise AdaptertxError(f"no data folder at {folder}")
    found = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not found:
        raise AdaptertxError(f"the data folder {folder} holds no files")
    return tuple((p.name.split(".")[0], str(p)) for p in found)


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
    ``"split"``); ``None`` for retrieval targets, which train nothing.
    """

    target: str
    metric: str
    primary: str
    languages: dict[str, LanguageResult]
    missing: dict[str, str]
    trace: dict
    notes: list[str] = field(default_factory=list)
    learned: dict | None = None

    def record(self) -> dict:
        """As stored in a results store (see :mod:`adaptertx.results`)."""
        return {"target": self.target, "metric": self.metric, "primary": self.primary,
                "languages": {k: dataclasses.asdict(v) for k, v in self.languages.items()},
                "missing": self.missing, "trace": self.trace, "notes": self.notes, "learned": self.learned}


def is_low(code: str) -> bool:
    """The low-resource rule (:func:`adaptertx.languages.is_low_resource`); a language without a
    known CC-100 size counts as low-resource."""
    try:
        return is_low_resource(code)
    except AdaptertxError:
        return True


def ids_sha(rows: list[dict]) -> str:
    """SHA-256 (16 hex digits) of the example ids in order (paired comparisons check it)."""
    return hashlib.sha256("\n".join(str(r["id"]) for r in rows).encode()).hexdigest()[:16]


def progress_bar(items, progress: bool, desc: str):
    """``items`` with a progress bar over languages."""
    items = list(items)
    return tqdm(items, desc=desc, unit="lang", disable=not progress, leave=False)


def sums(stats: list[list[float]]) -> list[float]:
    """Column sums of per-example counts, then the number of examples."""
    cols = [sum(col) for col in zip(*stats, strict=True)] if stats else []
    return [*cols, len(stats)]


def rounded(scores: dict) -> dict:
    return {k: round(v, 4) for k, v in scores.items()}


def trace(config: EvalConfig, inter: Intermediate, fingerprint: str | None, out: Path | None, start: float) -> dict:
    """What a result records of how it was made: base, intermediate, target run, checkpoints, config, versions."""
    checkpoints = inter.checkpoints()
    if out is not None and (out / "checkpoints" / "best.safetensors").is_file():
        best = out / "checkpoints" / "best.safetensors"
        checkpoints.append({"role": "target", "path": str(best.resolve()), "sha256": sha256_file(best)})
    return {"model": config.model, "quant": config.quant, "fingerprint": fingerprint,
            "intermediate": inter.describe(), "target_run": str(out.resolve()) if out is not None else None,
            "checkpoints": checkpoints, "config": dataclasses.asdict(config), "versions": versions(),
            "seconds": round(time.time() - start, 1)}
