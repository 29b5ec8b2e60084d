"""The training loop: every adapter, head and Fusion layer adaptertx trains goes through :func:`fit`.

:func:`fit` takes a built model (:class:`adaptertx.modeling.BuiltModel`; its trainable
parameters are the ones optimised), a batch plan (:class:`SingleTaskPlan` for one task,
:class:`MixturePlan` for several tasks, each batch through its task's head), an evaluation
(:class:`Validation`, run at the end of every epoch; the best epoch is kept) and a run folder.
It runs AdamW with linear warm-up and decay, gradient accumulation, bf16 autocast, gradient
clipping, an optional extra loss term (AdapterFusion's regulariser), a progress bar, the
metrics log and atomic safetensors checkpoints, and ends with the best epoch's weights loaded.

Checkpoints hold only trainable tensors, optimiser moments and RNG state, in safetensors and
JSON (never the quantised base, never a pickle), so ``resume=True`` continues an interrupted
run and ends where an uninterrupted one would. The model trains on the device it was built on
(:func:`adaptertx.modeling.load_base`'s ``device``); several processes (``accelerate launch``)
each take every n-th batch, and then Accelerate places each process's replica on its GPU and
syncs gradients.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors
from tqdm.auto import tqdm

from adaptertx import rundir
from adaptertx.errors import AdaptertxError
from adaptertx.features import Features
from adaptertx.io import atomic_write_bytes, writing
from adaptertx.metrics import PRIMARY
from adaptertx.modeling import BuiltModel, base_device, load_trainable_state, trainable_state
from adaptertx.models import first_line
from adaptertx.settings import TrainSettings
from adaptertx.tasks import Task
from adaptertx.training.sampling import epoch_plan
from adaptertx.training.scoring import score_features

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ batch plans


@dataclass(frozen=True)
class SingleTaskPlan:
    """One task's training features, reshuffled every epoch (the model's active head scores them)."""

    task: Task
    features: Features
    batch_size: int
    seed: int
    tasks_in_log = False
    find_unused_parameters = False

    def steps_per_epoch(self, world: int, grad_accum: int) -> int:
        return math.ceil(math.ceil(len(self.features) / self.batch_size / world) / grad_accum)

    def epoch(self, epoch: int, rank: int, world: int) -> list[tuple[Task, str | None, torch.Tensor]]:
        """``(task, head, row indices)`` of every batch of the epoch; ``head`` ``None``: the active head."""
        order = torch.randperm(len(self.features), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        order = order[rank::world]
        return [(self.task, None, order[i:i + self.batch_size]) for i in range(0, len(order), self.batch_size)]

    def features_of(self, task: Task) -> Features:
        return self.features


@dataclass(frozen=True)
class MixturePlan:
    """Several tasks' training features in task-homogeneous batches, each task drawn with its
    probability (:func:`adaptertx.training.sampling.epoch_plan`) and run through the head named by
    the task."""

    tasks: tuple[Task, ...]
    features: dict[str, Features]
    probabilities: tuple[float, ...]
    batch_size: int
    seed: int
    tasks_in_log = True
    # Heads of the tasks a step did not draw get no gradient: DDP must be told.
    find_unused_parameters = True

    def _rows(self) -> list[int]:
        return [len(self.features[t.name]) for t in self.tasks]

    def steps_per_epoch(self, world: int, grad_accum: int) -> int:
        return math.ceil(sum(math.ceil(n / (self.batch_size * world)) for n in self._rows()) / grad_accum)

    def epoch(self, epoch: int, rank: int, world: int) -> list[tuple[Task, str | None, torch.Tensor]]:
        plan = epoch_plan(self._rows(), self.batch_size, self.probabilities, self.seed, epoch, rank, world)
        return [(self.tasks[t], self.tasks[t].name, indices) for t, indices in plan]

    def features_of(self, task: Task) -> Features:
        return self.features[task.name]


# ------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class Validation:
    """The end-of-epoch evaluation: each task's English validation split through its head.

    With one task (``heads`` ``None``) the scores are that task's and the best epoch has the
    highest primary score; with several, the scores are per task (each through the head named by
    the task) and the best epoch has the highest mean of the tasks' primary scores.
    """

    tasks: tuple[Task, ...]
    features: dict[str, Features]
    rows: dict[str, list[dict]]
    batch_size: int
    heads: bool = False

    def value(self, scores: dict) -> float:
        """The number the best epoch maximises: the primary score, or the tasks' mean of it."""
        if not self.heads:
            return scores[PRIMARY[self.tasks[0].metric]]
        return sum(scores[t.name][PRIMARY[t.metric]] for t in self.tasks) / len(self.tasks)

    def __call__(self, built: BuiltModel) -> tuple[dict, float]:
        """(scores, the value the best epoch maximises)."""
        if not self.heads:
            task = self.tasks[0]
            scores = score_features(built, task, self.features[task.name], self.rows[task.name],
                                    batch_size=self.batch_size)
            return scores, self.value(scores)
        scores = {}
        for task in self.tasks:
            built.model.active_head = task.name
            scores[task.name] = score_features(built, task, self.features[task.name], self.rows[task.name],
                                               batch_size=self.batch_size)
        return scores, self.value(scores)


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(ckpt_dir: Path, model, optimizer, progress: dict) -> None:
    """Trainable tensors, AdamW moments, RNG and progress, written as one file
    (``last.safetensors``; the progress in its metadata) that replaces the last one atomically."""
    tensors = {f"param.{n}": t for n, t in trainable_state(model).items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = dict(progress, param_groups=opt["param_groups"])
    atomic_write_bytes(ckpt_dir / "last.safetensors", save_tensors(tensors, metadata={"progress": json.dumps(meta)}))


def _read_checkpoint(ckpt_dir: Path) -> tuple[dict, dict]:
    """(tensors, progress) of the last checkpoint (this layout's one file or the older ``last/`` folder)."""
    path = ckpt_dir / "last.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["progress"])
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open has no __iter__)
    folder = ckpt_dir / "last"
    return load_file(str(folder / "state.safetensors")), json.loads((folder / "progress.json").read_text())


def load_checkpoint(ckpt_dir: Path, model, optimizer) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the progress dict."""
    try:
        tensors, meta = _read_checkpoint(ckpt_dir)
    except FileNotFoundError:
        raise AdaptertxError(f"no checkpoint to resume from in {ckpt_dir}") from None
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise AdaptertxError(f"the checkpoint in {ckpt_dir} is damaged ({first_line(e)}); "
                             f"start again with --overwrite") from None
    load_trainable_state(model, {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


def load_best(out: Path, model) -> None:
    """Load the best epoch's trainable tensors (``checkpoints/best.safetensors``) into ``model``."""
    path = out / "checkpoints" / "best.safetensors"
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise AdaptertxError(f"{path} is missing: the run folder is incomplete; start again with --overwrite") \
            from None
    except Exception as e:
        raise AdaptertxError(f"{path} is damaged ({first_line(e)}); start again with --overwrite") from None
    load_trainable_state(model, state)


def lr_factor(step: int, total: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then linear decay to 0 at ``total``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total - step) / max(1, total - warmup_steps))


# ------------------------------------------------------------------------------ the loop


@dataclass
class Fitted:
    """What :func:`fit` leaves: the model with the best epoch's weights, and the run's progress.

    Attributes:
        model: the trained model (unwrapped from Accelerate), best weights loaded.
        state: ``epoch``, ``step``, ``best`` (the best epoch's validation scores), ``best_value``,
            ``best_epoch``, ``history`` and ``drawn`` (batches per task).
        trainable_params, total_params: parameter counts.
        is_main_process: whether this process writes the run's files.
        start: the loop's start time (``time.time()``).
    """

    model: torch.nn.Module
    state: dict
    trainable_params: int
    total_params: int
    is_main_process: bool
    start: float = field(default_factory=time.time)


def _step_budget(plan, settings: TrainSettings, world: int) -> tuple[int, int]:
    total = plan.steps_per_epoch(world, settings.grad_accum) * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    return total, max(1, int(settings.warmup * total))


def fit(built: BuiltModel, plan: SingleTaskPlan | MixturePlan, validation: Validation, out: Path,
        settings: TrainSettings, *, resume: bool = False, progress: bool = True, desc: str = "train",
        on_step: Callable[[int, dict], None] | None = None,
        extra_loss: Callable[[torch.nn.Module], torch.Tensor | None] | None = None) -> Fitted:
    """Train ``built.model``'s trainable parameters on ``plan``, evaluating after every epoch.

    Args:
        built: the model; its trainable parameters are optimised and checkpointed.
        plan: the batches of each epoch.
        validation: the end-of-epoch evaluation; the best epoch's weights are kept.
        out: the run folder (:mod:`adaptertx.rundir`): a new run's ``run.json`` must already be
            written (:func:`adaptertx.rundir.start`); checkpoints go to ``out/checkpoints``.
        settings: the optimisation.
        resume: continue from ``out``'s last checkpoint.
        progress: show a progress bar.
        desc: the progress bar's label.
        on_step: called after every optimiser step with ``(step, record)``; the record holds
            ``loss`` and ``lr`` (and ``tasks`` for a mixture).
        extra_loss: a loss term added to every step (e.g. AdapterFusion's regulariser), or ``None``.
    """
    model = built.model
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Autocast is ours (per run, below), not Accelerate's: its precision setting is fixed once per
    # process, and one process may train several runs.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if plan.find_unused_parameters else None
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=handlers)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    device = base_device(model)
    if accelerator.num_processes > 1:  # DDP: Accelerate puts each process's replica on its device
        model, optimizer = accelerator.prepare(model, optimizer)
        device = accelerator.device
    model.train()
    run = _Run(built, model, accelerator, optimizer, params, settings, out, extra_loss, on_step, device)
    total_steps, warmup_steps = _step_budget(plan, settings, accelerator.num_processes)
    run.total_steps, run.warmup_steps = total_steps, warmup_steps
    state = _initial_state(run, validation, resume)
    fitted = Fitted(accelerator.unwrap_model(model), state, sum(p.numel() for p in params), 0,
                    accelerator.is_main_process)
    run.bar = tqdm(total=total_steps, initial=state["step"], desc=desc, unit="step",
                   disable=not progress or not accelerator.is_main_process)
    try:
        while state["epoch"] < settings.epochs and state["step"] < total_steps:
            epoch = state["epoch"]
            _run_epoch(run, plan, state, epoch)
            _end_of_epoch(built, validation, accelerator, model, optimizer, out, state, epoch)
    finally:
        run.bar.close()
    load_best(out, fitted.model)
    fitted.total_params = sum(p.numel() for p in fitted.model.parameters())
    return fitted


@dataclass
class _Run:
    """The moving parts of one :func:`fit`: model, optimiser, settings, where to write, the bar."""

    built: BuiltModel
    model: torch.nn.Module
    accelerator: Accelerator
    optimizer: torch.optim.Optimizer
    params: list
    settings: TrainSettings
    out: Path
    extra_loss: Callable | None
    on_step: Callable | None
    device: torch.device
    total_steps: int = 0
    warmup_steps: int = 1
    bar: tqdm | None = None
    tokens: int = 0
    since: float = field(default_factory=time.time)


def _initial_state(run: _Run, validation: Validation, resume: bool) -> dict:
    """A new run's progress, or the progress of the checkpoint it resumes from."""
    ckpt_dir = run.out / "checkpoints"
    state: dict = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_value": None, "best_epoch": -1,
                   "history": [], "drawn": {t.name: 0 for t in validation.tasks}}
    if resume:
        rundir.sweep(run.out)
        state = {**state, **load_checkpoint(ckpt_dir, run.accelerator.unwrap_model(run.model), run.optimizer)}
        if state["best_value"] is None and state["best"] is not None:  # checkpoints written before best_value
            state["best_value"] = validation.value(state["best"])
        rundir.truncate_log(run.out, state["step"])
        log.info("resuming %s at step %d (epoch %d, batch %d)", run.out, state["step"], state["epoch"], state["batch"])
    with writing(ckpt_dir):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    return state


def _run_epoch(run: _Run, plan, state: dict, epoch: int) -> None:
    """The epoch's batches from ``state["batch"]`` on, until the epoch or the step budget ends."""
    accelerator, settings = run.accelerator, run.settings
    batches = plan.epoch(epoch, accelerator.process_index, accelerator.num_processes)
    running, step_tasks = 0.0, []
    for b in range(state["batch"], len(batches)):
        task, head, indices = batches[b]
        batch = plan.features_of(task).batch(indices)
        run.tokens += int(batch["attention_mask"].sum())  # counted on the host, before the batch moves
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
        running += _forward_backward(run, batch, head)
        step_tasks.append(task.name)
        state["drawn"][task.name] = state["drawn"].get(task.name, 0) + 1
        state["batch"] = b + 1
        if (b + 1) % settings.grad_accum and b + 1 != len(batches):
            continue
        lr = _optimiser_step(run, state)
        record = {"step": state["step"], "epoch": epoch, **({"tasks": step_tasks} if plan.tasks_in_log else {}),
                  "loss": running, "lr": lr}
        running, step_tasks = 0.0, []
        elapsed = time.time() - run.since
        run.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{run.tokens / max(elapsed, 1e-9):.0f}")
        run.bar.update(1)
        if accelerator.is_main_process:
            rundir.append_log(run.out, record)
            if state["step"] % settings.save_every == 0 and state["step"] < run.total_steps:
                save_checkpoint(run.out / "checkpoints", accelerator.unwrap_model(run.model), run.optimizer, state)
        if run.on_step is not None:
            run.on_step(state["step"], record)
        if state["step"] >= run.total_steps:
            break


def _forward_backward(run: _Run, batch: dict, head: str | None) -> float:
    """One forward and backward pass; returns the (accumulation-scaled) loss."""
    model, accelerator, settings, extra_loss = run.model, run.accelerator, run.settings, run.extra_loss
    try:
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.built.autocast):
            loss = model(**batch).loss if head is None else model(**batch, head=head).loss
            if extra_loss is not None:
                extra = extra_loss(accelerator.unwrap_model(model))
                if extra is not None:
                    loss = loss + extra
            loss = loss / settings.grad_accum
        accelerator.backward(loss)
    except torch.OutOfMemoryError:
        raise AdaptertxError(f"out of memory at batch size {settings.batch_size}: try --batch-size "
                             f"{max(1, settings.batch_size // 2)} --grad-accum {settings.grad_accum * 2}") from None
    return loss.item()


def _optimiser_step(run: _Run, state: dict) -> float:
    """Clip, step and zero the gradients at the scheduled learning rate; returns that rate."""
    lr = run.settings.lr * lr_factor(state["step"], run.total_steps, run.warmup_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.accelerator.clip_grad_norm_(run.params, 1.0)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    state["step"] += 1
    return lr


def _end_of_epoch(built: BuiltModel, validation: Validation, accelerator, model, optimizer, out: Path, state: dict,
                  epoch: int) -> None:
    """Evaluate, keep the best weights, checkpoint (end of an epoch or of the step budget)."""
    scores, value = validation(built)
    record = {"step": state["step"], "epoch": epoch, "validation": scores,
              **({"mean": value} if validation.heads else {})}
    state["history"].append(record)
    ckpt_dir = out / "checkpoints"
    if accelerator.is_main_process:
        rundir.append_log(out, record)
        if state["best_value"] is None or value > state["best_value"]:
            state["best"], state["best_value"], state["best_epoch"] = scores, value, epoch
            best = save_tensors(trainable_state(accelerator.unwrap_model(model)))
            atomic_write_bytes(ckpt_dir / "best.safetensors", best)
    state["epoch"], state["batch"] = epoch + 1, 0
    if accelerator.is_main_process:
        save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, state)

