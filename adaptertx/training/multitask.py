"""Multi-task joint training: one adapter trained on several English tasks at once.

The baseline Phang et al. (2020) compare intermediate-task combinations with: instead of
merging adapters trained one task at a time, train ONE adapter on the English training data
of all tasks together, each task with its own prediction head (an ``adapters`` flexible-head
model: one :func:`adaptertx.modeling.add_head` per task, the head picked per batch with
``model(**batch, head=task)``). Batches are drawn as :mod:`adaptertx.training.sampling` says.
Each epoch ends with an evaluation on every task's validation split; the best epoch is the one
with the highest mean of the tasks' primary validation scores (accuracy, or F1 for QA and
NER), and its adapter and heads are scored on each task's test split.

The loop is :func:`adaptertx.training.loop.fit`. A head gets gradient only from its own task's
batches (the others' grads stay ``None``, so AdamW leaves them untouched in that step).

The output folder has the layout of a weight-space merge, so downstream code treats both alike::

    OUT/recipe.json          method "multitask", tasks, sampling, probabilities, seeds, the train
                             config, per-task validation/test scores, base fingerprint, versions,
                             device
                             (written last: a folder with recipe.json is a finished merge)
    OUT/adapter/             the adapter in AdapterHub files (adapter_config.json,
                             adapter.safetensors) + the --target task's head renamed to the adapter
    OUT/heads/<task>/        every task's head (head_config.json, model_head.safetensors;
                             ``model.load_head(OUT/heads/<task>, use_safetensors=True)``)
    OUT/run.json             config, status ("finished" at the end), fingerprint, scores
    OUT/metrics.jsonl        one JSON line per optimiser step (with its tasks) and evaluation
    OUT/checkpoints/         resume state (last.safetensors) and best.safetensors

:func:`train_mixture` is the same job for a model built elsewhere (AdapterFusion trained on the
mixture of its task adapters' data).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import save_file

from adaptertx import rundir
from adaptertx.environment import resolve_device, versions
from adaptertx.errors import AdaptertxError
from adaptertx.floors import versus_floor
from adaptertx.io import atomic_dir, atomic_write_text
from adaptertx.metrics import score
from adaptertx.modeling import BuiltModel, base_device, build_adapter_model, check_trainable, rename_key
from adaptertx.settings import ADAPTER, ADAPTER_SEED, DEFAULT_MODEL, QUANT, TrainSettings, check_quant
from adaptertx.tasks import Task, get_task
from adaptertx.training.data import encode, english_splits
from adaptertx.training.loop import MixturePlan, Validation, fit
from adaptertx.training.sampling import SAMPLINGS, sampling_probabilities
from adaptertx.training.scoring import predict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MultitaskConfig(TrainSettings):
    """Everything that decides a multi-task training run's result.

    Attributes:
        tasks: registry names of the tasks (their English data is used), each once.
        model, out, adapter, quant, adapter_seed: as in :class:`adaptertx.training.TrainConfig`.
        sampling: how the task of each batch is drawn: ``proportional``, ``temperature`` or
            ``uniform`` (:func:`adaptertx.training.sampling.sampling_probabilities`).
        temperature: ``T`` of temperature sampling (``p_i ∝ n_i^(1/T)``); > 0.
        target: the task whose head also goes into ``adapter/`` (renamed to the adapter), or ``None``.
        name: the adapter's name.

    The training settings (:class:`adaptertx.settings.TrainSettings`) apply to every task:
    ``max_examples`` to every task's splits, ``seed`` also seeds the task schedule, and an epoch
    is ``sum_i ceil(n_i / batch_size)`` batches.
    """

    tasks: tuple[str, ...]
    model: str = DEFAULT_MODEL
    out: str = "merged/multitask"
    adapter: str = ADAPTER
    quant: str = QUANT
    sampling: str = "proportional"
    temperature: float = 2.0
    target: str | None = None
    name: str = "multitask"
    adapter_seed: int = ADAPTER_SEED

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str) or not isinstance(self.tasks, Sequence):
            raise AdaptertxError(f"tasks is a list of task names, got {self.tasks!r}")
        if not self.tasks:
            raise AdaptertxError("no tasks to train: give at least one task (multi-task training needs two or more)")
        names = []
        for given in self.tasks:
            task = get_task(str(given))
            check_trainable(task)
            if task.name in names:
                raise AdaptertxError(f"task {task.name!r} is given twice; give each task once")
            names.append(task.name)
        object.__setattr__(self, "tasks", tuple(names))
        if self.sampling not in SAMPLINGS:
            raise AdaptertxError(f"unknown sampling {self.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise AdaptertxError(f"temperature must be a positive number, got {self.temperature}")
        if self.target is not None:
            target = get_task(self.target).name
            if target not in names:
                raise AdaptertxError(f"--target {self.target!r} is none of the tasks ({', '.join(names)})")
            object.__setattr__(self, "target", target)
        if not self.name or any(c in self.name for c in "., /"):
            raise AdaptertxError(f"adapter name {self.name!r} must be non-empty without '.', ',', '/' or spaces")
        super().__post_init__()
        check_quant(self.quant)

    def to_json(self) -> dict:
        """The config as JSON values (``tasks`` as a list), as written into run.json."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class MultitaskResult:
    """What a finished multi-task run reports.

    Attributes:
        out: the output folder; name: the adapter's name; recipe: what ``recipe.json`` holds.
        best_epoch: the epoch with the best mean primary validation score.
        validation, test: per task, the best epoch's scores (test: ``{}`` without a test split).
        mean_validation: the mean of the tasks' primary validation scores at the best epoch.
        probabilities: per task, the probability a batch is drawn from it.
        steps: optimiser steps taken; seconds: wall time of the run.
    """

    out: Path
    name: str
    recipe: dict
    best_epoch: int
    validation: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    mean_validation: float
    probabilities: dict[str, float]
    steps: int
    seconds: float


def _save_outputs(model, config: MultitaskConfig, out: Path) -> dict[str, str]:
    """``heads/<task>/`` for every task, then ``adapter/`` (+ the target's head renamed)."""
    with atomic_dir(out / "heads") as tmp:
        for task in config.tasks:
            model.save_head(str(tmp / task), task, use_safetensors=True)
    with atomic_dir(out / "adapter") as tmp:
        model.save_adapter(str(tmp), config.name, with_head=False, use_safetensors=True)
        if config.target is not None:
            source = out / "heads" / config.target
            head_cfg = json.loads((source / "head_config.json").read_text())
            head_cfg["name"] = config.name
            atomic_write_text(tmp / "head_config.json", json.dumps(head_cfg, indent=2, sort_keys=True))
            head = rundir.load_tensors(source / "model_head.safetensors")
            save_file({rename_key(k, config.target, config.name): v.contiguous() for k, v in head.items()},
                      str(tmp / "model_head.safetensors"))
    return {task: f"heads/{task}" for task in config.tasks}


def multitask_config(tasks: Sequence[str], out: str | Path, settings: dict) -> MultitaskConfig:
    """A :class:`MultitaskConfig` from keyword settings, with a clear error for unknown ones."""
    known = {f.name for f in dataclasses.fields(MultitaskConfig)} - {"tasks", "out"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise AdaptertxError(f"unknown multi-task setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return MultitaskConfig(tasks=tasks if isinstance(tasks, str) else tuple(tasks), out=str(out), **settings)


def train_multitask(tasks: Sequence[str], out: str | Path, *, resume: bool = False, overwrite: bool = False,
                    progress: bool = True, on_step: Callable[[int, dict], None] | None = None,
                    runs: list[dict] | None = None, base_fingerprint: str | None = None,
                    device: str | torch.device | None = "auto", **settings) -> MultitaskResult:
    """Train one adapter on the English data of ``tasks`` jointly, one head per task.

    Args:
        tasks: task names (each once; retrieval tasks have no head and are refused).
        out: the output folder (layout in the module docstring).
        resume: continue the unfinished run in ``out`` from its last checkpoint.
        overwrite: replace whatever ``out`` holds.
        progress: show a progress bar.
        on_step: called after every optimiser step with ``(step, {"loss", "lr", "tasks", ...})``.
        runs: the training runs the tasks came from (recorded in the recipe as its inputs).
        base_fingerprint: refuse a base whose fingerprint differs (the runs' base).
        device: where to train (as :func:`adaptertx.training.train` takes it).
        **settings: any other :class:`MultitaskConfig` field (model, quant, adapter, adapter_seed,
            sampling, temperature, target, name, epochs, batch_size, lr, max_examples, ...).

    Returns:
        the best epoch's per-task scores; the folder ends with ``recipe.json``.
    """
    config = multitask_config(tasks, out, settings)
    device = resolve_device(device)

    def build(task_list: list[Task]) -> BuiltModel:
        # The same builder and seed as single-task runs: the adapter starts from their weights.
        return build_adapter_model(config.model, task_list, adapter=config.adapter, quant=config.quant,
                                   adapter_seed=config.adapter_seed, name=config.name, device=device)

    return train_mixture(config, build, lambda model, folder: _save_outputs(model, config, folder),
                         method="multitask", resume=resume, overwrite=overwrite, progress=progress, on_step=on_step,
                         runs=runs, base_fingerprint=base_fingerprint)


def train_mixture(config: MultitaskConfig, build: Callable[[list[Task]], BuiltModel],
                  save: Callable[[torch.nn.Module, Path], dict[str, str]], *, method: str,
                  recipe_extra: dict | None = None,
                  extra_loss: Callable[[torch.nn.Module], torch.Tensor | None] | None = None,
                  resume: bool = False, overwrite: bool = False, progress: bool = True,
                  on_step: Callable[[int, dict], None] | None = None, runs: list[dict] | None = None,
                  base_fingerprint: str | None = None) -> MultitaskResult:
    """Train the model ``build(tasks)`` returns (one head per task, named by the task) on the
    mixture of ``config.tasks``' English data into ``config.out``, ending with ``recipe.json``.

    Args:
        config: the run.
        build: returns the model to train; its trainable parameters are optimised.
        save: writes the best model into ``out`` (``adapter/``, ``heads/<task>/``) and returns
            ``{task: head folder relative to out}``, as ``save(model, out)``.
        method: the merge method recorded in ``run.json`` and ``recipe.json``.
        recipe_extra: extra fields of ``recipe.json``.
        extra_loss: a loss term added to every step, or ``None``.
        resume, overwrite, progress, on_step, runs, base_fingerprint: as in :func:`train_multitask`.
    """
    task_list = [get_task(t) for t in config.tasks]
    out = Path(config.out)
    mode = rundir.prepare(out, config.to_json(), resume=resume, overwrite=overwrite, method=method)
    splits = {t.name: english_splits(t, config.max_examples) for t in task_list}
    sizes = [len(splits[t.name][0]) for t in task_list]
    probs = sampling_probabilities(sizes, config.sampling, config.temperature)

    set_seed(config.seed)
    built = build(task_list)
    if base_fingerprint is not None and built.fingerprint != base_fingerprint:
        raise AdaptertxError(f"base {config.model!r} (fingerprint {built.fingerprint}) is not the base the runs were "
                             f"trained on ({base_fingerprint})")
    set_seed(config.seed)  # dropout follows the run seed, not the adapter-init seed
    train_feats = {t.name: encode(t, splits[t.name][0], built.tokenizer, config.max_length, "training")
                   for t in task_list}
    dev_feats = {t.name: encode(t, splits[t.name][1], built.tokenizer, config.max_length, "validation")
                 for t in task_list}
    probabilities = dict(zip(config.tasks, probs, strict=True))
    run_info = {"fingerprint": built.fingerprint, "adapter_name": config.name, "inputs": runs or [],
                "sizes": dict(zip(config.tasks, sizes, strict=True)), "probabilities": probabilities,
                "device": str(base_device(built.model))}
    if mode != rundir.RESUME:
        rundir.start(out, config.to_json(), method=method, **run_info)
    plan = MixturePlan(tuple(task_list), train_feats, tuple(probs), config.batch_size, config.seed)
    validation = Validation(tuple(task_list), dev_feats, {t.name: splits[t.name][1] for t in task_list},
                            config.batch_size * 2, heads=True)
    fitted = fit(built, plan, validation, out, config.settings(), resume=mode == rundir.RESUME, progress=progress,
                 desc=f"{method} {'+'.join(config.tasks)}", on_step=on_step, extra_loss=extra_loss)

    state = fitted.state
    test_scores, baselines, comparisons = _test_all(built, fitted.model, config, task_list, splits)
    seconds = time.time() - fitted.start
    recipe: dict = {}
    if fitted.is_main_process:
        heads = save(fitted.model, out)
        rundir.append_log(out, {"step": state["step"], "test": test_scores})
        results = {"best_epoch": state["best_epoch"], "validation": state["best"],
                   "mean_validation": state["best_value"], "test": test_scores, "batches": state["drawn"],
                   "steps": state["step"], "seconds": round(seconds, 1)}
        rundir.write_run(out, config.to_json(), "finished", method=method, **run_info, **results,
                         test_majority_baseline=baselines, test_vs_majority=comparisons,
                         trainable_params=fitted.trainable_params, total_params=fitted.total_params)
        recipe = {
            "method": method, "name": config.name, "tasks": list(config.tasks), "inputs": runs or [],
            "weights": None, "weights_given": None, "sampling": config.sampling,
            "temperature": config.temperature if config.sampling == "temperature" else None,
            "sizes": run_info["sizes"], "probabilities": probabilities, "seed": config.seed,
            "adapter_seed": config.adapter_seed, "train": config.to_json(), "target": config.target,
            "heads": heads, **results, "fingerprint": built.fingerprint, "versions": versions(),
            "device": run_info["device"],
            **(recipe_extra or {}),
        }
        rundir.write_recipe(out, recipe)
        log.info("%s over %s written to %s", method, ", ".join(config.tasks), out)
    return MultitaskResult(out, config.name, recipe, state["best_epoch"], state["best"], test_scores,
                           state["best_value"], probabilities, state["step"], seconds)


def _test_all(built: BuiltModel, model, config: MultitaskConfig, task_list: list[Task], splits: dict):
    """Each task's test scores through its own head, its majority baseline and the paired difference."""
    test_scores: dict[str, dict] = {}
    baselines: dict[str, float | None] = {}
    comparisons: dict[str, dict | None] = {}
    for task in task_list:
        train_rows, _, test_rows = splits[task.name]
        if test_rows is None:
            test_scores[task.name], baselines[task.name], comparisons[task.name] = {}, None, None
            continue
        feats = encode(task, test_rows, built.tokenizer, config.max_length, "test")
        model.active_head = task.name
        preds = predict(built, task, feats, batch_size=config.batch_size * 2)
        test_scores[task.name] = score(task, preds, test_rows, lang="en")
        comparisons[task.name] = versus_floor(task, preds, test_rows, train_rows)
        baselines[task.name] = None if comparisons[task.name] is None else comparisons[task.name]["floor"]
    return test_scores, baselines, comparisons
