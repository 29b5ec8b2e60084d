"""Weight-space merges (average, task arithmetic, TIES) written as AdapterHub folders::

    OUT/recipe.json
    OUT/adapter/          the merged adapter: adapter_config.json, adapter.safetensors
                          (+ head_config.json, model_head.safetensors: the --target task's head)
    OUT/heads/<task>/     every input task's head (load with ``model.load_head``)

A merged adapter is task-agnostic; each task keeps its own head. The tensors come from
:mod:`adaptertx.merging.strategies`; weights given, uniform, or chosen on English dev sets
(:mod:`adaptertx.merging.dev_weights`). A single input is returned unchanged (its adapter folder
copied byte for byte) by every method.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from adaptertx import rundir
from adaptertx.errors import AdaptertxError
from adaptertx.io import atomic_dir, atomic_write_text
from adaptertx.merging.common import MergeOptions, MergeResult, check_out, recipe, unique_names
from adaptertx.merging.dev_weights import choose_weights
from adaptertx.merging.strategies import (
    adapter_state,
    average_state,
    check_keys,
    check_same_adapter_config,
    initial_adapter_state,
    normalise_weights,
    seeds_differ,
    task_arithmetic_state,
    ties_state,
)
from adaptertx.modeling import rename_key
from adaptertx.rundir import HEAD_FILES, TrainedAdapter, check_same_base

log = logging.getLogger(__name__)

Combine = Callable[[list[dict], list[float], str], dict]


def copy_heads(inputs: list[TrainedAdapter], tmp: Path) -> dict[str, str]:
    """Each input's head into ``tmp/heads/<task>/``; returns task → folder (relative)."""
    heads = {}
    for inp, label in zip(inputs, unique_names(inputs), strict=True):
        if inp.has_head:
            dest = tmp / "heads" / label
            dest.mkdir(parents=True)
            for f in HEAD_FILES:
                shutil.copyfile(inp.adapter_dir / f, dest / f)
            heads[label] = f"heads/{label}"
    return heads


def _write_adapter(tmp: Path, template: TrainedAdapter, state: dict[str, torch.Tensor], name: str,
                   head_from: TrainedAdapter | None) -> None:
    """An AdapterHub adapter folder named ``name`` (config from ``template``), with
    ``head_from``'s head renamed to ``name`` when given."""
    folder = tmp / "adapter"
    folder.mkdir()
    cfg = json.loads((template.adapter_dir / "adapter_config.json").read_text())
    cfg["name"] = name
    atomic_write_text(folder / "adapter_config.json", json.dumps(cfg, indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "adapter.safetensors"))
    if head_from is not None:
        head_cfg = json.loads((head_from.adapter_dir / "head_config.json").read_text())
        head_cfg["name"] = name
        atomic_write_text(folder / "head_config.json", json.dumps(head_cfg, indent=2, sort_keys=True))
        head = rundir.load_tensors(head_from.adapter_dir / "model_head.safetensors")
        save_file({rename_key(k, head_from.adapter_name, name): v for k, v in head.items()},
                  str(folder / "model_head.safetensors"))


def _target_input(inputs: list[TrainedAdapter], target: str | None) -> TrainedAdapter | None:
    if target is None:
        return None
    for i in inputs:
        if i.task == target:
            if not i.has_head:
                raise AdaptertxError(f"the {target} run in {i.run_dir} saved no head")
            return i
    raise AdaptertxError(f"--target {target!r} is none of the inputs' tasks ({', '.join(i.task for i in inputs)})")


def _weights_from(options: MergeOptions) -> str:
    return "dev" if options.from_dev else "uniform" if options.weights is None else "given"


def _search_weights(inputs: list[TrainedAdapter], options: MergeOptions, combine: Combine | None = None):
    """:func:`adaptertx.merging.dev_weights.choose_weights` with the options' dev settings."""
    return choose_weights(inputs, dev_tasks=options.dev_tasks, grid_step=options.grid_step,
                          dev_examples=options.dev_examples, search=options.dev_search, combine=combine,
                          progress=options.progress, device=options.device)


def _weight_space(method: str, inputs: list[TrainedAdapter], out: Path, options: MergeOptions, overwrite: bool,
                  combine: Combine, **extra) -> MergeResult:
    given = None if options.from_dev else options.weights
    weights = None if options.from_dev else normalise_weights(given, len(inputs))
    check_same_base(inputs)
    check_same_adapter_config(inputs)
    head_from = _target_input(inputs, options.target)
    name = options.name or "_".join([method, *unique_names(inputs)])
    warnings = []
    if seeds_differ(inputs):
        message = (f"the adapters started from different initialisations (adapter seeds "
                   f"{', '.join(str(i.adapter_seed) for i in inputs)}): "
                   f"a weight-space merge of them is rarely meaningful")
        log.warning(message)
        warnings.append(message)
    check_out(out, overwrite)
    states = [adapter_state(i, name) for i in inputs]
    check_keys(states, inputs)
    if options.from_dev:
        search = _search_weights(inputs, options, combine)
        weights = search.weights
        extra["dev"] = search.record()
    merged = combine(states, weights, name)
    body = recipe(method, inputs, weights, given, name, where=out, warnings=warnings,
                  weights_from=_weights_from(options), **extra)
    with atomic_dir(out) as tmp:
        _write_adapter(tmp, inputs[0], merged, name, head_from)
        body["heads"] = copy_heads(inputs, tmp)
        body["target"] = options.target
        atomic_write_text(tmp / rundir.RECIPE_FILE, json.dumps(body, indent=2) + "\n")
    log.info("%s of %d adapters written to %s", method, len(inputs), out)
    return MergeResult(out, body, name)


def merge_average(inputs, out, options, overwrite) -> MergeResult:
    """Weighted average of the adapters' weights (uniform by default)."""
    return _weight_space("average", inputs, out, options, overwrite,
                         lambda states, weights, name: average_state(states, weights))


def _check_shared_init(inputs: list[TrainedAdapter], method: str) -> None:
    if seeds_differ(inputs) or inputs[0].adapter_seed is None:
        raise AdaptertxError(f"{method} needs one shared initialisation, but the adapter seeds differ "
                             f"({', '.join(str(i.adapter_seed) for i in inputs)}); use --method average or fusion")


def _init_cache(inp: TrainedAdapter) -> Callable[[str], dict[str, torch.Tensor]]:
    """:func:`initial_adapter_state` of ``inp`` per name, re-created once (a dev weight search
    merges many times)."""
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(name: str) -> dict[str, torch.Tensor]:
        if name not in cache:
            cache[name] = initial_adapter_state(inp, name)
        return cache[name]

    return get


def merge_task_arithmetic(inputs, out, options, overwrite) -> MergeResult:
    """Task arithmetic (Ilharco et al., 2023) relative to the shared initialisation."""
    _check_shared_init(inputs, "task_arithmetic")
    init = _init_cache(inputs[0])
    return _weight_space("task_arithmetic", inputs, out, options, overwrite,
                         lambda states, weights, name: task_arithmetic_state(
                             init(name), states, weights, options.scale),
                         scale=options.scale, seed=inputs[0].adapter_seed)


def merge_ties(inputs, out, options, overwrite) -> MergeResult:
    """TIES-merging (Yadav et al., 2023) relative to the shared initialisation."""
    if not 0 < options.density <= 1:
        raise AdaptertxError(f"density is the kept fraction of each task vector, in (0, 1]; got {options.density}")
    _check_shared_init(inputs, "ties")
    init = _init_cache(inputs[0])
    return _weight_space("ties", inputs, out, options, overwrite,
                         lambda states, weights, name: ties_state(
                             init(name), states, weights, options.density, options.scale),
                         density=options.density, scale=options.scale, seed=inputs[0].adapter_seed)


def copy_single(method: str, inp: TrainedAdapter, out: Path, options: MergeOptions, overwrite: bool) -> MergeResult:
    """One input: its adapter folder unchanged, its head, and a recipe saying so."""
    check_out(out, overwrite)
    extra = {}
    weight_space = method in rundir.WEIGHT_SPACE
    if options.from_dev and weight_space:  # checks the dev tasks; nothing to search
        extra = {"weights_from": "dev", "dev": _search_weights([inp], options).record()}
    elif weight_space:
        extra = {"weights_from": _weights_from(options)}
    body = recipe(method, [inp], [1.0], None if options.from_dev else options.weights, inp.adapter_name, where=out,
                  note="a single input is returned unchanged", **extra)
    with atomic_dir(out) as tmp:
        shutil.copytree(inp.adapter_dir, tmp / "adapter")
        body["heads"] = copy_heads([inp], tmp)
        atomic_write_text(tmp / rundir.RECIPE_FILE, json.dumps(body, indent=2) + "\n")
    log.info("one input: %s copied unchanged to %s", inp.adapter_dir, out)
    return MergeResult(out, body, inp.adapter_name)
