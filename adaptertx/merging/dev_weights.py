"""Averaging weights chosen on English dev sets (``adaptertx merge --weights dev``).

:func:`choose_weights` scores candidate weight vectors for a weight-space merge
(:mod:`adaptertx.merging.weight_space`: ``average``, ``task_arithmetic``, ``ties``) and returns the best.
A candidate's score is the merged adapter evaluated on the English dev split of each dev task
(default: every input run's own task), each through the head the run of that task saved, with
the evaluation training runs after every epoch
(:func:`adaptertx.training.scoring.score_features`); the objective is the mean over the dev tasks of each task's
primary metric (:data:`adaptertx.metrics.PRIMARY`).

Candidates:

- ``grid`` — every point of the simplex grid with step ``1/k``: the ``C(n+k-1, n-1)`` weight
  vectors of ``n`` non-negative multiples of ``1/k`` summing to 1 (15 for 3 inputs and k = 4).
  The default whenever that count is at most :data:`MAX_GRID`.
- ``greedy_soup`` — Wortsman et al., 2022, "Model soups" (ICML): score each run alone, sort the
  runs by that score, start the soup with the best one and add each next run when the mean dev
  score of the uniform average over the soup does not drop. The weights are uniform over the
  kept runs. The default above :data:`MAX_GRID` grid points.

The best mean wins; among equal means the candidate closest to uniform weights (Euclidean)
wins, then the first tried. The base model is loaded once and the merged tensors are copied
into one loaded adapter for each candidate. Each dev task uses a fixed subset of at most
``dev_examples`` examples (the same seeded order ``train`` uses); the dev split is the task's
English ``validation`` split or, for a task without one, the 10% of its training split that
``adaptertx train`` holds out as validation (never an example the runs trained on).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from adaptertx import data
from adaptertx.data.remote import remote_splits
from adaptertx.errors import AdaptertxError
from adaptertx.merging.strategies import adapter_state, average_state, check_keys, check_same_adapter_config
from adaptertx.metrics import PRIMARY
from adaptertx.modeling import BuiltModel, load_base_checked, to_base_device
from adaptertx.rundir import check_same_base
from adaptertx.settings import TRAIN
from adaptertx.tasks import get_task
from adaptertx.training.data import encode, english_splits, subset
from adaptertx.training.scoring import score_features

log = logging.getLogger(__name__)

DEV_SPLIT = "validation"
DEFAULT_GRID_STEP = 4
DEFAULT_DEV_EXAMPLES = 200
MAX_GRID = 50
SEARCHES = ("auto", "grid", "greedy_soup")
_NAME = "dev_merged"  # the adapter name candidates are loaded under
_TIE = 1e-9


def grid_size(n: int, k: int) -> int:
    """How many points the simplex grid of ``n`` weights with step ``1/k`` has: ``C(n+k-1, n-1)``."""
    return math.comb(n + k - 1, n - 1)


def simplex_grid(n: int, k: int) -> list[list[float]]:
    """Every vector of ``n`` non-negative multiples of ``1/k`` summing to 1 (first weight
    descending, then the next, ...)."""
    if n < 1 or k < 1:
        raise AdaptertxError(f"a simplex grid needs at least one weight and a step 1/k with k >= 1 (n={n}, k={k})")

    def parts(left: int, slots: int):
        if slots == 1:
            yield (left,)
            return
        for first in range(left, -1, -1):
            for rest in parts(left - first, slots - 1):
                yield (first, *rest)

    return [[p / k for p in point] for point in parts(k, n)]


@dataclass(frozen=True)
class DevTask:
    """One dev task of the search: the task, the input whose head scores it, its dev examples."""

    task: object  # adaptertx.tasks.Task
    input_index: int
    rows: list[dict]
    metric: str
    held_out_from_train: bool


@dataclass(frozen=True)
class WeightSearch:
    """What :func:`choose_weights` found.

    Attributes:
        weights: the chosen weights, normalised (one per input).
        search: ``grid``, ``greedy_soup`` or ``none`` (a single input: nothing to search).
        tasks: the dev tasks; heads: each dev task's run folder (whose head scored it).
        split: the dev split (``validation``); held_out_from_train: the dev tasks whose
            validation split is the part of the training split ``train`` holds out.
        examples: dev examples used per task; metrics: the primary metric per task.
        grid_step: ``k`` of the grid's step ``1/k`` (``None`` for greedy soup).
        candidates: every candidate tried, in order: ``{"weights", "scores": {task: score}, "mean"}``.
        seconds: time the search took.
    """

    weights: list[float]
    search: str
    tasks: list[str]
    heads: dict[str, str]
    split: str
    held_out_from_train: list[str]
    examples: dict[str, int]
    metrics: dict[str, str]
    grid_step: int | None
    candidates: list[dict]
    seconds: float

    @property
    def chosen(self) -> dict | None:
        """The candidate-table row of the chosen weights (``None`` when nothing was searched)."""
        for c in self.candidates:
            if c["weights"] == self.weights:
                return c
        return None

    def record(self) -> dict:
        """The ``dev`` block of ``recipe.json``."""
        body = asdict(self)
        body.pop("weights")
        body["seconds"] = round(self.seconds, 1)
        body["chosen_mean"] = None if self.chosen is None else self.chosen["mean"]
        return body


# ------------------------------------------------------------------------------ dev tasks


def dev_rows(task, limit: int | None = DEFAULT_DEV_EXAMPLES) -> list[dict]:
    """The English dev examples of ``task`` the search scores on: its validation split as
    ``adaptertx train`` forms it, at most ``limit`` of them in train's fixed seeded order."""
    try:
        _, rows, _ = english_splits(task, None)
    except AdaptertxError as e:
        raise AdaptertxError(f"dev task {task.name!r} has no English dev split to choose weights on ({e})") from None
    return subset(rows, limit)


def _held_out(task) -> bool:
    if not task.bundled:
        return DEV_SPLIT not in remote_splits(task.name)
    return DEV_SPLIT not in data.available(task.bundled)[task.bundled].get("en", {})


def resolve_dev_tasks(inputs: list, dev_tasks: list[str] | None, limit: int) -> list[DevTask]:
    """The dev tasks (default: the inputs' tasks, each once), each with the input whose head
    scores it and its dev examples; clear errors for a task no input has a head for and for a
    task without an English dev split."""
    own = [i.task for i in inputs]
    names = list(dict.fromkeys(dev_tasks if dev_tasks is not None else own))
    if not names:
        raise AdaptertxError("--dev-tasks is empty: name at least one of the inputs' tasks")
    out = []
    for name in names:
        task = get_task(name)
        index = next((k for k, t in enumerate(own) if t == task.name), None)
        if index is None:
            raise AdaptertxError(f"dev task {name!r} is none of the inputs' tasks ({', '.join(own)}): scoring it "
                                 f"needs a head trained for it, and only the input runs' heads are at hand")
        inp = inputs[index]
        if not inp.has_head:
            raise AdaptertxError(f"dev task {task.name!r}: the run in {inp.run_dir} saved no head to score it with")
        rows = dev_rows(task, limit)
        out.append(DevTask(task, index, rows, PRIMARY[task.metric], _held_out(task)))
    return out


# ------------------------------------------------------------------------------ scoring


class _Scorer:
    """The base loaded once with one adapter slot and every dev task's head; scores weights."""

    def __init__(self, inputs: list, tasks: list[DevTask], combine, progress: bool, device="auto"):
        self.inputs, self.tasks, self.combine = inputs, tasks, combine
        self.states = [adapter_state(i, _NAME) for i in inputs]
        check_keys(self.states, inputs)
        first = inputs[0]
        model, tokenizer, base_print = load_base_checked(first.model, first.quant, first.fingerprint, device=device)
        try:
            model.load_adapter(str(first.adapter_dir), load_as=_NAME, with_head=False, use_safetensors=True)
            self.heads = []
            for t in tasks:
                head = f"dev_head_{t.input_index}"
                if head not in model.heads:
                    model.load_head(str(inputs[t.input_index].adapter_dir), load_as=head, use_safetensors=True)
                self.heads.append(head)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise AdaptertxError(f"could not load an input's adapter or head: {str(e).splitlines()[0]}") from None
        to_base_device(model)
        model.set_active_adapters(_NAME)
        params = dict(model.named_parameters())
        missing = sorted(set(self.states[0]) - set(params))
        if missing:
            raise AdaptertxError(f"the loaded adapter has no tensor {missing[0]}")
        self.params = {k: params[k] for k in self.states[0]}
        self.built = BuiltModel(model, tokenizer, _NAME, base_print, autocast=first.quant != "none")
        self.features = []
        for t in tasks:
            config = inputs[t.input_index].config
            self.features.append(encode(t.task, t.rows, tokenizer, config.get("max_length", TRAIN.max_length), "dev"))
        self.batch_sizes = [2 * inputs[t.input_index].config.get("batch_size", TRAIN.batch_size) for t in tasks]
        self.cache: dict[tuple, dict] = {}
        self.table: list[dict] = []
        self.bar = None
        self.progress = progress

    def start(self, total: int, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="candidate", disable=not self.progress)

    def __call__(self, weights: list[float]) -> dict:
        key = tuple(weights)
        if key in self.cache:
            return self.cache[key]
        merged = self.combine(self.states, list(weights), _NAME)
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(merged[k])
        scores = {}
        model = self.built.model
        for t, head, feats, bs in zip(self.tasks, self.heads, self.features, self.batch_sizes, strict=True):
            model.active_head = head
            scores[t.task.name] = score_features(self.built, t.task, feats, t.rows, batch_size=bs)[t.metric]
        row = {"weights": list(weights), "scores": scores, "mean": sum(scores.values()) / len(scores)}
        self.cache[key] = row
        self.table.append(row)
        log.debug("dev weights %s: %s -> mean %.2f", _fmt(weights),
                  ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), row["mean"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(best=f"{max(c['mean'] for c in self.table):.2f}")
        return row


def _fmt(weights: list[float]) -> str:
    return "[" + ", ".join(f"{w:.3f}" for w in weights) + "]"


def _distance_to_uniform(weights: list[float]) -> float:
    n = len(weights)
    return sum((w - 1 / n) ** 2 for w in weights)


def best_candidate(candidates: list[dict]) -> dict:
    """The highest mean; among equal means (within 1e-9) the one closest to uniform, then the first."""
    top = max(c["mean"] for c in candidates)
    tied = [c for c in candidates if c["mean"] >= top - _TIE]
    return min(tied, key=lambda c: _distance_to_uniform(c["weights"]))


def _greedy_soup(n: int, score) -> list[float]:
    singles = [score([1.0 if j == i else 0.0 for j in range(n)])["mean"] for i in range(n)]
    order = sorted(range(n), key=lambda i: -singles[i])  # stable: equal scores keep input order
    soup, best = [order[0]], singles[order[0]]
    for i in order[1:]:
        trial = soup + [i]
        mean = score([1 / len(trial) if j in trial else 0.0 for j in range(n)])["mean"]
        if mean >= best - _TIE:
            soup, best = trial, mean
    return [1 / len(soup) if j in soup else 0.0 for j in range(n)]


# ------------------------------------------------------------------------------ entry point


def choose_weights(inputs: list, *, dev_tasks: list[str] | None = None, grid_step: int | None = None,
                   dev_examples: int | None = None, search: str = "auto",
                   combine: Callable[[list[dict], list[float], str], dict] | None = None,
                   progress: bool = False, device: str | torch.device = "auto") -> WeightSearch:
    """Search merge weights for ``inputs`` (:class:`adaptertx.rundir.TrainedAdapter`) on English dev sets.

    Args:
        inputs: finished runs on one base with one adapter config.
        dev_tasks: the tasks to score on (each must be an input's task: its run's head scores
            it); default every input's task.
        grid_step: ``k`` of the grid step ``1/k`` (default :data:`DEFAULT_GRID_STEP`).
        dev_examples: at most this many dev examples per task (default :data:`DEFAULT_DEV_EXAMPLES`).
        search: ``grid``, ``greedy_soup`` or ``auto`` (grid up to :data:`MAX_GRID` points).
        combine: ``combine(states, weights, name)`` gives the merged tensors (default
            :func:`adaptertx.merging.strategies.average_state`); ``task_arithmetic`` and ``ties`` pass theirs.
        progress: show a progress bar over the candidates.
        device: where the candidates are scored (:func:`adaptertx.environment.resolve_device`).

    A single input gets ``[1.0]`` without any evaluation (``search == "none"``).
    """
    start = time.time()
    k = DEFAULT_GRID_STEP if grid_step is None else grid_step
    limit = DEFAULT_DEV_EXAMPLES if dev_examples is None else dev_examples
    if not isinstance(k, int) or k < 1:
        raise AdaptertxError(f"the grid step is 1/k for a whole k >= 1; got k={k!r}")
    if not isinstance(limit, int) or limit < 1:
        raise AdaptertxError(f"dev examples per task must be at least 1, got {limit!r}")
    if search not in SEARCHES:
        raise AdaptertxError(f"unknown weight search {search!r}; choose one of {', '.join(SEARCHES)}")
    if not inputs:
        raise AdaptertxError("nothing to merge: give at least one run folder")
    n = len(inputs)
    tasks = resolve_dev_tasks(inputs, dev_tasks, limit)
    if n == 1:
        method, candidates, weights = "none", [], [1.0]
    else:
        check_same_base(inputs)
        check_same_adapter_config(inputs)
        method = search if search != "auto" else ("grid" if grid_size(n, k) <= MAX_GRID else "greedy_soup")
        combine = combine or (lambda states, w, name: average_state(states, w))
        score = _Scorer(inputs, tasks, combine, progress, device)
        points = simplex_grid(n, k) if method == "grid" else None
        score.start(len(points) if points else 2 * n - 1, f"dev weights ({method})")
        try:
            if points:
                for point in points:
                    score(point)
                weights = best_candidate(score.table)["weights"]
            else:
                weights = _greedy_soup(n, score)
        finally:
            score.bar.close()
        candidates = score.table
        log.info("dev-chosen weights %s (%s over %d candidates, mean %.2f)", _fmt(weights), method,
                 len(candidates), score.cache[tuple(weights)]["mean"])
    return WeightSearch(weights=weights, search=method, tasks=[t.task.name for t in tasks],
                        heads={t.task.name: str(inputs[t.input_index].run_dir.resolve()) for t in tasks},
                        split=DEV_SPLIT, held_out_from_train=[t.task.name for t in tasks if t.held_out_from_train],
                        examples={t.task.name: len(t.rows) for t in tasks},
                        metrics={t.task.name: t.metric for t in tasks},
                        grid_step=k if method == "grid" else None, candidates=candidates,
                        seconds=time.time() - start)
