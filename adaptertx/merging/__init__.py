"""Merge task adapters trained on one base into one intermediate configuration.

Methods (:data:`MERGERS`, :func:`merge`; their properties in :data:`adaptertx.rundir.METHODS`):

- ``average``, ``task_arithmetic``, ``ties`` — weight-space merges
  (:mod:`.strategies` over the adapters' tensors, written by :mod:`.weight_space`; weights given,
  uniform, or chosen on English dev sets by :mod:`.dev_weights`);
- ``fusion`` — AdapterFusion trained on a target task or on the inputs' task mixture (:mod:`.fusion`);
- ``multitask`` — one new adapter trained on all the runs' tasks at once, one head per task
  (the baseline of Phang et al., 2020; :func:`adaptertx.training.train_multitask`; without
  runs: ``MergeOptions(tasks=[...])``).

Every merged folder holds ``recipe.json`` (method, inputs with their run folders and base
fingerprints, normalised and given weights and where they came from — ``weights_from``:
``given``, ``uniform`` or ``dev`` — seeds, parameters) and AdapterHub files in safetensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from adaptertx import rundir
from adaptertx.environment import resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.merging.common import MIXTURE, MergeOptions, MergeResult, adapter_config_name, adapter_seed
from adaptertx.merging.fusion import merge_fusion
from adaptertx.merging.strategies import normalise_weights
from adaptertx.merging.weight_space import copy_single, merge_average, merge_task_arithmetic, merge_ties
from adaptertx.registry import add_unique
from adaptertx.rundir import TrainedAdapter, check_same_base, load_run
from adaptertx.settings import TRAIN
from adaptertx.training import train_multitask

MergeFn = Callable[..., MergeResult]
#: Each merge method's function, called as ``fn(inputs, out, options, overwrite)``.
MERGERS: dict[str, MergeFn] = {}


def register(name: str) -> Callable[[MergeFn], MergeFn]:
    """Add a merge method to :data:`MERGERS` (names are unique and in :data:`adaptertx.rundir.METHODS`)."""

    def add(fn: MergeFn) -> MergeFn:
        if name not in rundir.MERGE_METHODS:
            raise AdaptertxError(f"merge method {name!r} is not in the methods table (adaptertx.rundir.METHODS)")
        return add_unique(MERGERS, name, fn, "merge method")

    return add


def merge_multitask(inputs: list[TrainedAdapter], out: Path, options: MergeOptions, overwrite: bool, *,
                    resume: bool = False) -> MergeResult:
    """One adapter trained jointly on the inputs' tasks (base, quant, adapter config and seed from
    the runs), or on ``options.tasks`` when there are no inputs."""
    if options.weights is not None:
        raise AdaptertxError("--weights applies to weight-space merges; multi-task training draws tasks by --sampling")
    settings: dict = {}
    runs, base_print = None, None
    if inputs:
        check_same_base(inputs)
        adapters = {adapter_config_name(i) for i in inputs}
        if len(adapters) > 1:
            raise AdaptertxError(f"the runs used different adapter configs ({', '.join(sorted(adapters))}); "
                                 f"multi-task training needs one")
        settings = {"model": inputs[0].model, "quant": inputs[0].quant, "adapter": adapters.pop(),
                    "adapter_seed": adapter_seed(inputs[0])}
        runs = [i.record(out) for i in inputs]
        base_print = inputs[0].fingerprint
    settings.update((options.settings or TRAIN).training_json())
    settings.update({k: v for k, v in (("model", options.model), ("quant", options.quant)) if v is not None})
    tasks = [i.task for i in inputs] if inputs else list(options.tasks or [])
    result = train_multitask(tasks, out, sampling=options.sampling, temperature=options.temperature,
                             target=options.target, name=options.name or "multitask", runs=runs,
                             base_fingerprint=base_print, resume=resume, overwrite=overwrite,
                             progress=options.progress, device=options.device, **settings)
    return MergeResult(out, result.recipe, result.name)


register("average")(merge_average)
register("task_arithmetic")(merge_task_arithmetic)
register("ties")(merge_ties)
register("fusion")(merge_fusion)
register("multitask")(merge_multitask)


def _check_options(method: str, options: MergeOptions) -> None:
    if method not in MERGERS:
        raise AdaptertxError(f"unknown merge method {method!r}; choose one of {', '.join(MERGERS)}")
    if options.from_dev and method not in rundir.WEIGHT_SPACE:
        raise AdaptertxError(f"--weights dev chooses the weights of a weight-space merge "
                             f"({', '.join(rundir.WEIGHT_SPACE)}) on English dev sets; it does not apply to "
                             f"--method {method}")
    dev_only = [flag for flag, value in (("--dev-tasks", options.dev_tasks), ("--dev-examples", options.dev_examples),
                                         ("--grid-step", options.grid_step),
                                         ("--dev-search", None if options.dev_search == "auto" else options.dev_search))
                if value is not None]
    if dev_only and not options.from_dev:
        raise AdaptertxError(f"{', '.join(dev_only)} apply with --weights dev only")
    if not rundir.METHODS[method].trained and (options.settings is not None or options.quant or options.model):
        raise AdaptertxError(f"training settings apply to --method fusion or multitask only, not {method}")


def merge(method: str, run_dirs: list[str | Path], out: str | Path, options: MergeOptions | None = None, *,
          overwrite: bool = False, resume: bool = False) -> MergeResult:
    """Merge the adapters of ``run_dirs`` with ``method`` into the folder ``out``.

    Args:
        method: a name in :data:`MERGERS` (``average``, ``task_arithmetic``, ``ties``, ``fusion``,
            ``multitask``).
        run_dirs: finished training run folders, all on one base (none for ``multitask`` with
            ``options.tasks``).
        out: the merged folder (refused when it exists and is not empty, unless ``overwrite``).
        options: weights, target, method parameters.
        overwrite: replace what ``out`` holds (weight-space methods replace it atomically).
        resume: AdapterFusion and multitask: continue an interrupted training in ``out``.
    """
    options = options or MergeOptions()
    _check_options(method, options)
    options = dataclasses.replace(options, device=resolve_device(options.device))
    if options.tasks is not None:
        if method != "multitask":
            raise AdaptertxError("--tasks applies to --method multitask only")
        if run_dirs:
            raise AdaptertxError("give run folders or --tasks for multi-task training, not both")
        return merge_multitask([], Path(out), options, overwrite, resume=resume)
    if not run_dirs:
        hint = " (or --tasks)" if method == "multitask" else ""
        raise AdaptertxError(f"nothing to merge: give at least one run folder{hint}")
    out = Path(out)
    inputs = [load_run(d) for d in run_dirs]
    if out.resolve() in {i.run_dir.resolve() for i in inputs}:
        raise AdaptertxError(f"--out {out} is one of the inputs")
    if len(inputs) == 1:
        if not options.from_dev:
            normalise_weights(options.weights, 1)
        return copy_single(method, inputs[0], out, options, overwrite)
    if rundir.METHODS[method].trained:
        return MERGERS[method](inputs, out, options, overwrite, resume=resume)
    if resume:
        raise AdaptertxError("--resume applies to AdapterFusion and multi-task training only")
    return MERGERS[method](inputs, out, options, overwrite)


__all__ = ["MERGERS", "MIXTURE", "MergeOptions", "MergeResult", "merge", "register"]
