"""What every merge method shares: its options, its result, and the recipe it writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from adaptertx.environment import versions
from adaptertx.errors import AdaptertxError
from adaptertx.rundir import TrainedAdapter
from adaptertx.settings import ADAPTER, ADAPTER_SEED, TrainSettings

#: ``MergeOptions.target`` that trains a Fusion on the mixture of its inputs' tasks.
MIXTURE = "mixture"


@dataclass(frozen=True)
class MergeOptions:
    """Options of :func:`adaptertx.merging.merge` beyond the inputs and the method.

    Attributes:
        weights: one weight per input (normalised; uniform when ``None``), or ``"dev"``: chosen on
            English dev sets (:func:`adaptertx.merging.dev_weights.choose_weights`); weight-space methods.
        dev_tasks: ``weights="dev"``: the tasks scored (default: the inputs' tasks).
        dev_examples: ``weights="dev"``: at most this many dev examples per task (default 200).
        grid_step: ``weights="dev"``: ``k`` of the grid step ``1/k`` (default 4).
        dev_search: ``weights="dev"``: ``auto`` (the grid up to 50 points, else greedy soup),
            ``grid`` or ``greedy_soup``.
        target: the task whose head goes into ``adapter/`` (weight-space methods, optional), or
            the task AdapterFusion is trained on (required for fusion; ``"mixture"``: the inputs' tasks).
        name: the merged adapter's name (default: the method and the tasks).
        density: TIES: the kept fraction of each task vector.
        scale: TIES and task arithmetic: the factor on the merged task vector.
        fusion_config: AdapterFusion: ``dynamic`` or ``static`` (``adapters``' configs).
        settings: AdapterFusion and multitask: how to train (default:
            :data:`adaptertx.settings.FUSION` for fusion, :data:`adaptertx.settings.TRAIN` for multitask).
        model: multitask without run folders: the base (default me5-small); runs bring their own.
        quant: AdapterFusion and multitask: how the base is stored (default: the runs').
        progress: AdapterFusion and multitask: show a progress bar.
        tasks: multitask without run folders: the tasks to train on.
        sampling: multitask: ``proportional``, ``temperature`` or ``uniform`` task sampling.
        temperature: multitask: ``T`` of temperature sampling.
        device: where AdapterFusion and multitask train and ``weights="dev"`` scores: ``auto``,
            ``cpu``, ``cuda``, ``cuda:N`` (:func:`adaptertx.environment.resolve_device`; not part
            of the result).
    """

    weights: list[float] | str | None = None
    target: str | None = None
    name: str | None = None
    density: float = 0.2
    scale: float = 1.0
    fusion_config: str = "dynamic"
    settings: TrainSettings | None = None
    model: str | None = None
    quant: str | None = None
    progress: bool = True
    tasks: list[str] | None = None
    sampling: str = "proportional"
    temperature: float = 2.0
    dev_tasks: list[str] | None = None
    dev_examples: int | None = None
    grid_step: int | None = None
    dev_search: str = "auto"
    device: str | torch.device = "auto"

    @property
    def from_dev(self) -> bool:
        return isinstance(self.weights, str) and self.weights == "dev"


@dataclass(frozen=True)
class MergeResult:
    """What :func:`adaptertx.merging.merge` wrote: the folder, the recipe, the merged adapter's name."""

    out: Path
    recipe: dict
    name: str


def recipe(method: str, inputs: list[TrainedAdapter], weights: list[float] | None, given: list[float] | None,
           name: str, *, where: Path, **extra) -> dict:
    """The ``recipe.json`` of a merge written in the folder ``where``: method, name, inputs (their run
    folders relative to ``where``, base fingerprints and adapter SHA-256), weights, base fingerprint,
    ``extra``, versions."""
    return {
        "method": method,
        "name": name,
        "inputs": [i.record(where, w) for i, w in zip(inputs, weights or [None] * len(inputs), strict=True)],
        "weights": weights,
        "weights_given": given,
        "fingerprint": inputs[0].fingerprint,
        **extra,
        "versions": versions(),
    }


def unique_names(inputs: list[TrainedAdapter]) -> list[str]:
    """One label per input: its task, numbered when a task comes twice."""
    names, seen = [], {}
    for i in inputs:
        base = i.task or i.adapter_name
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise AdaptertxError(f"{out} exists and is not empty; choose another --out or pass --overwrite")


def adapter_config_name(inp: TrainedAdapter) -> str:
    """The ``adapters`` config name the run trained with."""
    return inp.config.get("adapter", ADAPTER)


def adapter_seed(inp: TrainedAdapter) -> int:
    """The run's adapter-init seed (the default one when the run did not record it)."""
    return inp.adapter_seed if inp.adapter_seed is not None else ADAPTER_SEED
