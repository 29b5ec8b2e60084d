"""A whole study as a grid: intermediate configurations × target tasks × seeds.

A study is a TOML file (see ``configs/``)::

    [study]            name, model, quant, adapter, seeds
    [intermediate]     tasks and the training budget of each task adapter
    [[configs]]        one per intermediate configuration: name, method
                       (none | single | average | task_arithmetic | ties | multitask | fusion), tasks,
                       optional weights (numbers or "dev"), sampling, temperature, fusion_data
    [targets]          tasks, the target training budget, max_eval_examples
    [targets.languages]   optional per-target language lists
    [targets.overrides.<target>]  optional per-target budget changes
    [targets.data]        optional per-target folders of your own test files (as --data-dir)

:func:`run_study` trains each intermediate task adapter once (``STUDY/intermediate/<task>``,
adapter-init seed shared, so adapters average), builds the merged configurations
(``STUDY/merged/<config>``), then runs every cell (``STUDY/cells/<config>/<target>/seed<k>``,
:func:`adaptertx.evaluation.evaluate`) and appends it to the results store
(``STUDY/results.jsonl``, :mod:`adaptertx.results`). Those three steps are the nodes of a task
graph (:mod:`adaptertx.study_graph`), run in this process by default or spread over a Ray
cluster or Slurm jobs (:mod:`adaptertx.executors`), each node as soon as its inputs are ready.
Finished cells are skipped, so an interrupted study resumes where it stopped; a cell that
fails is recorded with its error and the grid goes on; the failures are listed at the end.
A store written by another study (a different config hash) is refused.

Seeds vary the target training (data order, dropout); the intermediate adapters are trained
once per study (their seed is the study's first seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path

from adaptertx import settings as training_settings
from adaptertx.environment import check_device, resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import data_dir_files
from adaptertx.evaluation.common import ALL_LANGUAGES
from adaptertx.io import writing
from adaptertx.languages import normalize_or_keep, normalize_or_none
from adaptertx.results import STORE_FILE, ResultsStore
from adaptertx.rundir import METHODS, WEIGHT_SPACE
from adaptertx.settings import ADAPTER, ADAPTER_SEED, DEFAULT_MODEL, QUANT, QUANT_MODES, TARGET, TargetSettings
from adaptertx.study_graph import cell_id
from adaptertx.tasks import get_task

log = logging.getLogger(__name__)

#: Budget keys a study takes: every training setting but the seed (a study's seeds are its own).
BUDGET_KEYS = tuple(n for n in training_settings.names() if n != "seed")
#: The lock file of a study folder (held by the process running the study).
LOCK_FILE = ".lock"
#: The budget keys of the first studies: the others enter a study's hash only when set.
_HASHED_KEYS = ("epochs", "batch_size", "lr", "max_length", "max_examples")


@dataclass(frozen=True)
class ConfigSpec:
    """One intermediate configuration of the grid.

    Attributes:
        name: its label in tables. method: one of :data:`METHODS`.
        tasks: the intermediate tasks (one for ``single``; two or more for merges).
        weights: weighted averaging (``average``/``task_arithmetic``/``ties``), normalised; or
            ``"dev"``: chosen on the tasks' English dev sets (:mod:`adaptertx.merging.dev_weights`).
        sampling, temperature: ``multitask``'s task sampling (and a ``fusion_data = "mixture"``
            Fusion's).
        fusion_data: ``fusion``: ``"target"`` (the Fusion layer starts fresh and trains with
            each target adapter) or ``"mixture"`` (it is first trained on the mixture of its
            tasks' English data, ``adaptertx merge --method fusion --target mixture``, and each
            cell starts from it).
    """

    name: str
    method: str
    tasks: tuple[str, ...] = ()
    weights: tuple[float, ...] | str | None = None
    sampling: str = "proportional"
    temperature: float = 2.0
    fusion_data: str = "target"


@dataclass(frozen=True)
class Study:
    """A parsed, checked study config.

    Attributes:
        name: the study's name. description: free text (not part of the study's identity).
        model, quant, adapter: the base, its storage, the adapter config for every adapter.
        seeds: target-training seeds (one cell per seed).
        adapter_seed: the one adapter-init seed of the study.
        intermediate: the task adapters' training budget.
        configs: the intermediate configurations. targets: the target tasks.
        target_budget: target training; overrides: per-target changes to it.
        languages: per-target language lists (default: all the target has).
        max_eval_examples: at most this many test examples per language.
        data: per-target folders of the user's own test files (``adaptertx evaluate
            --data-dir``; relative paths from the directory the study runs in).
        max_candidates: Mewsli-X's candidate pool limit (:class:`adaptertx.evaluation.EvalConfig`).
        pretraining_gib, unknown_lang_low_resource: how the own files' language codes that
            adaptertx does not know are placed by the low-resource rule (``[targets]
            pretraining_gib = {qhe = 0}``, ``unknown_lang_low_resource = true``; as
            ``adaptertx evaluate --pretraining-gib`` / ``--unknown-lang-low-resource``).
    """

    name: str
    model: str = DEFAULT_MODEL
    quant: str = QUANT
    adapter: str = ADAPTER
    seeds: tuple[int, ...] = (0,)
    adapter_seed: int = ADAPTER_SEED
    intermediate: TargetSettings = TARGET
    configs: tuple[ConfigSpec, ...] = ()
    targets: tuple[str, ...] = ()
    target_budget: TargetSettings = TARGET
    overrides: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    languages: tuple[tuple[str, tuple[str, ...]], ...] = ()
    max_eval_examples: int | None = None
    data: tuple[tuple[str, str], ...] = ()
    max_candidates: int | None = None
    pretraining_gib: tuple[tuple[str, float], ...] = ()
    unknown_lang_low_resource: bool = False
    description: str = field(default="", compare=False)

    def study_hash(self) -> str:
        """A hash of everything that decides the results (not the description)."""
        body = dataclasses.asdict(self)
        body.pop("description")
        # added later: unset, they leave older studies' hashes alone
        for key in ("data", "max_candidates", "pretraining_gib", "unknown_lang_low_resource"):
            if not body[key]:
                body.pop(key)
        for key in ("intermediate", "target_budget"):  # so do the budget keys added later, left at their defaults
            body[key] = {k: v for k, v in body[key].items()
                         if k in _HASHED_KEYS or (k != "seed" and v != getattr(TARGET, k))}
        for c in body["configs"]:
            if c["fusion_data"] == "target":
                c.pop("fusion_data")
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def cells(self) -> list[tuple[ConfigSpec, str, int]]:
        """Every cell of the grid, ``(configuration, target, seed)``, in the order a study runs them
        (seed by seed, target by target)."""
        return [(c, t, s) for s in self.seeds for t in self.targets for c in self.configs]

    def config(self, name: str) -> ConfigSpec:
        """The configuration called ``name``."""
        return next(c for c in self.configs if c.name == name)

    def intermediate_tasks(self) -> list[str]:
        """Every task some configuration needs an adapter for, in first-use order."""
        return list(dict.fromkeys(t for c in self.configs for t in c.tasks))

    def budget_for(self, target: str) -> TargetSettings:
        """The target training budget of ``target`` (with its overrides)."""
        changes = dict(dict(self.overrides).get(target, ()))
        return self.target_budget.replace(**changes)

    def languages_for(self, target: str) -> tuple[str, ...] | None:
        return dict(self.languages).get(target)

    def data_files_for(self, target: str) -> tuple[tuple[str, str], ...]:
        """The user's own test files of ``target`` (from its ``[targets.data]`` folder)."""
        folder = dict(self.data).get(target)
        return data_dir_files(Path(folder).resolve(), target) if folder else ()


# ------------------------------------------------------------------------------ loading a config

#: A study's or a configuration's name: it names folders inside the study folder, so one plain
#: path component (letters, digits, ``.``, ``_``, ``-``; not starting with a dot).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SECTIONS = ("study", "intermediate", "configs", "targets")
_STUDY_KEYS = ("name", "model", "quant", "adapter", "seeds", "adapter_seed", "description")
_CONFIG_KEYS = ("name", "method", "tasks", "weights", "sampling", "temperature", "fusion_data")
_TARGET_KEYS = ("tasks", "languages", "overrides", "max_eval_examples", "data", "max_candidates", "pretraining_gib",
                "unknown_lang_low_resource")
_SAMPLING = ("proportional", "temperature", "uniform")


class _Problems:
    """Every problem of a study file, gathered so that one error lists them all."""

    def __init__(self, path: Path) -> None:
        self.path, self.items = path, []

    def add(self, where: str, text: str) -> None:
        self.items.append(f"{where} {text}" if where else text)

    def expect(self, where: str, expected: str, got) -> None:
        self.add(where, f"expected {expected}, got {got!r}")

    def check(self, where: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, or ``None`` with its :class:`AdaptertxError` recorded."""
        try:
            return fn(*args, **kwargs)
        except AdaptertxError as e:
            self.add(where, str(e))
            return None

    def raise_any(self) -> None:
        if self.items:
            n = len(self.items)
            raise AdaptertxError(f"{self.path}: {n} problem{'s' if n > 1 else ''} in the study file: "
                                 + "; ".join(self.items))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _name(problems: _Problems, where: str, value) -> str | None:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value:
        problems.expect(where, "a plain name (letters, digits, '.', '_', '-'; it names a folder inside the study "
                               "folder)", value)
        return None
    return value


def _str_list(problems: _Problems, where: str, value, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.expect(where, f"a list of {what} (e.g. [\"a\", \"b\"])", value)
        return []
    return value


def _table(problems: _Problems, raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        problems.expect(f"{where}{key}", "a table", value)
        return {}
    return value


def _unknown(problems: _Problems, table: dict, known, where: str) -> None:
    for key in sorted(set(table) - set(known)):
        problems.add(where, f"has an unknown key {key!r} (known: {', '.join(known)})")


def _budget(problems: _Problems, raw: dict, where: str, base: TargetSettings = TARGET) -> TargetSettings:
    """The budget keys of ``raw`` applied to ``base``; each bad value recorded (type, range)."""
    good = {}
    for key in BUDGET_KEYS:
        if key in raw and problems.check(where, base.replace, **{key: raw[key]}) is not None:  # names the key
            good[key] = raw[key]
    return base.replace(**good)


def load_study(path: str | os.PathLike) -> Study:
    """Parse and check a whole study TOML file before anything is written: every key, type and
    range, every name, method, task, language and data folder. Every problem found is listed in
    one :class:`AdaptertxError` (the file, the key, what was expected and what it holds)."""
    path = Path(path)
    if not path.is_file():
        raise AdaptertxError(f"no study config at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise AdaptertxError(f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise AdaptertxError(f"cannot read the study config {path}: {e.strerror}") from None
    problems = _Problems(path)
    for key in sorted(set(raw) - set(_SECTIONS)):
        problems.add("", f"unknown section [{key}] (sections: {', '.join(_SECTIONS)})")
    head = _table(problems, raw, "study", "")
    inter = _table(problems, raw, "intermediate", "")
    targets = _table(problems, raw, "targets", "")
    _unknown(problems, head, _STUDY_KEYS, "[study]")
    if "name" not in head:
        problems.add("[study]", "needs a name")
    name = _name(problems, "[study] name:", head["name"]) if "name" in head else None
    model = head.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        problems.expect("[study] model:", "a model name, folder or Hub id", model)

    quant = head.get("quant", QUANT)
    if quant not in QUANT_MODES:
        problems.expect("[study] quant:", f"one of {', '.join(QUANT_MODES)} (unknown quant)", quant)
    adapter = head.get("adapter", ADAPTER)
    if not isinstance(adapter, str):
        problems.expect("[study] adapter:", "an adapters config name (seq_bn, lora, ...)", adapter)
    else:
        from adaptertx.modeling import adapter_config

        problems.check("[study] adapter:", adapter_config, adapter)
    seeds = head.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        problems.expect("[study] seeds:", "a non-empty list of distinct whole numbers >= 0 (e.g. [0, 1, 2])", seeds)
        seeds = [0]
    adapter_seed = head.get("adapter_seed", ADAPTER_SEED)
    if not _is_int(adapter_seed):
        problems.expect("[study] adapter_seed:", "a whole number", adapter_seed)
    description = head.get("description", "")
    if not isinstance(description, str):
        problems.expect("[study] description:", "text", description)
    _unknown(problems, inter, (*BUDGET_KEYS, "tasks"), "[intermediate]")
    intermediate = _budget(problems, inter, "[intermediate]")
    configs = _load_configs(problems, raw)
    fields = _load_targets(problems, targets)
    problems.raise_any()
    return Study(name=name, model=model, quant=quant, adapter=adapter, seeds=tuple(seeds),
                 adapter_seed=adapter_seed, intermediate=intermediate, configs=configs, **fields,
                 description=description)


def _load_configs(problems: _Problems, raw: dict) -> tuple[ConfigSpec, ...]:
    """The study's ``[[configs]]``, checked."""
    given = raw.get("configs", [])
    if not isinstance(given, list) or not all(isinstance(c, dict) for c in given):
        problems.expect("configs:", "[[configs]] tables", given)
        return ()
    if not given:
        problems.add("", "no [[configs]]")
    configs = []
    for i, c in enumerate(given):
        where = f"configs[{i}]" + (f" ({c['name']})" if isinstance(c.get("name"), str) else "")
        _unknown(problems, c, _CONFIG_KEYS, where)
        if "name" not in c or "method" not in c:
            problems.add(where, "needs a name and a method")
            continue
        name = _name(problems, f"{where} name:", c["name"])
        method = c["method"]
        if method not in METHODS:
            problems.expect(f"{where} method:", f"one of {', '.join(METHODS)} (unknown method)", method)
            continue
        tasks = _str_list(problems, f"{where} tasks:", c.get("tasks", []), "task names")
        for t in tasks:
            task = problems.check(f"{where} tasks:", get_task, t)
            if task is not None and task.role != "intermediate":
                problems.add(f"{where} tasks:", f"{t!r} is not an intermediate task")
        low, high = {"none": (0, 0), "single": (1, 1)}.get(method, (2, 99))
        if not low <= len(tasks) <= high and (tasks or "tasks" in c or method != "none"):
            count = f"{low}" if low == high else f"{low}+"
            problems.add(f"{where} tasks:", f"method {method!r} takes {count} tasks, got {len(tasks)}")
        weights = c.get("weights")
        if weights == "dev":
            if method not in WEIGHT_SPACE:
                problems.add(f"{where} weights:", "\"dev\" applies to average, task_arithmetic and ties")
        elif weights is not None:
            if not isinstance(weights, list) or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                        and w >= 0 for w in weights):
                problems.expect(f"{where} weights:", "a list of numbers >= 0, one per task, or \"dev\"", weights)
                weights = None
            elif len(weights) != len(tasks):
                problems.add(f"{where} weights:", f"{len(weights)} weights for {len(tasks)} tasks")
                weights = None
            elif method not in WEIGHT_SPACE:
                problems.add(f"{where} weights:", "apply to average, task_arithmetic and ties")
            else:
                weights = tuple(float(w) for w in weights)
        sampling = c.get("sampling", "proportional")
        if sampling not in _SAMPLING:
            problems.expect(f"{where} sampling:", f"one of {', '.join(_SAMPLING)}", sampling)
        temperature = c.get("temperature", 2.0)
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
            problems.expect(f"{where} temperature:", "a number > 0", temperature)
            temperature = 2.0
        fusion_data = c.get("fusion_data", "target")
        if fusion_data not in ("target", "mixture") or (method != "fusion" and "fusion_data" in c):
            problems.expect(f"{where} fusion_data:", "\"target\" or \"mixture\", for method \"fusion\" only",
                            fusion_data)
        configs.append(ConfigSpec(name, method, tuple(tasks), weights, sampling, float(temperature), fusion_data))
    names = [c.name for c in configs if c.name]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.add("configs:", f"configuration names must be unique ({', '.join(twice)} given twice)")
    return tuple(configs)


def _positive(problems: _Problems, table: dict, key: str, where: str) -> int | None:
    value = table.get(key)
    if value is not None and (not _is_int(value) or value < 1):
        problems.expect(f"{where} {key}:", "a whole number >= 1, or leave it out", value)
        return None
    return value


def _placement(problems: _Problems, targets: dict) -> tuple[dict, bool]:
    """``[targets] pretraining_gib`` and ``unknown_lang_low_resource``, checked: how own files'
    codes that adaptertx does not know are placed by the low-resource rule."""
    sizes = _table(problems, targets, "pretraining_gib", "[targets] ")
    for code, gib in sizes.items():
        if not isinstance(gib, (int, float)) or isinstance(gib, bool) or gib < 0:
            problems.expect(f"[targets.pretraining_gib] {code}:", "a CC-100 size in GiB >= 0 (0 if the model never "
                                                                "saw the language)", gib)
        elif normalize_or_none(code) is not None:
            problems.add(f"[targets.pretraining_gib] {code}:", f"is the ISO 639 code {normalize_or_none(code)!r}, "
                                                               f"whose CC-100 size adaptertx knows; sizes are for "
                                                               f"codes it does not know")
    unknown_low = targets.get("unknown_lang_low_resource", False)
    if not isinstance(unknown_low, bool):
        problems.expect("[targets] unknown_lang_low_resource:", "true or false", unknown_low)
        unknown_low = False
    return sizes, unknown_low


def _load_targets(problems: _Problems, targets: dict) -> dict:
    """The study's ``[targets]`` section, checked, as :class:`Study` fields."""
    _unknown(problems, targets, (*BUDGET_KEYS, *_TARGET_KEYS), "[targets]")
    if "tasks" not in targets:
        problems.add("[targets]", "needs tasks")
    names = _str_list(problems, "[targets] tasks:", targets.get("tasks", []), "target task names")
    if "tasks" in targets and not names and isinstance(targets.get("tasks"), list):
        problems.add("[targets] tasks:", "is empty")
    known = []
    for t in names:
        task = problems.check("[targets] tasks:", get_task, t)
        if task is None:
            continue
        if task.role != "target":
            problems.add("[targets] tasks:", f"{t!r} is not a target task")
        elif task.family != "retrieval" and task.english_train is None:
            problems.add("[targets] tasks:", f"target {t!r} has no English training data")
        else:
            known.append(t)

    def per_target(key: str):
        given = _table(problems, targets, key, "[targets] ")
        if not isinstance(targets.get("tasks", []), list):
            return  # the tasks are wrong already: naming them again says nothing new
        for t, value in given.items():
            if t not in names:
                problems.add(f"[targets.{key}]", f"names {t!r}, which is not a target of the study")
            elif t in known:
                yield t, value

    languages = []
    for t, langs in per_target("languages"):
        codes = [problems.check(f"[targets.languages] {t}:", get_task(t).check_language, code)
                 for code in _str_list(problems, f"[targets.languages] {t}:", langs, "language codes")]
        languages.append((t, tuple(c for c in codes if c is not None)))
    sizes, unknown_low = _placement(problems, targets)
    data = []
    for t, folder in per_target("data"):
        if not isinstance(folder, str) or not Path(folder).is_dir():
            problems.expect(f"[targets.data] {t}:", "a folder of test files (relative paths are taken from the "
                                                  "directory the study runs in); not a folder", folder)
            continue
        files = problems.check(f"[targets.data] {t}:", data_dir_files, Path(folder).resolve(), t)
        if files is None:
            continue
        wanted = dict(languages).get(t)
        outside = sorted({lang for lang, _ in files if lang != ALL_LANGUAGES and wanted is not None
                          and normalize_or_keep(lang) not in wanted}) if t != "mewsli_x" else []
        if outside:
            problems.add(f"[targets.data] {t}:", f"holds files of {', '.join(outside)}, which [targets.languages] "
                                                 f"{t} leaves out; add them there or take the files out")
        unplaced = sorted({lang for lang, _ in files if lang != ALL_LANGUAGES and normalize_or_none(lang) is None
                           and lang not in sizes}) if t != "mewsli_x" and not unknown_low else []
        if unplaced:
            problems.add(f"[targets.data] {t}:", f"holds files of {', '.join(unplaced)}, not ISO 639 codes: give "
                                                 f"each one's CC-100 size in [targets.pretraining_gib] (0 if the "
                                                 f"model never saw it) or set unknown_lang_low_resource = true")
        data.append((t, folder))
    target_budget = _budget(problems, targets, "[targets]")
    overrides = []
    for t, changes in per_target("overrides"):
        where = f"[targets.overrides.{t}]"
        if not isinstance(changes, dict):
            problems.expect(where, "a table of budget keys", changes)
            continue
        _unknown(problems, changes, BUDGET_KEYS, where)
        _budget(problems, changes, where, target_budget)
        overrides.append((t, tuple(sorted((k, v) for k, v in changes.items() if k in BUDGET_KEYS))))
    return {"targets": tuple(names), "target_budget": target_budget, "overrides": tuple(overrides),
            "languages": tuple(languages), "max_eval_examples": _positive(problems, targets, "max_eval_examples",
                                                                          "[targets]"),
            "data": tuple(data), "max_candidates": _positive(problems, targets, "max_candidates", "[targets]"),
            "pretraining_gib": tuple(sorted((c, float(g)) for c, g in sizes.items()
                                            if isinstance(g, (int, float)) and not isinstance(g, bool))),
            "unknown_lang_low_resource": unknown_low}


# ------------------------------------------------------------------------------ running it


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` did: the folder, cells run / skipped / failed."""

    out: Path
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float


def run_study(study: Study, out: str | os.PathLike, *, progress: bool = True, echo=print, executor=None,
              retries: int = 2, device: str = "auto") -> StudyResult:
    """Run every unfinished cell of ``study`` into the folder ``out`` (see the module doc).

    ``executor`` runs the study's nodes (:mod:`adaptertx.executors`: in this process by default,
    or on Ray or Slurm); this process is the one writer of the results store. A node whose worker
    is lost is run again up to ``retries`` times. The folder is locked while the study runs
    (:func:`lock_study`): a second driver on it is refused. A base model that cannot be found is
    an error before anything is written.

    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) is where every node trains and
    encodes; each worker resolves it (``auto``: the worker's GPU when it has one). With the
    in-process executor it is checked against this machine before anything runs."""
    from adaptertx.executors import LocalExecutor
    from adaptertx.models import check_model

    out = Path(out)
    executor = executor or LocalExecutor()
    try:
        device = check_device(device)
        if isinstance(executor, LocalExecutor):
            resolve_device(device)
        check_model(study.model)
        with lock_study(out):
            return _run_study(study, out, progress, echo, executor, retries, device)
    finally:
        executor.close()


@contextlib.contextmanager
def lock_study(out: Path):
    """Hold ``out/.lock`` (an exclusive ``flock``, released when the process ends, even when it is
    killed) for as long as the block runs; a clear error when another process holds it."""
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").split()
            who = f"host {holder[0]}, pid {holder[1]}" if len(holder) == 2 else "another process"
            raise AdaptertxError(f"{out} is in use by another adaptertx experiment ({who}); wait for it to "
                                 f"finish, or give another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)


def _run_study(study: Study, out: Path, progress: bool, echo, executor, retries: int, device: str) -> StudyResult:
    from adaptertx.study_graph import build_graph, drive

    start = time.time()
    store = ResultsStore(out / STORE_FILE, {"study": study.name, "study_hash": study.study_hash(),
                                            "config": dataclasses.asdict(study)})
    cells = study.cells()
    todo = [x for x in cells if not store.finished(cell_id(x[0].name, x[1], x[2]))]
    skipped = [cell_id(c.name, t, s) for c, t, s in cells if store.finished(cell_id(c.name, t, s))]
    if skipped:
        echo(f"{len(skipped)} of {len(cells)} cells already finished in {out / STORE_FILE}; "
             f"running the other {len(todo)}")
    if not todo:
        return StudyResult(out, [], skipped, {}, time.time() - start)
    ran, failed = drive(_portable(study), out.resolve(), build_graph(study, todo), executor, store,
                        retries=retries, progress=progress, echo=echo, device=device)
    return StudyResult(out, ran, skipped, failed, time.time() - start)


def _portable(study: Study) -> Study:
    """``study`` with its local paths (a model folder, data folders) made absolute, so that a worker
    whose working directory is another one reads the same files."""
    model = str(Path(study.model).resolve()) if Path(study.model).exists() else study.model
    data = tuple((t, str(Path(folder).resolve())) for t, folder in study.data)
    return dataclasses.replace(study, model=model, data=data)
