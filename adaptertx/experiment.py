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
(``STUDY/results.jsonl``, :mod:`adaptertx.results`). Finished cells are skipped, so an
interrupted study resumes where it stopped; a cell that fails is recorded with its error and
the grid goes on; the failures are listed at the end. A store written by another study (a
different config hash) is refused.

Seeds vary the target training (data order, dropout); the intermediate adapters are trained
once per study (their seed is the study's first seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import traceback

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from adaptertx import settings as training_settings
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import NONE, EvalConfig, data_dir_files, evaluate, fusion_of, load_intermediate
from adaptertx.merging import MIXTURE, MergeOptions, merge
from adaptertx.results import STORE_FILE, ResultsStore
from adaptertx.rundir import METHODS, RUN_FILE, WEIGHT_SPACE, read_json, run_status
from adaptertx.settings import ADAPTER, ADAPTER_SEED, DEFAULT_MODEL, QUANT, QUANT_MODES, TARGET, TargetSettings
from adaptertx.tasks import get_task
from adaptertx.training import TrainConfig, train

log = logging.getLogger(__name__)

#: Budget keys a study takes: every training setting but the seed (a study's seeds are its own).
BUDGET_KEYS = tuple(n for n in training_settings.names() if n != "seed")
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
    description: str = field(default="", compare=False)

    def study_hash(self) -> str:
        """A hash of everything that decides the results (not the description)."""
        body = dataclasses.asdict(self)
        body.pop("description")
        for key in ("data", "max_candidates"):  # added later: unset, they leave older studies' hashes alone
            if not body[key]:
                body.pop(key)
        for key in ("intermediate", "target_budget"):  # so do the budget keys added later, left at their defaults
            body[key] = {k: v for k, v in body[key].items()
                         if k in _HASHED_KEYS or (k != "seed" and v != getattr(TARGET, k))}
        for c in body["configs"]:
            if c["fusion_data"] == "target":
                c.pop("fusion_data")
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

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


def _table(raw: dict, key: str, path: Path) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise AdaptertxError(f"{path}: [{key}] must be a table")
    return value


def _budget(raw: dict, where: str, base: TargetSettings | None = None) -> TargetSettings:
    unknown = set(raw) - set(BUDGET_KEYS) - {"tasks", "languages", "overrides", "max_eval_examples", "data",
                                             "max_candidates"}
    if unknown:
        raise AdaptertxError(f"{where}: unknown keys {', '.join(sorted(unknown))}; "
                             f"budget keys are {', '.join(BUDGET_KEYS)}")
    values = {k: raw[k] for k in BUDGET_KEYS if k in raw}
    try:
        return (base or TARGET).replace(**values)
    except AdaptertxError as e:
        raise AdaptertxError(f"{where}: {e}") from None


def load_study(path: str | os.PathLike) -> Study:
    """Parse and check a study TOML file; unknown tasks, languages or methods are clear errors."""
    path = Path(path)
    if not path.is_file():
        raise AdaptertxError(f"no study config at {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise AdaptertxError(f"{path} is not valid TOML: {e}") from None
    unknown = set(raw) - {"study", "intermediate", "configs", "targets"}
    if unknown:
        raise AdaptertxError(f"{path}: unknown sections {', '.join(sorted(unknown))}")
    head = _table(raw, "study", path)
    if "name" not in head:
        raise AdaptertxError(f"{path}: [study] needs a name")
    known_head = {"name", "model", "quant", "adapter", "seeds", "adapter_seed", "description"}
    if set(head) - known_head:
        raise AdaptertxError(f"{path}: unknown [study] keys {', '.join(sorted(set(head) - known_head))}")
    inter = _table(raw, "intermediate", path)
    targets = _table(raw, "targets", path)
    configs = _load_configs(raw, path)
    quant = head.get("quant", QUANT)
    if quant not in QUANT_MODES:
        raise AdaptertxError(f"{path}: unknown quant {quant!r}; choose one of {', '.join(QUANT_MODES)}")
    seeds = tuple(int(s) for s in head.get("seeds", [0]))
    if not seeds:
        raise AdaptertxError(f"{path}: seeds is empty")
    return Study(name=head["name"], model=head.get("model", DEFAULT_MODEL), quant=quant,
                 adapter=head.get("adapter", ADAPTER), seeds=seeds,
                 adapter_seed=int(head.get("adapter_seed", ADAPTER_SEED)),
                 intermediate=_budget({k: v for k, v in inter.items() if k != "tasks"}, f"{path}: [intermediate]"),
                 configs=configs, **_load_targets(targets, path), description=head.get("description", ""))


def _load_configs(raw: dict, path: Path) -> tuple[ConfigSpec, ...]:
    """The study's ``[[configs]]``, checked."""
    configs = []
    for i, c in enumerate(raw.get("configs", [])):
        where = f"{path}: configs[{i}]"
        if "name" not in c or "method" not in c:
            raise AdaptertxError(f"{where} needs a name and a method")
        method = c["method"]
        if method not in METHODS:
            raise AdaptertxError(f"{where}: unknown method {method!r}; choose one of {', '.join(METHODS)}")
        tasks = tuple(c.get("tasks", ()))
        for t in tasks:
            task = get_task(t)
            if task.role != "intermediate":
                raise AdaptertxError(f"{where}: {t!r} is not an intermediate task")
        need = {"none": (0, 0), "single": (1, 1)}.get(method, (2, 99))
        if not need[0] <= len(tasks) <= need[1]:
            raise AdaptertxError(f"{where}: method {method!r} takes {need[0]}" +
                                 (f"-{need[1]}" if need[1] != need[0] and need[1] < 99
                                  else "+" if need[1] == 99 else "") +
                                 f" tasks, got {len(tasks)}")
        extra = set(c) - {"name", "method", "tasks", "weights", "sampling", "temperature", "fusion_data"}
        if extra:
            raise AdaptertxError(f"{where}: unknown keys {', '.join(sorted(extra))}")
        weights = c.get("weights")
        if weights == "dev":
            if method not in WEIGHT_SPACE:
                raise AdaptertxError(f"{where}: weights = \"dev\" applies to average, task_arithmetic and ties")
        elif weights is not None:
            if isinstance(weights, str) or not isinstance(weights, list):
                raise AdaptertxError(f"{where}: weights is a list of numbers, one per task, or \"dev\"")
            weights = tuple(float(w) for w in weights)
        if isinstance(weights, tuple) and len(weights) != len(tasks):
            raise AdaptertxError(f"{where}: {len(weights)} weights for {len(tasks)} tasks")
        fusion_data = c.get("fusion_data", "target")
        if fusion_data not in ("target", "mixture") or (method != "fusion" and "fusion_data" in c):
            raise AdaptertxError(f"{where}: fusion_data is \"target\" or \"mixture\", for method \"fusion\" only")
        configs.append(ConfigSpec(c["name"], method, tasks, weights, c.get("sampling", "proportional"),
                                  float(c.get("temperature", 2.0)), fusion_data))
    if not configs:
        raise AdaptertxError(f"{path}: no [[configs]]")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise AdaptertxError(f"{path}: configuration names must be unique (got {', '.join(names)})")
    return tuple(configs)


def _load_targets(targets: dict, path: Path) -> dict:
    """The study's ``[targets]`` section, checked, as :class:`Study` fields."""
    target_names = tuple(targets.get("tasks", ()))
    if not target_names:
        raise AdaptertxError(f"{path}: [targets] needs tasks")
    for t in target_names:
        task = get_task(t)
        if task.role != "target":
            raise AdaptertxError(f"{path}: {t!r} is not a target task")
        if task.family != "retrieval" and task.english_train is None:
            raise AdaptertxError(f"{path}: target {t!r} has no English training data")
    languages = []
    for t, langs in _table(targets, "languages", path).items():
        if t not in target_names:
            raise AdaptertxError(f"{path}: [targets.languages] names {t!r}, which is not a target of the study")
        task = get_task(t)
        languages.append((t, tuple(task.check_language(code) for code in langs)))
    data = []
    for t, folder in _table(targets, "data", path).items():
        if t not in target_names:
            raise AdaptertxError(f"{path}: [targets.data] names {t!r}, which is not a target of the study")
        if not isinstance(folder, str) or not Path(folder).is_dir():
            raise AdaptertxError(f"{path}: [targets.data] {t} = {folder!r} is not a folder (relative paths are "
                                 f"taken from the directory the study runs in)")
        data.append((t, folder))
    target_budget = _budget(targets, f"{path}: [targets]")
    overrides = []
    for t, changes in _table(targets, "overrides", path).items():
        if t not in target_names:
            raise AdaptertxError(f"{path}: [targets.overrides] names {t!r}, which is not a target of the study")
        _budget(changes, f"{path}: [targets.overrides.{t}]")
        overrides.append((t, tuple(sorted(changes.items()))))
    return {"targets": target_names, "target_budget": target_budget, "overrides": tuple(overrides),
            "languages": tuple(languages), "max_eval_examples": targets.get("max_eval_examples"), "data": tuple(data),
            "max_candidates": targets.get("max_candidates")}


# ------------------------------------------------------------------------------ running it


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` did: the folder, cells run / skipped / failed."""

    out: Path
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float


def cell_id(config: str, target: str, seed: int) -> str:
    """The store key of one grid cell."""
    return f"{config}|{target}|seed{seed}"


def _train_intermediate(study: Study, task: str, out: Path, progress: bool) -> Path:
    run = out / "intermediate" / task
    status = run_status(run)
    if status == "finished":
        return run
    config = TrainConfig(task=task, model=study.model, out=str(run), adapter=study.adapter, quant=study.quant,
                         adapter_seed=study.adapter_seed,
                         **study.intermediate.replace(seed=study.seeds[0]).training_json())
    train(config, resume=status is not None, progress=progress)
    return run


def _merged(study: Study, spec: ConfigSpec, runs: dict[str, Path], errors: dict[str, str], out: Path,
            progress: bool):
    """The :class:`adaptertx.evaluation.Intermediate` of one configuration (merging if needed)."""
    if spec.method == "none":
        return NONE
    missing = [t for t in spec.tasks if t not in runs]
    if missing:
        raise AdaptertxError("; ".join(f"the {t} adapter failed to train: {errors.get(t, 'unknown error')}"
                                       for t in missing))
    dirs = [runs[t] for t in spec.tasks]
    if spec.method == "single":
        return load_intermediate(dirs[0])
    if spec.method == "fusion" and spec.fusion_data == "target":
        return fusion_of(dirs)
    folder = out / "merged" / spec.name
    if not (folder / "recipe.json").is_file():
        trained = METHODS[spec.method].trained
        options = MergeOptions(weights=spec.weights if spec.weights == "dev" else
                               list(spec.weights) if spec.weights else None,
                               target=MIXTURE if spec.method == "fusion" else None,
                               settings=study.intermediate.replace(seed=study.seeds[0]) if trained else None,
                               progress=progress, sampling=spec.sampling, temperature=spec.temperature)
        resume = trained and (folder / "run.json").is_file()
        merge(spec.method, dirs, folder, options, overwrite=not resume and folder.exists(), resume=resume)
    return load_intermediate(folder)


def run_study(study: Study, out: str | os.PathLike, *, progress: bool = True,
              echo=print) -> StudyResult:
    """Run every unfinished cell of ``study`` into the folder ``out`` (see the module doc)."""
    out = Path(out)
    start = time.time()
    store = ResultsStore(out / STORE_FILE, {"study": study.name, "study_hash": study.study_hash(),
                                            "config": dataclasses.asdict(study)})
    cells = [(c, t, s) for s in study.seeds for t in study.targets for c in study.configs]
    todo = [x for x in cells if not store.finished(cell_id(x[0].name, x[1], x[2]))]
    skipped = [cell_id(c.name, t, s) for c, t, s in cells if store.finished(cell_id(c.name, t, s))]
    if skipped:
        echo(f"{len(skipped)} of {len(cells)} cells already finished in {out / STORE_FILE}; "
             f"running the other {len(todo)}")
    ran, failed = [], {}
    if not todo:
        return StudyResult(out, ran, skipped, failed, time.time() - start)

    # 1. Task adapters, once each; 2. the merged configurations they make.
    runs, setup_errors = {}, {}
    needed = list(dict.fromkeys(t for c, _, _ in todo for t in c.tasks))
    for task in needed:
        echo(f"[intermediate] {task}")
        try:
            runs[task] = _train_intermediate(study, task, out, progress)
        except AdaptertxError as e:
            setup_errors[task] = str(e)
            echo(f"[intermediate] {task} failed: {e}")
    inters = {}
    for spec in dict.fromkeys(c for c, _, _ in todo):
        try:
            if spec.method not in ("none", "single", "fusion") or spec.fusion_data == "mixture":
                echo(f"[merge] {spec.name} ({spec.method} of {', '.join(spec.tasks)})")
            inters[spec.name] = _merged(study, spec, runs, setup_errors, out, progress)
        except Exception as e:  # recorded per cell below; the grid goes on
            inters[spec.name] = e
            echo(f"[merge] {spec.name} failed: {e}")

    # 3. The cells (each records its task adapters' English test scores beside their floors).
    adapter_floors = {t: read_json(run / RUN_FILE).get("test_vs_majority") for t, run in runs.items()}
    bar = tqdm(todo, desc="cells", unit="cell", disable=not progress)
    for spec, target, seed in bar:
        cid = cell_id(spec.name, target, seed)
        bar.set_postfix_str(cid)
        inter = inters[spec.name]
        base = {"cell": cid, "config": spec.name, "method": spec.method, "target": target, "seed": seed,
                "intermediate": {"tasks": list(spec.tasks),
                                 "dir": (str(inter.source) if not isinstance(inter, Exception) and inter.source
                                         else None),
                                 "learned": {t: adapter_floors.get(t) for t in spec.tasks}}}
        try:
            if isinstance(inter, Exception):
                raise inter
            b = study.budget_for(target)
            config = EvalConfig(target=target, model=study.model, quant=study.quant, adapter=study.adapter,
                                languages=study.languages_for(target), max_eval_examples=study.max_eval_examples,
                                adapter_seed=study.adapter_seed, data_files=study.data_files_for(target),
                                max_candidates=study.max_candidates, **b.replace(seed=seed).training_json())
            result = evaluate(config, inter, out / "cells" / spec.name / target / f"seed{seed}", progress=progress)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            message = str(e) if isinstance(e, AdaptertxError) else f"{type(e).__name__}: {e}"
            detail = None if isinstance(e, AdaptertxError) else traceback.format_exc(limit=8)
            store.add({**base, "status": "failed", "error": message, **({"traceback": detail} if detail else {})})
            failed[cid] = message
            bar.write(f"{cid}: FAILED — {message}")
            continue
        store.add({**base, "status": "finished", **result.record()})
        ran.append(cid)
        bar.write(f"{cid}: {_one_line(result)}")
    bar.close()
    return StudyResult(out, ran, skipped, failed, time.time() - start)


def _one_line(result) -> str:
    from statistics import mean

    key = result.primary
    scores = {k: v.scores[key] for k, v in result.languages.items()}
    low = [v for k, v in scores.items() if result.languages[k].low_resource]
    high = [v for k, v in scores.items() if not result.languages[k].low_resource]
    parts = [f"{key} avg {mean(scores.values()):.1f} over {len(scores)} languages"] if scores else ["no scores"]
    if low:
        parts.append(f"low-resource {mean(low):.1f} ({len(low)})")
    if high:
        parts.append(f"others {mean(high):.1f} ({len(high)})")
    if result.missing:
        parts.append(f"{len(result.missing)} without data")
    return "; ".join(parts)
