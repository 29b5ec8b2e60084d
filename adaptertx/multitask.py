"""Multi-task joint training: one adapter trained on several English tasks at once.

The baseline Phang et al. (2020) compare intermediate-task combinations with: instead of
merging adapters trained one task at a time, train ONE adapter on the English training data
of all tasks together, each task with its own prediction head (an ``adapters`` flexible-head
model: one :func:`adaptertx.modeling.add_head` per task, the head picked per batch with
``model(**batch, head=task)``).

Batches are task-homogeneous. The task of each batch is drawn independently with
probability (:func:`sampling_probabilities`, ``n_i`` = the task's training examples)

- ``proportional``: ``p_i = n_i / sum_j n_j``;
- ``temperature``: ``p_i ∝ n_i^(1/T)`` (``T = 1`` is proportional, ``T → ∞`` uniform);
- ``uniform``: ``p_i = 1 / N``,

from a generator seeded by the run seed and the epoch (:func:`task_schedule`), so the schedule
is the same on every run, process and resume. An **epoch** is as many batches as the tasks'
training splits fill together (``sum_i ceil(n_i / batch_size)``); a task drawn more often than
it has batches cycles through fresh shuffles of its data, one drawn less often sees part of it.
Each epoch ends with an evaluation on every task's validation split; the best epoch is the one
with the highest mean of the tasks' primary validation scores (accuracy, or F1 for QA and
NER), and its adapter and heads are scored on each task's test split.

The loop is :func:`adaptertx.train.train`'s: AdamW with linear warm-up and decay, gradient
accumulation, bf16 autocast, gradient clipping, atomic safetensors checkpoints (never a
pickle) that ``resume=True`` continues from to the result of an uninterrupted run. A head
gets gradient only from its own task's batches (the others' grads stay ``None``, so AdamW
leaves them untouched in that step).

The output folder has the layout of a weight-space merge (:mod:`adaptertx.merge`), so
downstream code treats both alike::

    OUT/recipe.json          method "multitask", tasks, sampling, probabilities, seeds, the train
                             config, per-task validation/test scores, base fingerprint, versions
                             (written last: a folder with recipe.json is a finished merge)
    OUT/adapter/             the adapter in AdapterHub files (adapter_config.json,
                             adapter.safetensors) + the --target task's head renamed to the adapter
    OUT/heads/<task>/        every task's head (head_config.json, model_head.safetensors;
                             ``model.load_head(OUT/heads/<task>, use_safetensors=True)``)
    OUT/run.json             config, status ("finished" at the end), fingerprint, scores
    OUT/metrics.jsonl        one JSON line per optimiser step (with its tasks) and evaluation
    OUT/checkpoints/         resume state (last/) and best.safetensors
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from adaptertx.environment import versions
from adaptertx.errors import AdaptertxError
from adaptertx.io import atomic_dir, atomic_write_text
from adaptertx.metrics import score
from adaptertx.modeling import BuiltModel, build_adapter_model, check_trainable, load_trainable_state, trainable_state
from adaptertx.tasks import Task, get_task
from adaptertx.train import (PRIMARY, TrainConfig, _append_log, _encode, _english_splits, _load_checkpoint, _lr_factor,
                             _save_checkpoint, _truncate_log, evaluate, majority_baseline, majority_comparison,
                             predict)

log = logging.getLogger(__name__)

SAMPLINGS = ("proportional", "temperature", "uniform")
HEAD_FILES = ("head_config.json", "model_head.safetensors")


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class MultitaskConfig:
    """Everything that decides a multi-task training run's result.

    Attributes:
        tasks: registry names of the tasks (their English data is used), each once.
        model, out, adapter, quant: as in :class:`adaptertx.train.TrainConfig`.
        sampling: how the task of each batch is drawn: ``proportional``, ``temperature`` or
            ``uniform`` (:func:`sampling_probabilities`).
        temperature: ``T`` of temperature sampling (``p_i ∝ n_i^(1/T)``); > 0.
        target: the task whose head also goes into ``adapter/`` (renamed to the adapter), or ``None``.
        name: the adapter's name.
        epochs: passes of ``sum_i ceil(n_i / batch_size)`` batches each (see the module docstring).
        batch_size, grad_accum, lr, weight_decay, warmup, max_length, max_examples, max_steps, seed,
        adapter_seed, gradient_checkpointing, save_every: as in :class:`adaptertx.train.TrainConfig`
            (``max_examples`` applies to every task's splits; ``seed`` also seeds the task schedule).
    """

    tasks: tuple[str, ...]
    model: str = "me5-small"
    out: str = "merged/multitask"
    adapter: str = "seq_bn"
    quant: str = "int8"
    sampling: str = "proportional"
    temperature: float = 2.0
    target: str | None = None
    name: str = "multitask"
    epochs: int = 3
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_length: int = 128
    max_examples: int | None = None
    max_steps: int | None = None
    seed: int = 0
    adapter_seed: int = 42
    gradient_checkpointing: bool = False
    save_every: int = 100

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
        # The training fields follow TrainConfig's checks (one place for them).
        TrainConfig(task=names[0], **{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)
                                      if f.name != "task"})

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


# ------------------------------------------------------------------------------ sampling


def sampling_probabilities(sizes: Sequence[int], sampling: str = "proportional",
                           temperature: float = 2.0) -> list[float]:
    """The probability of drawing each task's batch: ``p_i ∝ n_i^(1/T)``.

    ``proportional`` is ``T = 1``, ``uniform`` is ``T = ∞``; ``temperature`` uses the given ``T``.
    Computed in log space, so small temperatures do not overflow.

    Args:
        sizes: ``n_i``, the training examples of each task (each at least 1).
        sampling: ``proportional``, ``temperature`` or ``uniform``.
        temperature: ``T`` for ``temperature`` sampling (> 0).

    Returns:
        one probability per task, summing to 1.
    """
    if sampling not in SAMPLINGS:
        raise AdaptertxError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    if not sizes:
        raise AdaptertxError("no tasks to sample from")
    if any(int(n) < 1 for n in sizes):
        raise AdaptertxError(f"every task needs at least one training example, got sizes {list(sizes)}")
    if sampling == "uniform":
        return [1.0 / len(sizes)] * len(sizes)
    if sampling == "temperature" and not (math.isfinite(temperature) and temperature > 0):
        raise AdaptertxError(f"temperature must be a positive number, got {temperature}")
    inv_t = 1.0 if sampling == "proportional" else 1.0 / temperature
    logs = [math.log(n) * inv_t for n in sizes]
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    total = sum(weights)
    return [w / total for w in weights]


def _mix(*parts: int) -> int:
    """One generator seed from several integers (deterministic, within 63 bits)."""
    out = 0
    for p in parts:
        out = (out * 1_000_003 + int(p) + 1) % (2 ** 63 - 1)
    return out


def task_schedule(probabilities: Sequence[float], length: int, seed: int, epoch: int) -> list[int]:
    """The task index of each of an epoch's ``length`` batches, drawn i.i.d. from ``probabilities``.

    Deterministic in ``(probabilities, length, seed, epoch)``: inverse-CDF sampling of
    ``length`` fp64 uniforms from a generator seeded by ``seed`` and ``epoch``.
    """
    if length < 0:
        raise AdaptertxError(f"schedule length must be non-negative, got {length}")
    gen = torch.Generator().manual_seed(_mix(seed, epoch))
    cdf = torch.tensor(list(probabilities), dtype=torch.float64).cumsum(0)
    cdf = cdf / cdf[-1]
    u = torch.rand(length, generator=gen, dtype=torch.float64)
    return torch.searchsorted(cdf, u, right=True).clamp(max=len(cdf) - 1).tolist()


def epoch_plan(rows: Sequence[int], batch_size: int, probabilities: Sequence[float], seed: int, epoch: int,
               rank: int = 0, world: int = 1) -> list[tuple[int, torch.Tensor]]:
    """One epoch's batches: ``(task index, row indices)`` in training order.

    The epoch has ``sum_i ceil(rows[i] / (batch_size * world))`` batches; their tasks come from
    :func:`task_schedule`. The ``k``-th batch of task ``i`` in the epoch is batch ``k mod b_i`` of
    pass ``k // b_i`` over this process's share of a shuffle of task ``i``'s rows (a new shuffle
    per pass, seeded by seed, epoch, task and pass), where ``b_i`` is the number of batches that
    share fills.

    Args:
        rows: encoded training rows per task (QA: windows).
        rank, world: this process and the number of processes (each takes every ``world``-th row).

    Returns:
        ``(task, indices)`` pairs; ``indices``: (at most batch_size,) int64 row indices of the task.
    """
    length = sum(math.ceil(n / (batch_size * world)) for n in rows)
    schedule = task_schedule(probabilities, length, seed, epoch)
    passes: dict[tuple[int, int], list[torch.Tensor]] = {}
    drawn = [0] * len(rows)
    plan = []
    for t in schedule:
        share = len(range(rank, rows[t], world))
        per_pass = max(1, math.ceil(share / batch_size))
        k = drawn[t]
        drawn[t] += 1
        key = (t, k // per_pass)
        if key not in passes:
            order = torch.randperm(rows[t], generator=torch.Generator().manual_seed(_mix(seed, epoch, t, key[1])))
            order = order[rank::world]
            passes[key] = [order[i:i + batch_size] for i in range(0, len(order), batch_size)] or [order]
        plan.append((t, passes[key][k % per_pass]))
    return plan


# ------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class MultitaskHooks:
    """What a run built on :func:`train_multitask`'s loop does differently (AdapterFusion on a
    mixture of the tasks' data uses this).

    Attributes:
        method: the method name written into ``run.json`` and ``recipe.json``.
        build: returns the model to train, with one head per task named by the task; called as
            ``build(config, tasks)``. Its trainable parameters are optimised and checkpointed.
        save: writes the final model into ``out`` (``adapter/``, ``heads/<task>/``) and returns
            ``{task: head folder relative to out}``; called as ``save(model, config, out)``.
        extra_loss: an extra loss term added to every training step, or ``None``.
        recipe: extra fields of ``recipe.json``.
    """

    method: str
    build: Callable[[MultitaskConfig, list[Task]], BuiltModel]
    save: Callable[[torch.nn.Module, MultitaskConfig, Path], dict[str, str]]
    extra_loss: Callable[[torch.nn.Module], torch.Tensor | None] | None = None
    recipe: dict = dataclasses.field(default_factory=dict)


def _prepare_out(out: Path, config: MultitaskConfig, resume: bool, overwrite: bool, method: str = "multitask") -> None:
    run_file = out / "run.json"
    if out.exists() and not out.is_dir():
        raise AdaptertxError(f"{out} exists and is not a folder; choose another --out")
    if resume:
        if not run_file.exists():
            raise AdaptertxError(f"nothing to resume in {out}: it holds no run")
        saved = json.loads(run_file.read_text())
        if saved.get("method") != method:
            raise AdaptertxError(f"{out} holds no {method} run; nothing to resume")
        if saved.get("status") == "finished" or (out / "recipe.json").exists():
            raise AdaptertxError(f"{out} holds a finished merge; nothing to resume (use --overwrite to train again)")
        if saved.get("config") != config.to_json():
            diff = sorted(k for k, v in config.to_json().items() if saved.get("config", {}).get(k) != v)
            raise AdaptertxError(f"cannot resume {out} with a different config (differs in: {', '.join(diff)})")
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        if (out / "recipe.json").exists():
            raise AdaptertxError(f"{out} already holds a merged model; pass --overwrite to replace it")
        if run_file.exists():
            raise AdaptertxError(f"{out} holds an unfinished run; pass --resume to continue it or --overwrite to start again")
        raise AdaptertxError(f"{out} exists and is not empty; choose another --out or pass --overwrite")


def _write_run(out: Path, config: MultitaskConfig, status: str, method: str = "multitask", **extra) -> None:
    body = {"method": method, "config": config.to_json(), "status": status, "versions": versions(), **extra}
    atomic_write_text(out / "run.json", json.dumps(body, indent=2) + "\n")


def _evaluate_all(built: BuiltModel, tasks: list[Task], feats: dict, rows: dict, batch_size: int) -> dict[str, dict]:
    """Every task's scores through its own head (the head is made active for the evaluation)."""
    scores = {}
    for task in tasks:
        built.model.active_head = task.name
        scores[task.name] = evaluate(built, task, feats[task.name], rows[task.name], batch_size=batch_size)
    return scores


def _mean_primary(tasks: list[Task], scores: dict[str, dict]) -> float:
    return sum(scores[t.name][PRIMARY[t.metric]] for t in tasks) / len(tasks)


def _rename(key: str, old: str, new: str) -> str:
    return ".".join(new if part == old else part for part in key.split("."))


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
            head = load_file(str(source / "model_head.safetensors"))
            save_file({_rename(k, config.target, config.name): v.contiguous() for k, v in head.items()},
                      str(tmp / "model_head.safetensors"))
    return {task: f"heads/{task}" for task in config.tasks}


def train_multitask(tasks: Sequence[str], out: str | Path, *, resume: bool = False, overwrite: bool = False,
                    progress: bool = True, on_step: Callable[[int, dict], None] | None = None,
                    runs: list[dict] | None = None, base_fingerprint: str | None = None,
                    hooks: MultitaskHooks | None = None, **settings) -> MultitaskResult:
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
        hooks: build, save and regularise another model with this loop (:class:`MultitaskHooks`);
            ``None`` trains one new adapter with one head per task.
        **settings: any other :class:`MultitaskConfig` field (model, quant, adapter, adapter_seed,
            sampling, temperature, target, name, epochs, batch_size, lr, max_examples, ...).

    Returns:
        the best epoch's per-task scores; the folder ends with ``recipe.json``.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed

    known = {f.name for f in dataclasses.fields(MultitaskConfig)} - {"tasks", "out"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise AdaptertxError(f"unknown multi-task setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = MultitaskConfig(tasks=tasks if isinstance(tasks, str) else tuple(tasks), out=str(out), **settings)
    task_list = [get_task(t) for t in config.tasks]
    out = Path(config.out)
    method = hooks.method if hooks is not None else "multitask"
    _prepare_out(out, config, resume, overwrite, method)
    splits = {t.name: _english_splits(t, config.max_examples) for t in task_list}
    sizes = [len(splits[t.name][0]) for t in task_list]
    probs = sampling_probabilities(sizes, config.sampling, config.temperature)

    set_seed(config.seed)
    if hooks is None:
        # The same builder and seed as single-task runs: the adapter starts from their weights.
        built = build_adapter_model(config.model, task_list, adapter=config.adapter, quant=config.quant,
                                    adapter_seed=config.adapter_seed, name=config.name)
    else:
        built = hooks.build(config, task_list)
    if base_fingerprint is not None and built.fingerprint != base_fingerprint:
        raise AdaptertxError(f"base {config.model!r} (fingerprint {built.fingerprint}) is not the base the runs were "
                             f"trained on ({base_fingerprint})")
    model = built.model
    set_seed(config.seed)  # dropout follows the run seed, not the adapter-init seed
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    train_feats = {t.name: _encode(t, splits[t.name][0], built.tokenizer, config.max_length, "training")
                   for t in task_list}
    dev_feats = {t.name: _encode(t, splits[t.name][1], built.tokenizer, config.max_length, "validation")
                 for t in task_list}
    dev_rows = {t.name: splits[t.name][1] for t in task_list}

    # Heads of the tasks a step did not draw get no gradient: DDP must be told.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    world, rank = accelerator.num_processes, accelerator.process_index
    rows = [len(train_feats[t.name]) for t in task_list]
    batches_per_epoch = sum(math.ceil(n / (config.batch_size * world)) for n in rows)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = max(1, int(config.warmup * total_steps))
    probabilities = dict(zip(config.tasks, probs))

    ckpt_dir = out / "checkpoints"
    state: dict = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_mean": None, "best_epoch": -1,
                   "history": [], "drawn": {t: 0 for t in config.tasks}}
    run_info = {"fingerprint": built.fingerprint, "adapter_name": config.name, "inputs": runs or [],
                "sizes": dict(zip(config.tasks, sizes)), "probabilities": probabilities}
    if resume:
        state = _load_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer)
        _truncate_log(out / "metrics.jsonl", state["step"])
        log.info("resuming %s at step %d (epoch %d, batch %d)", out, state["step"], state["epoch"], state["batch"])
    else:
        if overwrite and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_run(out, config, "running", method, **run_info)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    start = time.time()
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"multitask {'+'.join(config.tasks)}", unit="step",
               disable=not progress or not accelerator.is_main_process)
    seen_tokens, window_start = 0, time.time()
    try:
        while state["epoch"] < config.epochs and state["step"] < total_steps:
            epoch = state["epoch"]
            plan = epoch_plan(rows, config.batch_size, probs, config.seed, epoch, rank, world)
            running, step_tasks = 0.0, []
            for b in range(state["batch"], len(plan)):
                t, indices = plan[b]
                task = task_list[t]
                batch = {k: v.to(accelerator.device) for k, v in train_feats[task.name].batch(indices).items()}
                seen_tokens += int(batch["attention_mask"].sum())
                try:
                    with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=built.autocast):
                        loss = model(**batch, head=task.name).loss
                        if hooks is not None and hooks.extra_loss is not None:
                            extra = hooks.extra_loss(accelerator.unwrap_model(model))
                            if extra is not None:
                                loss = loss + extra
                        loss = loss / config.grad_accum
                    accelerator.backward(loss)
                except torch.OutOfMemoryError:
                    raise AdaptertxError(f"out of memory at batch size {config.batch_size}: try --batch-size "
                                         f"{max(1, config.batch_size // 2)}") from None
                running += loss.item()
                step_tasks.append(task.name)
                state["drawn"][task.name] += 1
                state["batch"] = b + 1
                if (b + 1) % config.grad_accum and b + 1 != len(plan):
                    continue
                factor = _lr_factor(state["step"], total_steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * factor
                accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                record = {"step": state["step"], "epoch": epoch, "tasks": step_tasks, "loss": running,
                          "lr": config.lr * factor}
                running, step_tasks = 0.0, []
                elapsed = time.time() - window_start
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{seen_tokens / max(elapsed, 1e-9):.0f}")
                bar.update(1)
                if accelerator.is_main_process:
                    _append_log(out / "metrics.jsonl", record)
                    if state["step"] % config.save_every == 0 and state["step"] < total_steps:
                        _save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, state)
                if on_step is not None:
                    on_step(state["step"], record)
                if state["step"] >= total_steps:
                    break
            # End of epoch (or of the step budget): every task's validation split, best mean kept.
            scores = _evaluate_all(built, task_list, dev_feats, dev_rows, config.batch_size * 2)
            mean = _mean_primary(task_list, scores)
            record = {"step": state["step"], "epoch": epoch, "validation": scores, "mean": mean}
            state["history"].append(record)
            if accelerator.is_main_process:
                _append_log(out / "metrics.jsonl", record)
                if state["best_mean"] is None or mean > state["best_mean"]:
                    state["best"], state["best_mean"], state["best_epoch"] = scores, mean, epoch
                    save_file(trainable_state(accelerator.unwrap_model(model)), str(ckpt_dir / "best.tmp"))
                    (ckpt_dir / "best.tmp").replace(ckpt_dir / "best.safetensors")
            state["epoch"], state["batch"] = epoch + 1, 0
            if accelerator.is_main_process:
                _save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, state)
    finally:
        bar.close()

    # Finish: the best adapter and heads, scored on each task's test split, saved like a merge.
    unwrapped = accelerator.unwrap_model(model)
    load_trainable_state(unwrapped, load_file(str(ckpt_dir / "best.safetensors")))
    test_scores: dict[str, dict] = {}
    baselines: dict[str, float | None] = {}
    comparisons: dict[str, dict | None] = {}
    for task in task_list:
        test_rows = splits[task.name][2]
        if test_rows is None:
            test_scores[task.name], baselines[task.name], comparisons[task.name] = {}, None, None
            continue
        feats = _encode(task, test_rows, built.tokenizer, config.max_length, "test")
        unwrapped.active_head = task.name
        preds = predict(built, task, feats, batch_size=config.batch_size * 2)
        test_scores[task.name] = score(task, preds, test_rows, lang="en")
        baselines[task.name] = majority_baseline(task, test_rows, splits[task.name][0])
        comparisons[task.name] = majority_comparison(task, preds, test_rows, splits[task.name][0])
    seconds = time.time() - start
    recipe: dict = {}
    if accelerator.is_main_process:
        heads = _save_outputs(unwrapped, config, out) if hooks is None else hooks.save(unwrapped, config, out)
        _append_log(out / "metrics.jsonl", {"step": state["step"], "test": test_scores})
        results = {"best_epoch": state["best_epoch"], "validation": state["best"],
                   "mean_validation": state["best_mean"], "test": test_scores, "batches": state["drawn"],
                   "steps": state["step"], "seconds": round(seconds, 1)}
        _write_run(out, config, "finished", method, **run_info, **results, test_majority_baseline=baselines,
                   test_vs_majority=comparisons,
                   trainable_params=sum(p.numel() for p in params),
                   total_params=sum(p.numel() for p in unwrapped.parameters()))
        recipe = {
            "method": method, "name": config.name, "tasks": list(config.tasks), "inputs": runs or [],
            "weights": None, "weights_given": None, "sampling": config.sampling,
            "temperature": config.temperature if config.sampling == "temperature" else None,
            "sizes": run_info["sizes"], "probabilities": probabilities, "seed": config.seed,
            "adapter_seed": config.adapter_seed, "train": config.to_json(), "target": config.target,
            "heads": heads, **results, "fingerprint": built.fingerprint, "versions": versions(),
            **(hooks.recipe if hooks is not None else {}),
        }
        atomic_write_text(out / "recipe.json", json.dumps(recipe, indent=2) + "\n")
        log.info("%s over %s written to %s", method, ", ".join(config.tasks), out)
    return MultitaskResult(out, config.name, recipe, state["best_epoch"], state["best"], test_scores,
                           state["best_mean"], probabilities, state["step"], seconds)
