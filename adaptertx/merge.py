"""Merge task adapters trained on one base (:func:`adaptertx.train.train` runs) into one model.

Methods (:data:`METHODS`, :func:`merge`):

- ``average`` — weight averaging ("model soups", Wortsman et al., 2022) of adapters with one
  config, trained on one base: ``theta = sum_i w_i theta_i`` with the weights normalised to sum
  to 1 (uniform by default). Meaningful only for adapters that start from one initialisation:
  ``adaptertx train`` seeds it (``--adapter-seed``, one per base by default) and records the seed,
  and averaging warns when the seeds differ.
- ``task_arithmetic`` — Ilharco et al., 2023, "Editing Models with Task Arithmetic" (ICLR):
  ``theta = theta_0 + scale * sum_i (N w_i) tau_i`` with task vectors ``tau_i = theta_i - theta_0``
  relative to the shared initialisation ``theta_0`` (uniform weights: the plain sum of the paper;
  ``scale = 1/N`` gives the average).
- ``ties`` — Yadav et al., 2023, "TIES-Merging: Resolving Interference When Merging Models"
  (NeurIPS): per task vector keep the ``density`` fraction of entries largest in magnitude
  (over the whole adapter), elect each entry's sign by the sign of the sum of the trimmed
  (weighted) task vectors, average the entries that agree with it, and add ``scale`` times that
  to ``theta_0``. Weights multiply the task vectors (``N w_i``, so uniform weights are the paper).
- ``fusion`` — AdapterFusion (Pfeiffer et al., 2021, EACL): the task adapters, frozen, under a
  ``Fuse`` layer trained with a new head on the target task's English data, with the training
  loop of :func:`adaptertx.train.train` (resume, checkpoints, best epoch, scores).
- ``multitask`` — multi-task joint training (the baseline of Phang et al., 2020): one new adapter
  trained on the English data of all the runs' tasks at once, one head per task
  (:func:`adaptertx.multitask.train_multitask`; without runs: ``MergeOptions(tasks=[...])``).

``theta_0`` is re-created, not stored: the base's architecture, the adapter config and the
run's ``adapter_seed`` give the initial adapter weights ``train`` started from.

Weights chosen on English dev sets (``MergeOptions(weights="dev")``, ``--weights dev``; the
weight-space methods only): :func:`adaptertx.merge_weights.choose_weights` scores candidate
weights — the simplex grid with step ``1/k`` (``grid_step``, default 4: ``C(n+k-1, n-1)``
points, 15 for three inputs) when it has at most 50 points, else a greedy soup (Wortsman et al.,
2022) — by the merged adapter's mean primary metric on the English validation split of each
``dev_tasks`` task (default: the inputs' tasks; at most ``dev_examples`` examples each, default
200, a fixed subset; a task without one: the part of its training split ``adaptertx train`` holds
out as validation), each scored through the head its run saved, with the evaluation
``adaptertx train`` runs every epoch. The best mean wins (ties: the weights closest to uniform);
the method then merges with those weights.

Every merged folder holds ``recipe.json`` (method, inputs with their run folders and base
fingerprints, normalised and given weights and where they came from — ``weights_from``:
``given``, ``uniform`` or ``dev``, the last with a ``dev`` block naming the dev tasks, split,
examples per task, search method and every candidate's weights, per-task scores and mean —
seeds, parameters) and AdapterHub files in safetensors. For the weight-space methods::

    OUT/recipe.json
    OUT/adapter/          the merged adapter: adapter_config.json, adapter.safetensors
                          (+ head_config.json, model_head.safetensors: the --target task's head)
    OUT/heads/<task>/     every input task's head (load with ``model.load_head``)

A merged adapter is task-agnostic; each task keeps its own head. The multi-task folder has the
same layout plus its training run's files (run.json, metrics.jsonl, checkpoints/). AdapterFusion's folder is a
training run folder (run.json, metrics.jsonl, checkpoints/) plus ``recipe.json``; its
``adapter/`` holds the whole setup as ``adapters``' ``save_adapter_setup`` writes it (one folder
per task adapter, the fusion, the target head, ``adapter_setup.json``; reload with
``model.load_adapter_setup(OUT/adapter, use_safetensors=True)``). With ``target="mixture"``
(``--target mixture``) the Fusion is trained on a mixture of the inputs' own English tasks
instead (:func:`adaptertx.multitask.train_multitask`'s loop and task sampling), each task
through its run's head (trained on with the Fusion); then ``adapter/`` holds the adapters, each
with its task's head as trained under the Fusion, and the Fusion (no active head), and
``heads/<task>/`` every task's head as for the other methods.

A single input is returned unchanged (its adapter folder copied byte for byte) by every method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from adaptertx.environment import versions
from adaptertx.errors import AdaptertxError
from adaptertx.registry import add_unique
from adaptertx.io import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter.safetensors")
HEAD_FILES = ("head_config.json", "model_head.safetensors")


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class MergeInput:
    """One finished training run to merge.

    Attributes:
        run_dir: the run folder; adapter_dir: its ``adapter/`` folder.
        task: the run's task; adapter_name: the adapter's (and head's) name in the files.
        fingerprint: the base model's fingerprint; model, quant: how the base was given and stored.
        adapter_seed: the adapter-init seed (``None`` when the run did not record one).
        adapter_config: the ``config`` block of ``adapter_config.json``; hidden_size: its hidden size.
        config: the run's whole training config.
    """

    run_dir: Path
    adapter_dir: Path
    task: str
    adapter_name: str
    fingerprint: str
    model: str
    quant: str
    adapter_seed: int | None
    adapter_config: dict
    hidden_size: int | None
    config: dict


def load_input(run_dir: str | Path) -> MergeInput:
    """Read a finished run folder; clear errors for anything that is not one."""
    run_dir = Path(run_dir)
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        raise AdaptertxError(f"{run_dir} is not a training run folder: it has no run.json")
    try:
        run = json.loads(run_file.read_text())
    except json.JSONDecodeError as e:
        raise AdaptertxError(f"{run_file} is not valid JSON ({e})") from None
    if run.get("status") != "finished":
        raise AdaptertxError(f"the run in {run_dir} is not finished (status {run.get('status')!r}); "
                             f"finish it with `adaptertx train --resume` first")
    adapter_dir = run_dir / "adapter"
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        raise AdaptertxError(f"{adapter_dir} lacks {', '.join(missing)}: expected an AdapterHub folder in safetensors")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    config = run.get("config") or {}
    if not run.get("fingerprint"):
        raise AdaptertxError(f"{run_file} records no base fingerprint; cannot check the inputs share a base")
    return MergeInput(run_dir=run_dir, adapter_dir=adapter_dir, task=config.get("task", cfg.get("name")),
                      adapter_name=run.get("adapter_name") or cfg["name"], fingerprint=run["fingerprint"],
                      model=config.get("model", cfg.get("model_name")), quant=config.get("quant", "none"),
                      adapter_seed=config.get("adapter_seed"), adapter_config=cfg.get("config", {}),
                      hidden_size=cfg.get("hidden_size"), config=config)


def check_same_base(inputs: list[MergeInput]) -> None:
    """Refuse inputs trained on different base models (fingerprints differ)."""
    prints = {i.fingerprint for i in inputs}
    if len(prints) > 1:
        listing = "; ".join(f"{i.run_dir} ({i.model}): {i.fingerprint}" for i in inputs)
        raise AdaptertxError(f"the adapters were trained on different base models (fingerprints differ): {listing}")


def check_same_adapter_config(inputs: list[MergeInput]) -> None:
    """Refuse adapters whose configs differ (their weights do not line up)."""
    first = inputs[0]
    for other in inputs[1:]:
        if other.adapter_config != first.adapter_config or other.hidden_size != first.hidden_size:
            keys = sorted(k for k in set(first.adapter_config) | set(other.adapter_config)
                          if first.adapter_config.get(k) != other.adapter_config.get(k))
            what = ", ".join(keys) if keys else "hidden_size"
            raise AdaptertxError(f"adapters of different configs cannot be merged by weights: {first.run_dir} and "
                                 f"{other.run_dir} differ in {what} (use --method fusion)")


def seeds_differ(inputs: list[MergeInput]) -> bool:
    return len({i.adapter_seed for i in inputs}) > 1


def normalise_weights(weights: list[float] | None, n: int) -> list[float]:
    """``n`` weights summing to 1: uniform for ``None``; given ones divided by their sum.

    Refuses an empty list of inputs, a count that does not match, non-finite weights and a sum
    that is not positive.
    """
    if n < 1:
        raise AdaptertxError("nothing to merge: give at least one run folder")
    if weights is None:
        return [1.0 / n] * n
    if isinstance(weights, str):
        raise AdaptertxError(f"weights are numbers, one per run folder, or 'dev' (chosen on English dev sets); "
                             f"got {weights!r}")
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise AdaptertxError(f"{len(weights)} weights for {n} adapters: give one weight per run folder")
    if not all(math.isfinite(w) for w in weights):
        raise AdaptertxError(f"weights must be finite numbers, got {weights}")
    total = sum(weights)
    if not total > 0:
        raise AdaptertxError(f"weights must sum to a positive number, got {weights} (sum {total:g})")
    return [w / total for w in weights]


# ------------------------------------------------------------------------------ tensors


def _rename(key: str, old: str, new: str) -> str:
    return ".".join(new if part == old else part for part in key.split("."))


def adapter_state(inp: MergeInput, name: str = "merged") -> dict[str, torch.Tensor]:
    """The input's adapter tensors, keyed with its adapter name replaced by ``name``."""
    state = load_file(str(inp.adapter_dir / "adapter.safetensors"))
    return {_rename(k, inp.adapter_name, name): v for k, v in state.items()}


def _check_keys(states: list[dict[str, torch.Tensor]], inputs: list[MergeInput]) -> None:
    first = states[0]
    for s, inp in zip(states[1:], inputs[1:]):
        if s.keys() != first.keys():
            diff = sorted(set(s) ^ set(first))[:3]
            raise AdaptertxError(f"the adapter in {inp.run_dir} has other tensors than {inputs[0].run_dir} ({diff})")
        for k, v in s.items():
            if v.shape != first[k].shape:
                raise AdaptertxError(f"tensor {k} has shape {tuple(v.shape)} in {inp.run_dir} but "
                                     f"{tuple(first[k].shape)} in {inputs[0].run_dir}")


def average_state(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i]`` per tensor (fp32 accumulation, each tensor's dtype out).

    One state with weight 1 returns its tensors unchanged.
    """
    if len(states) == 1 and weights == [1.0]:
        return {k: v.clone() for k, v in states[0].items()}
    out = {}
    for key, first in states[0].items():
        acc = torch.zeros_like(first, dtype=torch.float32)
        for s, w in zip(states, weights):
            acc.add_(s[key].float(), alpha=w)
        out[key] = acc.to(first.dtype)
    return out


def task_arithmetic_state(init: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]],
                          weights: list[float], scale: float) -> dict[str, torch.Tensor]:
    """``init + scale * sum_i (N weights[i]) (states[i] - init)`` (Ilharco et al., 2023)."""
    n = len(states)
    return {k: (init[k].float() + scale * sum(n * w * (s[k].float() - init[k].float()) for s, w in zip(states, weights))
                ).to(init[k].dtype) for k in init}


def ties_state(init: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]], weights: list[float],
               density: float, scale: float) -> dict[str, torch.Tensor]:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean, relative to ``init``.

    Trimming keeps, per task vector, the ``density`` fraction of its entries (over all its
    tensors) largest in magnitude. ``weights`` (normalised) multiply the task vectors as
    ``N weights[i]``. Returns ``init + scale * merged``.
    """
    if not 0 < density <= 1:
        raise AdaptertxError(f"density is the kept fraction of each task vector, in (0, 1]; got {density}")
    n = len(states)
    keys = list(init)
    taus = []
    for s, w in zip(states, weights):
        flat = torch.cat([(s[k].float() - init[k].float()).reshape(-1) for k in keys])
        keep = max(1, int(round(density * flat.numel())))
        if keep < flat.numel():
            threshold = flat.abs().kthvalue(flat.numel() - keep + 1).values
            flat = torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))
        taus.append(flat * (n * w))
    stacked = torch.stack(taus)                       # (n, params)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(0).clamp(min=1)
    merged = (stacked * agree).sum(0) / count
    out, offset = {}, 0
    for k in keys:
        size = init[k].numel()
        out[k] = (init[k].float() + scale * merged[offset:offset + size].view_as(init[k])).to(init[k].dtype)
        offset += size
    return out


def initial_adapter_state(inp: MergeInput, name: str = "merged") -> dict[str, torch.Tensor]:
    """The adapter weights ``train`` started from: the base's architecture, the adapter config
    and the run's ``adapter_seed`` (keys with the adapter named ``name``)."""
    from adapters import AdapterConfig, AutoAdapterModel
    from transformers import AutoConfig

    from adaptertx.models import resolve

    if inp.adapter_seed is None:
        raise AdaptertxError(f"{inp.run_dir} records no adapter_seed; its initialisation cannot be re-created")
    try:
        model = AutoAdapterModel.from_config(AutoConfig.from_pretrained(resolve(inp.model)))
    except (OSError, ValueError) as e:
        raise AdaptertxError(f"could not load the configuration of base {inp.model!r}: {str(e).splitlines()[0]}") from None
    torch.manual_seed(inp.adapter_seed)
    model.add_adapter(inp.adapter_name, config=AdapterConfig.load(inp.adapter_config))
    saved = load_file(str(inp.adapter_dir / "adapter.safetensors"))
    params = dict(model.named_parameters())
    state = {}
    for key in saved:
        if key not in params:
            raise AdaptertxError(f"re-creating the initialisation of {inp.run_dir} gave no tensor {key}")
        state[_rename(key, inp.adapter_name, name)] = params[key].detach().clone()
    return state


# ------------------------------------------------------------------------------ methods


@dataclass(frozen=True)
class MergeOptions:
    """Options of :func:`merge` beyond the inputs and the method.

    Attributes:
        weights: one weight per input (normalised; uniform when ``None``), or ``"dev"``: chosen on
            English dev sets (:func:`adaptertx.merge_weights.choose_weights`); weight-space methods.
        dev_tasks: ``weights="dev"``: the tasks scored (default: the inputs' tasks).
        dev_examples: ``weights="dev"``: at most this many dev examples per task (default 200).
        grid_step: ``weights="dev"``: ``k`` of the grid step ``1/k`` (default 4).
        dev_search: ``weights="dev"``: ``auto`` (the grid up to 50 points, else greedy soup),
            ``grid`` or ``greedy_soup``.
        target: the task whose head goes into ``adapter/`` (weight-space methods, optional), or
            the task AdapterFusion is trained on (required for fusion).
        name: the merged adapter's name (default: the method and the tasks).
        density: TIES: the kept fraction of each task vector.
        scale: TIES and task arithmetic: the factor on the merged task vector.
        fusion_config: AdapterFusion: ``dynamic`` or ``static`` (``adapters``' configs).
        train: AdapterFusion: keyword arguments of :class:`adaptertx.train.TrainConfig` (epochs,
            lr, batch_size, max_examples, max_steps, max_length, seed, quant, ...).
        progress: AdapterFusion and multitask: show a progress bar.
        tasks: multitask without run folders: the tasks to train on.
        sampling: multitask: ``proportional``, ``temperature`` or ``uniform`` task sampling.
        temperature: multitask: ``T`` of temperature sampling.
    """

    weights: list[float] | str | None = None
    target: str | None = None
    name: str | None = None
    density: float = 0.2
    scale: float = 1.0
    fusion_config: str = "dynamic"
    train: dict = dataclasses.field(default_factory=dict)
    progress: bool = True
    tasks: list[str] | None = None
    sampling: str = "proportional"
    temperature: float = 2.0
    dev_tasks: list[str] | None = None
    dev_examples: int | None = None
    grid_step: int | None = None
    dev_search: str = "auto"

    @property
    def from_dev(self) -> bool:
        return isinstance(self.weights, str) and self.weights == "dev"


WEIGHT_SPACE = ("average", "task_arithmetic", "ties")


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge` wrote: the folder, the recipe, the merged adapter's name."""

    out: Path
    recipe: dict
    name: str


MergeFn = Callable[[list[MergeInput], Path, MergeOptions, bool], MergeResult]
METHODS: dict[str, MergeFn] = {}


def register(name: str) -> Callable[[MergeFn], MergeFn]:
    """Add a merge method to :data:`METHODS` (names are unique)."""

    def add(fn: MergeFn) -> MergeFn:
        return add_unique(METHODS, name, fn, "merge method")

    return add


def _input_records(inputs: list[MergeInput], weights: list[float] | None = None) -> list[dict]:
    """The recipe's ``inputs``: each run's folder, task, adapter name, base and seed (and weight)."""
    return [{"run_dir": str(i.run_dir.resolve()), "task": i.task, "adapter_name": i.adapter_name,
             "fingerprint": i.fingerprint, "model": i.model, "quant": i.quant, "adapter_seed": i.adapter_seed,
             **({"weight": w} if weights is not None else {})}
            for i, w in zip(inputs, weights or [None] * len(inputs))]


def load_inputs_base(inputs: list[MergeInput], model_name: str, quant: str):
    """(model, tokenizer, fingerprint): the base ``model_name`` stored as ``quant``, refused
    unless it is the base the inputs' adapters were trained on."""
    from adaptertx.modeling import load_base
    from adaptertx.models import fingerprint

    model, tokenizer = load_base(model_name, quant)
    base_print = fingerprint(model.base_model)
    if base_print != inputs[0].fingerprint:
        raise AdaptertxError(f"base {model_name!r} (fingerprint {base_print}) is not the base the adapters were "
                             f"trained on ({inputs[0].fingerprint})")
    return model, tokenizer, base_print


def _recipe(method: str, inputs: list[MergeInput], weights: list[float] | None, given: list[float] | None,
            name: str, **extra) -> dict:
    return {
        "method": method,
        "name": name,
        "inputs": _input_records(inputs, weights),
        "weights": weights,
        "weights_given": given,
        "fingerprint": inputs[0].fingerprint,
        **extra,
        "versions": versions(),
    }


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise AdaptertxError(f"{out} exists and is not empty; choose another --out or pass --overwrite")


def _unique_names(inputs: list[MergeInput]) -> list[str]:
    names, seen = [], {}
    for i in inputs:
        base = i.task or i.adapter_name
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def _copy_heads(inputs: list[MergeInput], tmp: Path) -> dict[str, str]:
    """Each input's head into ``tmp/heads/<task>/``; returns task → folder (relative)."""
    heads = {}
    for inp, label in zip(inputs, _unique_names(inputs)):
        if all((inp.adapter_dir / f).is_file() for f in HEAD_FILES):
            dest = tmp / "heads" / label
            dest.mkdir(parents=True)
            for f in HEAD_FILES:
                shutil.copyfile(inp.adapter_dir / f, dest / f)
            heads[label] = f"heads/{label}"
    return heads


def _write_adapter(tmp: Path, template: MergeInput, state: dict[str, torch.Tensor], name: str,
                   head_from: MergeInput | None) -> None:
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
        head = load_file(str(head_from.adapter_dir / "model_head.safetensors"))
        save_file({_rename(k, head_from.adapter_name, name): v for k, v in head.items()},
                  str(folder / "model_head.safetensors"))


def _target_input(inputs: list[MergeInput], target: str | None) -> MergeInput | None:
    if target is None:
        return None
    for i in inputs:
        if i.task == target:
            if not all((i.adapter_dir / f).is_file() for f in HEAD_FILES):
                raise AdaptertxError(f"the {target} run in {i.run_dir} saved no head")
            return i
    raise AdaptertxError(f"--target {target!r} is none of the inputs' tasks ({', '.join(i.task for i in inputs)})")


def _weights_from(options: MergeOptions) -> str:
    return "dev" if options.from_dev else "uniform" if options.weights is None else "given"


def _search_weights(inputs: list[MergeInput], options: MergeOptions, combine=None):
    """:func:`adaptertx.merge_weights.choose_weights` with the options' dev settings."""
    from adaptertx.merge_weights import choose_weights

    return choose_weights(inputs, dev_tasks=options.dev_tasks, grid_step=options.grid_step,
                          dev_examples=options.dev_examples, search=options.dev_search, combine=combine,
                          progress=options.progress)


def _weight_space(method: str, inputs: list[MergeInput], out: Path, options: MergeOptions, overwrite: bool,
                  combine: Callable[[list[dict], list[float], str], dict], **extra) -> MergeResult:
    given = None if options.from_dev else options.weights
    weights = None if options.from_dev else normalise_weights(given, len(inputs))
    check_same_base(inputs)
    check_same_adapter_config(inputs)
    head_from = _target_input(inputs, options.target)
    name = options.name or "_".join([method, *_unique_names(inputs)])
    warnings = []
    if seeds_differ(inputs):
        message = (f"the adapters started from different initialisations (adapter seeds "
                   f"{', '.join(str(i.adapter_seed) for i in inputs)}): a weight-space merge of them is rarely meaningful")
        log.warning(message)
        warnings.append(message)
    _prepare_out(out, overwrite)
    states = [adapter_state(i, name) for i in inputs]
    _check_keys(states, inputs)
    if options.from_dev:
        search = _search_weights(inputs, options, combine)
        weights = search.weights
        extra["dev"] = search.record()
    merged = combine(states, weights, name)
    recipe = _recipe(method, inputs, weights, given, name, warnings=warnings, weights_from=_weights_from(options),
                     **extra)
    with atomic_dir(out) as tmp:
        _write_adapter(tmp, inputs[0], merged, name, head_from)
        recipe["heads"] = _copy_heads(inputs, tmp)
        recipe["target"] = options.target
        atomic_write_text(tmp / "recipe.json", json.dumps(recipe, indent=2) + "\n")
    log.info("%s of %d adapters written to %s", method, len(inputs), out)
    return MergeResult(out, recipe, name)


@register("average")
def merge_average(inputs, out, options, overwrite) -> MergeResult:
    """Weighted average of the adapters' weights (uniform by default)."""
    return _weight_space("average", inputs, out, options, overwrite,
                         lambda states, weights, name: average_state(states, weights))


def _check_shared_init(inputs: list[MergeInput], method: str) -> None:
    if seeds_differ(inputs) or inputs[0].adapter_seed is None:
        raise AdaptertxError(f"{method} needs one shared initialisation, but the adapter seeds differ "
                             f"({', '.join(str(i.adapter_seed) for i in inputs)}); use --method average or fusion")


def _init_cache(inp: MergeInput) -> Callable[[str], dict[str, torch.Tensor]]:
    """:func:`initial_adapter_state` of ``inp`` per name, re-created once (a dev weight search
    merges many times)."""
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(name: str) -> dict[str, torch.Tensor]:
        if name not in cache:
            cache[name] = initial_adapter_state(inp, name)
        return cache[name]

    return get


@register("task_arithmetic")
def merge_task_arithmetic(inputs, out, options, overwrite) -> MergeResult:
    """Task arithmetic (Ilharco et al., 2023) relative to the shared initialisation."""
    _check_shared_init(inputs, "task_arithmetic")
    init = _init_cache(inputs[0])
    return _weight_space("task_arithmetic", inputs, out, options, overwrite,
                         lambda states, weights, name: task_arithmetic_state(
                             init(name), states, weights, options.scale),
                         scale=options.scale, seed=inputs[0].adapter_seed)


@register("ties")
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


# ------------------------------------------------------------------------------ AdapterFusion


def _check_labels(task, rows: list[dict]) -> None:
    """Refuse a fusion dataset whose examples carry no labels."""
    field = {"classification": "label", "multiple_choice": "label", "extractive_qa": "answers",
             "tagging": "tags"}.get(task.family)
    unlabelled = [r for r in rows if field is None or r.get(field) in (None, "", [], {})]
    if unlabelled and (task.family != "extractive_qa" or len(unlabelled) == len(rows)):
        raise AdaptertxError(f"the fusion dataset ({task.name}, English training split) has no labels: "
                             f"{len(unlabelled)} of {len(rows)} examples lack {field!r}; AdapterFusion is trained "
                             f"on labelled data")


@register("fusion")
def merge_fusion(inputs, out, options, overwrite, *, resume: bool = False) -> MergeResult:
    """AdapterFusion over the inputs, trained on ``options.target``'s English data."""
    from adapters.composition import Fuse

    from adaptertx import train as train_mod
    from adaptertx.modeling import BuiltModel, add_head
    from adaptertx.tasks import get_task

    if options.weights is not None:
        raise AdaptertxError("--weights applies to weight-space merges; AdapterFusion learns its own weighting")
    if options.target is None:
        raise AdaptertxError("AdapterFusion needs --target TASK (the task whose English data trains the fusion) "
                             "or --target mixture (the inputs' own tasks)")
    if options.fusion_config not in ("dynamic", "static"):
        raise AdaptertxError(f"unknown fusion config {options.fusion_config!r}; choose dynamic or static")
    check_same_base(inputs)
    if options.target == MIXTURE:
        return _fusion_on_mixture(inputs, out, options, overwrite, resume)
    task = get_task(options.target)
    names = _unique_names(inputs)
    fuse = Fuse(*names)
    head = options.name or f"fusion_{task.name}"
    if head in names:
        raise AdaptertxError(f"the fusion's head name {head!r} is also an adapter's name; pass another --name")
    kw = {"model": inputs[0].model, "quant": inputs[0].quant, "adapter": inputs[0].config.get("adapter", "seq_bn"),
          "adapter_seed": inputs[0].adapter_seed if inputs[0].adapter_seed is not None else 42, "lr": 5e-5}
    kw.update(options.train)
    config = train_mod.TrainConfig(task=task.name, out=str(out), **kw)
    train_rows, _, _ = train_mod._english_splits(task, config.max_examples)
    _check_labels(task, train_rows)
    info = {"fusion": {"inputs": [str(i.run_dir.resolve()) for i in inputs], "adapters": names,
                       "fusion_config": options.fusion_config, "head": head}}
    if resume and (out / "run.json").exists():
        saved = json.loads((out / "run.json").read_text()).get("fusion")
        if saved != info["fusion"]:
            raise AdaptertxError(f"cannot resume {out} with other fusion inputs or settings")
    elif (out / "recipe.json").exists() and not overwrite:
        raise AdaptertxError(f"{out} already holds a merged model; pass --overwrite to replace it")

    def build(cfg, task_):
        model, tokenizer, base_print = _fusion_model(cfg, inputs, names, fuse, options.fusion_config)
        add_head(model, task_, head)
        model.train_adapter_fusion(fuse)
        for p in model.heads[head].parameters():
            p.requires_grad_(True)
        model.active_head = head
        return BuiltModel(model, tokenizer, head, base_print, autocast=cfg.quant != "none")

    def save(model, built, folder: Path) -> None:
        model.save_adapter_setup(str(folder), fuse, head_setup=head, use_safetensors=True)

    hooks = train_mod.TrainHooks(build=build, save=save, extra_loss=_fusion_regulariser(options.fusion_config),
                                 run_info=info)
    result = train_mod.train(config, resume=resume, overwrite=overwrite, progress=options.progress, hooks=hooks)
    recipe = _recipe("fusion", inputs, None, None, head, target=task.name, adapters=names,
                     fusion_config=options.fusion_config, seed=config.seed, adapter_seed=config.adapter_seed,
                     train=dataclasses.asdict(config), validation=result.validation, test=result.test,
                     layout="adapter/ holds the setup written by save_adapter_setup: load it with "
                            "model.load_adapter_setup(<out>/adapter, use_safetensors=True)")
    atomic_write_text(out / "recipe.json", json.dumps(recipe, indent=2) + "\n")
    return MergeResult(out, recipe, head)


def _fusion_model(config, inputs: list[MergeInput], names: list[str], fuse, fusion_config: str, heads: bool = False):
    """(model, tokenizer, base fingerprint): the base with the inputs' adapters as ``names``
    (and, with ``heads``, each run's head named by its task) and a new AdapterFusion ``fuse``
    (initialised from ``config.adapter_seed``, with the one-GEMM fusion attention), on the
    base the adapters were trained on (refused otherwise)."""
    from adaptertx.fusion import fast_fusion_attention

    model, tokenizer, base_print = load_inputs_base(inputs, config.model, config.quant)
    for inp, name in zip(inputs, names):
        model.load_adapter(str(inp.adapter_dir), load_as=name, with_head=False, use_safetensors=True)
        if heads:
            model.load_head(str(inp.adapter_dir), load_as=inp.task, use_safetensors=True)
    torch.manual_seed(config.adapter_seed)
    model.add_adapter_fusion(fuse, config=fusion_config)
    fast_fusion_attention(model)
    return model, tokenizer, base_print


def _fusion_regulariser(fusion_config: str):
    """The extra loss of a Fusion's training: ``adapters``' value-matrix regularisation
    (dynamic Fusion), none for a static one."""
    if fusion_config != "dynamic":
        return None
    return lambda model: model.get_fusion_regularization_loss()


#: ``MergeOptions.target`` that trains a Fusion on the mixture of its inputs' tasks.
MIXTURE = "mixture"


def _fusion_on_mixture(inputs: list[MergeInput], out: Path, options: MergeOptions, overwrite: bool,
                       resume: bool) -> MergeResult:
    """AdapterFusion trained on the inputs' own English tasks at once, each batch through the
    head its run saved (:func:`adaptertx.multitask.train_multitask` with hooks)."""
    from adapters.composition import Fuse

    from adaptertx.modeling import BuiltModel
    from adaptertx.multitask import MultitaskHooks, train_multitask

    tasks = [i.task for i in inputs]
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise AdaptertxError(f"a Fusion on the task mixture takes one run per task; {', '.join(twice)} "
                             f"{'is' if len(twice) == 1 else 'are'} given twice")
    for i in inputs:
        if not all((i.adapter_dir / f).is_file() for f in HEAD_FILES):
            raise AdaptertxError(f"the {i.task} run in {i.run_dir} saved no head; a Fusion on the task mixture "
                                 f"scores every task through its own head")
    names = _unique_names(inputs)
    fuse = Fuse(*names)
    name = options.name or "fusion_mixture"
    if name in names:
        raise AdaptertxError(f"the fusion's name {name!r} is also an adapter's name; pass another --name")
    runs = _input_records(inputs)
    if resume and (out / "run.json").exists():
        saved = json.loads((out / "run.json").read_text()).get("inputs")
        if saved is not None and [r["run_dir"] for r in saved] != [r["run_dir"] for r in runs]:
            raise AdaptertxError(f"cannot resume {out} with other fusion inputs")
    settings = {"model": inputs[0].model, "quant": inputs[0].quant,
                "adapter": inputs[0].config.get("adapter", "seq_bn"),
                "adapter_seed": inputs[0].adapter_seed if inputs[0].adapter_seed is not None else 42, "lr": 5e-5,
                "sampling": options.sampling, "temperature": options.temperature, "name": name}
    settings.update(options.train)

    def build(config, task_list) -> BuiltModel:
        model, tokenizer, base_print = _fusion_model(config, inputs, names, fuse, options.fusion_config, heads=True)
        model.train_adapter_fusion(fuse)
        for task in task_list:
            for p in model.heads[task.name].parameters():
                p.requires_grad_(True)
        return BuiltModel(model, tokenizer, name, base_print, autocast=config.quant != "none")

    def save(model, config, folder: Path) -> dict[str, str]:
        with atomic_dir(folder / "heads") as tmp:
            for task in config.tasks:
                model.save_head(str(tmp / task), task, use_safetensors=True)
        with atomic_dir(folder / "adapter") as tmp:
            model.save_adapter_setup(str(tmp), fuse, use_safetensors=True)
        return {task: f"heads/{task}" for task in config.tasks}

    hooks = MultitaskHooks("fusion", build, save, _fusion_regulariser(options.fusion_config),
                           recipe={"target": MIXTURE, "adapters": names, "fusion_config": options.fusion_config,
                                   "layout": "adapter/ holds the adapters (each with its task's head) and the Fusion "
                                             "(save_adapter_setup, no active head); heads/<task>/ each task's head"})
    result = train_multitask(tasks, out, resume=resume, overwrite=overwrite, progress=options.progress,
                             runs=runs, base_fingerprint=inputs[0].fingerprint, hooks=hooks, **settings)
    return MergeResult(out, result.recipe, name)


# ------------------------------------------------------------------------------ multi-task training


@register("multitask")
def merge_multitask(inputs, out, options, overwrite, *, resume: bool = False) -> MergeResult:
    """One adapter trained jointly on the inputs' tasks (base, quant, adapter config and seed from
    the runs), or on ``options.tasks`` when there are no inputs."""
    from adaptertx.multitask import train_multitask

    if options.weights is not None:
        raise AdaptertxError("--weights applies to weight-space merges; multi-task training draws tasks by --sampling")
    settings = {}
    runs, base_print = None, None
    if inputs:
        check_same_base(inputs)
        adapters = {i.config.get("adapter", "seq_bn") for i in inputs}
        if len(adapters) > 1:
            raise AdaptertxError(f"the runs used different adapter configs ({', '.join(sorted(adapters))}); "
                                 f"multi-task training needs one")
        settings = {"model": inputs[0].model, "quant": inputs[0].quant, "adapter": adapters.pop(),
                    "adapter_seed": inputs[0].adapter_seed if inputs[0].adapter_seed is not None else 42}
        runs = _recipe("multitask", inputs, None, None, "")["inputs"]
        base_print = inputs[0].fingerprint
    settings.update(options.train)
    tasks = [i.task for i in inputs] if inputs else list(options.tasks or [])
    result = train_multitask(tasks, out, sampling=options.sampling, temperature=options.temperature,
                             target=options.target, name=options.name or "multitask", runs=runs,
                             base_fingerprint=base_print, resume=resume, overwrite=overwrite,
                             progress=options.progress, **settings)
    return MergeResult(out, result.recipe, result.name)


# ------------------------------------------------------------------------------ entry point


def merge(method: str, run_dirs: list[str | Path], out: str | Path, options: MergeOptions | None = None, *,
          overwrite: bool = False, resume: bool = False) -> MergeResult:
    """Merge the adapters of ``run_dirs`` with ``method`` into the folder ``out``.

    Args:
        method: a name in :data:`METHODS` (``average``, ``task_arithmetic``, ``ties``, ``fusion``,
            ``multitask``).
        run_dirs: finished training run folders, all on one base (none for ``multitask`` with
            ``options.tasks``).
        out: the merged folder (refused when it exists and is not empty, unless ``overwrite``).
        options: weights, target, method parameters.
        overwrite: replace what ``out`` holds (weight-space methods replace it atomically).
        resume: AdapterFusion and multitask: continue an interrupted training in ``out``.
    """
    options = options or MergeOptions()
    if method not in METHODS:
        raise AdaptertxError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    if options.from_dev and method not in WEIGHT_SPACE:
        raise AdaptertxError(f"--weights dev chooses the weights of a weight-space merge ({', '.join(WEIGHT_SPACE)}) "
                             f"on English dev sets; it does not apply to --method {method}")
    dev_only = [flag for flag, value in (("--dev-tasks", options.dev_tasks), ("--dev-examples", options.dev_examples),
                                         ("--grid-step", options.grid_step),
                                         ("--dev-search", None if options.dev_search == "auto" else options.dev_search))
                if value is not None]
    if dev_only and not options.from_dev:
        raise AdaptertxError(f"{', '.join(dev_only)} apply with --weights dev only")
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
    inputs = [load_input(d) for d in run_dirs]
    outs = {i.run_dir.resolve() for i in inputs}
    if out.resolve() in outs:
        raise AdaptertxError(f"--out {out} is one of the inputs")
    if len(inputs) == 1:
        if not options.from_dev:
            normalise_weights(options.weights, 1)
        return _single(method, inputs[0], out, options, overwrite)
    if method == "fusion":
        return merge_fusion(inputs, out, options, overwrite, resume=resume)
    if method == "multitask":
        return merge_multitask(inputs, out, options, overwrite, resume=resume)
    if resume:
        raise AdaptertxError("--resume applies to AdapterFusion and multi-task training only")
    return METHODS[method](inputs, out, options, overwrite)


def _single(method: str, inp: MergeInput, out: Path, options: MergeOptions, overwrite: bool) -> MergeResult:
    """One input: its adapter folder unchanged, its head, and a recipe saying so."""
    _prepare_out(out, overwrite)
    extra = {}
    if options.from_dev and method in WEIGHT_SPACE:  # checks the dev tasks; nothing to search
        extra = {"weights_from": "dev", "dev": _search_weights([inp], options).record()}
    elif method in WEIGHT_SPACE:
        extra = {"weights_from": _weights_from(options)}
    recipe = _recipe(method, [inp], [1.0], None if options.from_dev else options.weights, inp.adapter_name,
                     note="a single input is returned unchanged", **extra)
    with atomic_dir(out) as tmp:
        shutil.copytree(inp.adapter_dir, tmp / "adapter")
        recipe["heads"] = _copy_heads([inp], tmp)
        atomic_write_text(tmp / "recipe.json", json.dumps(recipe, indent=2) + "\n")
    log.info("one input: %s copied unchanged to %s", inp.adapter_dir, out)
    return MergeResult(out, recipe, inp.adapter_name)
