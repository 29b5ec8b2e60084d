"""Train one adapter (and its head) for one English task on a frozen base.

:func:`train` runs the whole job: data (:func:`adaptertx.training.data.english_splits`), model
(:func:`adaptertx.modeling.build_adapter_model`), the loop (:func:`adaptertx.training.loop.fit`:
evaluation on the validation split after every epoch, the best epoch kept), and a test-split
score of the best adapter beside the majority baseline. The run folder
(:mod:`adaptertx.rundir`)::

    OUT/run.json            config, status, base fingerprint, adapter seed, versions, device, scores
    OUT/metrics.jsonl       one JSON line per logged step and per evaluation
    OUT/adapter/            the best adapter + head in the AdapterHub layout (safetensors)
    OUT/checkpoints/        last.safetensors (resume state) and best.safetensors while training

:func:`train_one_task` is the same job for a model built elsewhere (an AdapterFusion over task
adapters, a zero-shot target adapter stacked on an intermediate configuration).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed

from adaptertx import rundir
from adaptertx.environment import resolve_device
from adaptertx.floors import versus_floor
from adaptertx.io import atomic_dir
from adaptertx.metrics import score
from adaptertx.modeling import BuiltModel, base_device, build_adapter_model, check_trainable
from adaptertx.settings import ADAPTER, ADAPTER_SEED, DEFAULT_MODEL, QUANT, TrainSettings, check_quant
from adaptertx.tasks import Task, get_task
from adaptertx.training.data import encode, english_splits
from adaptertx.training.loop import SingleTaskPlan, Validation, fit
from adaptertx.training.scoring import predict


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """Everything that decides a training run's result: the task, the base, the adapter, and
    how to train (:class:`adaptertx.settings.TrainSettings`).

    Attributes:
        task: registry name of the task (its English data is used).
        model: base model name, folder or Hub id.
        out: the run folder.
        adapter: ``adapters`` config name (``seq_bn``, ``double_seq_bn``, ``lora``, ...).
        quant: how the base is stored: ``int8``, ``bnb-int8``, ``bf16`` or ``none`` (fp32).
        adapter_seed: adapter and head initialisation (one per base, so adapters average).
    """

    task: str
    model: str = DEFAULT_MODEL
    out: str = "runs/run"
    adapter: str = ADAPTER
    quant: str = QUANT
    adapter_seed: int = ADAPTER_SEED

    def __post_init__(self) -> None:
        super().__post_init__()
        check_quant(self.quant)

    def to_json(self) -> dict:
        """The config as ``run.json`` holds it."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports."""

    out: Path
    best_epoch: int
    validation: dict[str, float]
    test: dict[str, float]
    steps: int
    seconds: float


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          on_step: Callable[[int, dict], None] | None = None, device: str | torch.device | None = "auto") -> RunResult:
    """Train ``config.task``'s adapter; returns the best epoch's scores.

    Args:
        config: the run.
        device: where to train: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:N``
            (:func:`adaptertx.environment.resolve_device`); not part of the config (a run may
            resume on another device), recorded in ``run.json`` as ``device``.
        resume: continue the unfinished run in ``config.out`` (an unfinished run of the same config
            is always continued: from its last checkpoint, or from scratch when it never reached one).
        overwrite: replace whatever ``config.out`` holds.
        progress: show a progress bar.
        on_step: called after every optimiser step with ``(step, {"loss", "lr", ...})``.
    """
    task = get_task(config.task)
    check_trainable(task)
    device = resolve_device(device)

    def build() -> BuiltModel:
        return build_adapter_model(config.model, task, adapter=config.adapter, quant=config.quant,
                                   adapter_seed=config.adapter_seed, device=device)

    def save(model, built: BuiltModel, folder: Path) -> None:
        model.save_adapter(str(folder), built.name, with_head=True, use_safetensors=True)

    return train_one_task(config, task, build, save, resume=resume, overwrite=overwrite, progress=progress,
                          on_step=on_step)


def train_one_task(config: TrainConfig, task: Task, build: Callable[[], BuiltModel],
                   save: Callable[[torch.nn.Module, BuiltModel, Path], None], *, run_info: dict | None = None,
                   extra_loss: Callable[[torch.nn.Module], torch.Tensor | None] | None = None,
                   resume: bool = False, overwrite: bool = False, progress: bool = True,
                   on_step: Callable[[int, dict], None] | None = None) -> RunResult:
    """Train the model ``build()`` returns on ``task``'s English data into the run folder ``config.out``.

    Args:
        config: the run (``config.task`` names the data; the model comes from ``build``).
        task: the task of the data and of the model's active head.
        build: returns the model to train (called after the data is read; the run seed is set
            before and after, so dropout follows the run seed, not the adapter-init seed).
        save: writes the best model into the run's (temporary) ``adapter/`` folder, as
            ``save(model, built, folder)``.
        run_info: extra fields of ``run.json`` (``device``, the base's device, is added).
        extra_loss: a loss term added to every step (AdapterFusion's regulariser), or ``None``.
        resume, overwrite, progress, on_step: as in :func:`train`.
    """
    out = Path(config.out)
    mode = rundir.prepare(out, config.to_json(), resume=resume, overwrite=overwrite)
    train_rows, dev_rows, test_rows = english_splits(task, config.max_examples)
    set_seed(config.seed)
    built = build()
    set_seed(config.seed)  # dropout follows the run seed, not the adapter-init seed
    run_info = {**(run_info or {}), "device": str(base_device(built.model))}
    train_feats = encode(task, train_rows, built.tokenizer, config.max_length, "training")
    dev_feats = encode(task, dev_rows, built.tokenizer, config.max_length, "validation")
    if mode != rundir.RESUME:
        rundir.start(out, config.to_json(), fingerprint=built.fingerprint, **run_info)
    plan = SingleTaskPlan(task, train_feats, config.batch_size, config.seed)
    validation = Validation((task,), {task.name: dev_feats}, {task.name: dev_rows}, config.batch_size * 2)
    fitted = fit(built, plan, validation, out, config.settings(), resume=mode == rundir.RESUME, progress=progress,
                 desc=f"train {task.name}", on_step=on_step, extra_loss=extra_loss)

    state = fitted.state
    test_scores: dict[str, float] = {}
    test_preds = None
    if test_rows is not None:
        test_feats = encode(task, test_rows, built.tokenizer, config.max_length, "test")
        test_preds = predict(built, task, test_feats, batch_size=config.batch_size * 2)
        test_scores = score(task, test_preds, test_rows, lang="en")
    seconds = time.time() - fitted.start
    if fitted.is_main_process:
        with atomic_dir(out / "adapter") as tmp:
            save(fitted.model, built, tmp)
        rundir.append_log(out, {"step": state["step"], "test": test_scores})
        rundir.write_run(out, config.to_json(), "finished", fingerprint=built.fingerprint, adapter_name=built.name,
                         **run_info, best_epoch=state["best_epoch"], validation=state["best"], test=test_scores,
                         steps=state["step"], seconds=round(seconds, 1),
                         **_versus_floor(task, test_preds, test_rows, train_rows),
                         trainable_params=fitted.trainable_params, total_params=fitted.total_params)
    return RunResult(out, state["best_epoch"], state["best"], test_scores, state["step"], seconds)


def _versus_floor(task: Task, preds, test_rows: list[dict] | None, train_rows: list[dict]) -> dict:
    """The run record's floor keys: the majority floor's test score and the paired comparison."""
    versus = None if test_rows is None else versus_floor(task, preds, test_rows, train_rows)
    return {"test_majority_baseline": None if versus is None else versus["floor"], "test_vs_majority": versus}
