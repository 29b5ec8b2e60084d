"""Predictions and scores of a model on encoded examples (validation, test, zero-shot)."""

from __future__ import annotations

import torch

from adaptertx.features import Features, decode_predictions
from adaptertx.metrics import score
from adaptertx.modeling import BuiltModel
from adaptertx.tasks import Task


def predict(built: BuiltModel, task: Task, features: Features, *, batch_size: int = 64):
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


def score_features(built: BuiltModel, task: Task, features: Features, examples: list[dict], *,
                   batch_size: int = 64) -> dict[str, float]:
    """Score the model on encoded ``examples`` (English) with the task's metric."""
    return score(task, predict(built, task, features, batch_size=batch_size), examples, lang="en")
