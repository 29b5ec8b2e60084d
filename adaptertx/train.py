"""Train one adapter (and its head) for one English task on a frozen base.

:func:`train` runs the whole job: data, model (:func:`adaptertx.modeling.build_adapter_model`),
AdamW with linear warm-up and decay, gradient accumulation, bf16 autocast, evaluation on the
validation split after every epoch with the best epoch kept, and a test-split score of the
best adapter. The run folder it writes::

    OUT/run.json            config, status, base fingerprint, adapter seed, versions, scores
    OUT/metrics.jsonl       one JSON line per logged step and per evaluation
    OUT/adapter/            the best adapter + head in the AdapterHub layout (safetensors)
    OUT/checkpoints/        last.* (resume state) and best.safetensors while training

Checkpoints hold only trainable tensors, optimiser moments and RNG state, in safetensors and
JSON — never the (quantised) base and never a pickle — and are written atomically, so
``resume=True`` continues an interrupted run and ends where an uninterrupted one would.
Several processes (``accelerate launch adaptertx train ...``) each take every n-th batch;
Accelerate moves the model and syncs gradients.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from adaptertx import data
from adaptertx.environment import versions
from adaptertx.errors import AdaptertxError
from adaptertx.features import Features, decode_predictions, encode_examples
from adaptertx.io import atomic_dir, atomic_write_bytes, atomic_write_text
from adaptertx.metrics import PRIMARY, score
from adaptertx.modeling import (QUANT_MODES, BuiltModel, build_adapter_model, check_trainable, load_trainable_state,
                                trainable_state)
from adaptertx.tasks import Task, get_task

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's result.

    Attributes:
        task: registry name of the task (its English data is used).
        model: base model name, folder or Hub id.
        out: the run folder.
        adapter: ``adapters`` config name (``seq_bn``, ``double_seq_bn``, ``lora``, ...).
        quant: how the base is stored: ``int8``, ``bnb-int8``, ``bf16`` or ``none`` (fp32).
        epochs: passes over the training split.
        batch_size: examples per forward.
        grad_accum: forwards per optimiser step.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup: fraction of optimiser steps spent warming up linearly.
        max_length: tokens per input (longer inputs are truncated with a warning).
        max_examples: use at most this many training examples (and validation/test examples).
        max_steps: stop after this many optimiser steps.
        seed: data order and dropout.
        adapter_seed: adapter and head initialisation (one per base, so adapters average).
        gradient_checkpointing: recompute activations in backward to save memory.
        save_every: write a resume checkpoint every this many optimiser steps (and at epoch ends).
    """

    task: str
    model: str = "me5-small"
    out: str = "runs/run"
    adapter: str = "seq_bn"
    quant: str = "int8"
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
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be at least 1, got {self.grad_accum}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (0 <= self.warmup < 1, f"warmup is a fraction in [0, 1), got {self.warmup}"),
            (self.max_length >= 8, f"max_length must be at least 8, got {self.max_length}"),
            (self.max_examples is None or self.max_examples >= 1, "max_examples must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (self.save_every >= 1, "save_every must be at least 1"),
            (self.quant in QUANT_MODES, f"unknown quantisation {self.quant!r}; choose one of {', '.join(QUANT_MODES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise AdaptertxError(message)


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports."""

    out: Path
    best_epoch: int
    validation: dict[str, float]
    test: dict[str, float]
    steps: int
    seconds: float


def _english_splits(task: Task, limit: int | None) -> tuple[list[dict], list[dict], list[dict] | None]:
    """The English train, validation and test examples of ``task``'s bundled data.

    A task without bundled data is loaded from the Hub when it is reachable
    (:func:`adaptertx.data.remote.load_remote`). A task without an English validation split
    gets one carved from its training split (a fixed 10%); one without an English test split
    gets ``None``. ``limit`` keeps the first ``limit`` examples of each split in a fixed
    shuffled order.
    """
    if not task.bundled:
        from adaptertx.data.remote import load_remote, remote_splits
        from adaptertx.models import hub_reachable

        if not task.hub.dataset or "train" not in remote_splits(task.name):
            raise AdaptertxError(f"task {task.name!r} has no bundled English data; "
                                 f"{task.hub.note or 'adaptertx reads no training split of ' + str(task.hub.dataset)}")
        if not hub_reachable():
            raise AdaptertxError(f"task {task.name!r} has no bundled English data and the Hub, where it is "
                                 f"({task.hub.dataset}), is unreachable")
        splits = dict.fromkeys(s for s in remote_splits(task.name) if s in ("train", "validation"))
    else:
        splits = data.available(task.bundled)[task.bundled].get("en", {})
    if "train" not in splits:
        raise AdaptertxError(f"task {task.name!r} has no English training data (English splits: "
                             f"{', '.join(splits) or 'none'})")

    def rows(split: str) -> list[dict]:
        out = data.load(task.bundled, "en", split) if task.bundled else load_remote(task.name, "en", split)
        if not out:
            raise AdaptertxError(f"task {task.name!r}: the English {split!r} split is empty")
        return out

    train_rows = rows("train")
    if "validation" in splits:
        dev_rows = rows("validation")
    else:
        order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(4321)).tolist()
        cut = max(1, len(train_rows) // 10)
        dev_rows = [train_rows[i] for i in sorted(order[:cut])]
        train_rows = [train_rows[i] for i in sorted(order[cut:])]
        if not train_rows:
            raise AdaptertxError(f"task {task.name!r}: too few English examples to hold out a validation split")
        log.info("%s: no English validation split; holding out %d training examples", task.name, cut)
    test_rows = rows("test") if "test" in splits else None
    return _first(train_rows, limit), _first(dev_rows, limit), None if test_rows is None else _first(test_rows, limit)


def majority_label(task: Task, train_rows: list[dict]):
    """The most frequent label of the training rows (ties: the smallest), or ``None`` for
    families other than classification and multiple choice, or without rows."""
    if task.family not in ("classification", "multiple_choice") or not train_rows:
        return None
    counts: dict = {}
    for row in train_rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    return min(counts, key=lambda label: (-counts[label], str(label)))


def majority_baseline(task: Task, rows: list[dict], train_rows: list[dict]) -> float | None:
    """Accuracy (percent) on ``rows`` of always predicting the training split's most frequent
    label (:func:`majority_label`), the usual majority-class baseline. With balanced
    multiple-choice answers it is chance, ``100 / num_choices``, up to the test split's own
    imbalance. ``None`` for other families or without rows."""
    label = majority_label(task, train_rows)
    if label is None or not rows:
        return None
    return 100.0 * sum(row["label"] == label for row in rows) / len(rows)


def majority_comparison(task: Task, predictions, rows: list[dict], train_rows: list[dict]) -> dict | None:
    """The model's accuracy minus :func:`majority_baseline` on the same ``rows``, in points,
    with a 95% interval of that paired difference (normal approximation over the per-example
    differences, each -1, 0 or +1): ``{"difference", "low", "high", "n"}``. A low end above 0
    is what "clearly beats the majority baseline" means in ``adaptertx runs``.

    ``None`` for families other than classification and multiple choice, or without rows.
    """
    majority = majority_label(task, train_rows)
    if majority is None or not rows:
        return None
    preds = [predictions[row["id"]] for row in rows] if isinstance(predictions, dict) else list(predictions)
    if len(preds) != len(rows):
        raise AdaptertxError(f"{task.name}: {len(preds)} predictions for {len(rows)} examples")
    diffs = torch.tensor([float(p == row["label"]) - float(majority == row["label"])
                          for p, row in zip(preds, rows)], dtype=torch.float64)
    n = len(rows)
    mean = diffs.mean().item()
    half = 1.96 * (diffs.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("inf"))
    return {"difference": 100 * mean, "low": 100 * (mean - half), "high": 100 * (mean + half), "n": n}


def _first(rows: list[dict], limit: int | None) -> list[dict]:
    if limit is None or limit >= len(rows):
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1234))[:limit]
    return [rows[i] for i in sorted(order.tolist())]


def _encode(task: Task, rows: list[dict], tokenizer, max_length: int, what: str) -> Features:
    # QA windows overlap by up to 128 tokens (XTREME's doc stride), at most half a window.
    overlap = max(0, min(128, (max_length - 64 - tokenizer.num_special_tokens_to_add(pair=True)) // 2))
    features = encode_examples(task, rows, tokenizer, max_length=max_length, doc_stride=overlap)
    if features.truncated:
        log.warning("%s: %d of %d %s examples were longer than %d tokens and were truncated",
                    task.name, features.truncated, len(rows), what, max_length)
    return features


# ------------------------------------------------------------------------------ checkpoints


def _save_checkpoint(ckpt_dir: Path, model, optimizer, progress: dict) -> None:
    """Trainable tensors, AdamW moments, RNG and progress, written as one atomic folder."""
    tensors = {f"param.{n}": t for n, t in trainable_state(model).items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = dict(progress, param_groups=opt["param_groups"])
    with atomic_dir(ckpt_dir / "last") as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        atomic_write_text(tmp / "progress.json", json.dumps(meta, indent=1))


def _load_checkpoint(ckpt_dir: Path, model, optimizer) -> dict:
    """Restore what :func:`_save_checkpoint` wrote; returns the progress dict."""
    folder = ckpt_dir / "last"
    try:
        tensors = load_file(str(folder / "state.safetensors"))
        meta = json.loads((folder / "progress.json").read_text())
    except FileNotFoundError:
        raise AdaptertxError(f"no checkpoint to resume from in {ckpt_dir}") from None
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise AdaptertxError(f"checkpoint in {folder} is damaged ({str(e).splitlines()[0]}); "
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


# ------------------------------------------------------------------------------ evaluation


def evaluate(built, task: Task, features: Features, examples: list[dict], *,
             batch_size: int = 64) -> dict[str, float]:
    """Score the model on encoded ``examples`` with the task's metric."""
    return score(task, predict(built, task, features, batch_size=batch_size), examples, lang="en")


def predict(built, task: Task, features: Features, *, batch_size: int = 64):
    """The model's predictions for encoded examples, as
    :func:`adaptertx.features.decode_predictions` returns them."""
    model = built.model
    model.eval()
    outputs = []
    device = next(model.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=built.autocast):
        for batch in features.batches(batch_size, labels=False):
            out = model(**{k: v.to(device) for k, v in batch.items()})
            if task.family == "extractive_qa":
                outputs.append((out.start_logits.float().cpu(), out.end_logits.float().cpu()))
            else:
                outputs.append(out.logits.float().cpu())
    model.train()
    if task.family == "extractive_qa":
        logits = ([s for s, _ in outputs], [e for _, e in outputs])
    else:
        logits = outputs
    return decode_predictions(task, features, logits)


# ------------------------------------------------------------------------------ the run


def _prepare_out(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> None:
    run_file = out / "run.json"
    if resume:
        if not run_file.exists():
            raise AdaptertxError(f"nothing to resume in {out}: it holds no run")
        saved = json.loads(run_file.read_text())
        if saved.get("status") == "finished":
            raise AdaptertxError(f"{out} holds a finished run; nothing to resume (use --overwrite to train again)")
        if saved.get("config") != dataclasses.asdict(config):
            diff = sorted(k for k, v in dataclasses.asdict(config).items() if saved.get("config", {}).get(k) != v)
            raise AdaptertxError(f"cannot resume {out} with a different config (differs in: {', '.join(diff)})")
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        if run_file.exists() and json.loads(run_file.read_text()).get("status") == "finished":
            raise AdaptertxError(f"{out} already holds a finished run; pass --overwrite to replace it")
        if run_file.exists():
            raise AdaptertxError(f"{out} holds an unfinished run; pass --resume to continue it or --overwrite to start again")
        raise AdaptertxError(f"{out} exists and is not empty; choose another --out or pass --overwrite")


def _write_run(out: Path, config: TrainConfig, status: str, **extra) -> None:
    body = {"config": dataclasses.asdict(config), "status": status, "versions": versions(), **extra}
    atomic_write_text(out / "run.json", json.dumps(body, indent=2) + "\n")


@dataclass(frozen=True)
class TrainHooks:
    """What a run built on :func:`train`'s loop does differently from single-task training.

    Attributes:
        build: returns the model to train, in place of
            :func:`adaptertx.modeling.build_adapter_model`; called as ``build(config, task)``.
            Its trainable parameters are the ones optimised and checkpointed.
        save: writes the final model into the (temporary) ``adapter/`` folder; called as
            ``save(model, built, folder)``.
        extra_loss: an extra loss term added to every training step (e.g. AdapterFusion's
            value-matrix regularisation), or ``None``; called as ``extra_loss(model)``.
        run_info: extra fields written into ``run.json``.
    """

    build: Callable[[TrainConfig, Task], BuiltModel]
    save: Callable[[torch.nn.Module, BuiltModel, Path], None]
    extra_loss: Callable[[torch.nn.Module], torch.Tensor | None] | None = None
    run_info: dict = dataclasses.field(default_factory=dict)


def _lr_factor(step: int, total: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then linear decay to 0 at ``total``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total - step) / max(1, total - warmup_steps))


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, on_step: Callable[[int, dict], None] | None = None,
          hooks: TrainHooks | None = None) -> RunResult:
    """Train ``config.task``'s adapter; returns the best epoch's scores.

    Args:
        config: the run.
        resume: continue the unfinished run in ``config.out`` from its last checkpoint.
        overwrite: replace whatever ``config.out`` holds.
        progress: show a progress bar.
        on_step: called after every optimiser step with ``(step, {"loss", "lr"})``.
        hooks: build, save and regularise a different model with the same loop (AdapterFusion
            uses this); ``None`` trains one adapter and head.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    task = get_task(config.task)
    check_trainable(task)
    out = Path(config.out)
    _prepare_out(out, config, resume, overwrite)
    train_rows, dev_rows, test_rows = _english_splits(task, config.max_examples)

    set_seed(config.seed)
    if hooks is None:
        built = build_adapter_model(config.model, task, adapter=config.adapter, quant=config.quant,
                                    adapter_seed=config.adapter_seed)
    else:
        built = hooks.build(config, task)
    run_info = hooks.run_info if hooks is not None else {}
    model = built.model
    set_seed(config.seed)  # dropout follows the run seed, not the adapter-init seed
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    train_feats = _encode(task, train_rows, built.tokenizer, config.max_length, "training")
    dev_feats = _encode(task, dev_rows, built.tokenizer, config.max_length, "validation")

    # Autocast is ours (per run, below), not Accelerate's: its precision setting is fixed
    # once per process, and one process may train several runs.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    world, rank = accelerator.num_processes, accelerator.process_index
    batches_per_epoch = math.ceil(len(train_feats) / config.batch_size / world)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = max(1, int(config.warmup * total_steps))

    ckpt_dir = out / "checkpoints"
    state: dict = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_epoch": -1, "history": []}
    if resume:
        state = _load_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer)
        _truncate_log(out / "metrics.jsonl", state["step"])
        log.info("resuming %s at step %d (epoch %d, batch %d)", out, state["step"], state["epoch"], state["batch"])
    else:
        if overwrite and out.exists():
            import shutil

            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_run(out, config, "running", fingerprint=built.fingerprint, **run_info)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    metric_key = PRIMARY[task.metric]
    start = time.time()
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {task.name}", unit="step",
               disable=not progress or not accelerator.is_main_process)
    seen_tokens, window_start = 0, time.time()
    try:
        while state["epoch"] < config.epochs and state["step"] < total_steps:
            epoch = state["epoch"]
            order = torch.randperm(len(train_feats), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
            order = order[rank::world]
            batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            running = 0.0
            for b in range(state["batch"], len(batches)):
                batch = {k: v.to(accelerator.device) for k, v in train_feats.batch(batches[b]).items()}
                seen_tokens += int(batch["attention_mask"].sum())
                try:
                    with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=built.autocast):
                        loss = model(**batch).loss
                        if hooks is not None and hooks.extra_loss is not None:
                            extra = hooks.extra_loss(accelerator.unwrap_model(model))
                            if extra is not None:
                                loss = loss + extra
                        loss = loss / config.grad_accum
                    accelerator.backward(loss)
                except torch.OutOfMemoryError:
                    raise AdaptertxError(f"out of memory at batch size {config.batch_size}: try --batch-size "
                                         f"{max(1, config.batch_size // 2)} --grad-accum {config.grad_accum * 2}") from None
                running += loss.item()
                state["batch"] = b + 1
                if (b + 1) % config.grad_accum and b + 1 != len(batches):
                    continue
                factor = _lr_factor(state["step"], total_steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * factor
                accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                record = {"step": state["step"], "epoch": epoch, "loss": running, "lr": config.lr * factor}
                running = 0.0
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
            # End of epoch (or of the step budget): evaluate and keep the best adapter.
            scores = evaluate(built, task, dev_feats, dev_rows, batch_size=config.batch_size * 2)
            record = {"step": state["step"], "epoch": epoch, "validation": scores}
            state["history"].append(record)
            if accelerator.is_main_process:
                _append_log(out / "metrics.jsonl", record)
                if state["best"] is None or scores[metric_key] > state["best"][metric_key]:
                    state["best"], state["best_epoch"] = scores, epoch
                    save_file(trainable_state(accelerator.unwrap_model(model)), str(ckpt_dir / "best.tmp"))
                    (ckpt_dir / "best.tmp").replace(ckpt_dir / "best.safetensors")
            state["epoch"], state["batch"] = epoch + 1, 0
            if accelerator.is_main_process:
                _save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, state)
    finally:
        bar.close()

    # Finish: the best adapter, scored on the test split, saved in the AdapterHub layout.
    unwrapped = accelerator.unwrap_model(model)
    load_trainable_state(unwrapped, load_file(str(ckpt_dir / "best.safetensors")))
    test_scores: dict[str, float] = {}
    if test_rows is not None:
        test_feats = _encode(task, test_rows, built.tokenizer, config.max_length, "test")
        test_preds = predict(built, task, test_feats, batch_size=config.batch_size * 2)
        test_scores = score(task, test_preds, test_rows, lang="en")
    seconds = time.time() - start
    if accelerator.is_main_process:
        with atomic_dir(out / "adapter") as tmp:
            if hooks is None:
                unwrapped.save_adapter(str(tmp), built.name, with_head=True, use_safetensors=True)
            else:
                hooks.save(unwrapped, built, tmp)
        _append_log(out / "metrics.jsonl", {"step": state["step"], "test": test_scores})
        _write_run(out, config, "finished", fingerprint=built.fingerprint, adapter_name=built.name, **run_info,
                   best_epoch=state["best_epoch"], validation=state["best"], test=test_scores,
                   steps=state["step"], seconds=round(seconds, 1),
                   test_majority_baseline=None if test_rows is None else majority_baseline(task, test_rows, train_rows),
                   test_vs_majority=None if test_rows is None else majority_comparison(task, test_preds, test_rows,
                                                                                      train_rows),
                   trainable_params=sum(p.numel() for p in params),
                   total_params=sum(p.numel() for p in unwrapped.parameters()))
    return RunResult(out, state["best_epoch"], state["best"], test_scores, state["step"], seconds)


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be written again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def summarize_runs(root: str | Path) -> list[dict]:
    """One row per run folder under ``root`` (``root`` itself may be a run): its task,
    status, steps, time, primary validation and test score, the majority baseline, and the 95%
    interval of test minus baseline (``interval``: (low, high), or None where the run did not
    record it)."""
    root = Path(root)
    files = [root / "run.json"] if (root / "run.json").exists() else sorted(root.glob("*/run.json"))
    if not files:
        raise AdaptertxError(f"no runs in {root}: expected run folders holding run.json")
    rows = []
    for f in files:
        try:
            run = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise AdaptertxError(f"{f} is not valid JSON ({e})") from None
        config = run.get("config") or {}
        if "task" in config:  # one task
            names, per_task = [config["task"]], None
        else:  # a joint multi-task run: one row per task
            names, per_task = list(config.get("tasks") or []), True
        for name in names:
            task = get_task(name)
            key = PRIMARY[task.metric]
            validation = (run.get("validation") or {}).get(name) if per_task else run.get("validation")
            test = (run.get("test") or {}).get(name) if per_task else run.get("test")
            baseline = run.get("test_majority_baseline")
            versus = run.get("test_vs_majority")
            versus = versus.get(name) if per_task and isinstance(versus, dict) else versus
            rows.append({
                "run": f.parent.name + (f"[{name}]" if per_task else ""), "task": task.name, "status": run["status"],
                "steps": run.get("steps"), "seconds": run.get("seconds"), "metric": key,
                "validation": (validation or {}).get(key), "test": (test or {}).get(key),
                "baseline": baseline.get(name) if isinstance(baseline, dict) else baseline,
                "interval": None if not versus else (versus["low"], versus["high"]),
            })
    return rows
