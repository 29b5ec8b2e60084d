"""The English data a training run learns from: its splits and encoded features."""

from __future__ import annotations

import logging

import torch

from adaptertx import data
from adaptertx.data.remote import load_remote, remote_splits
from adaptertx.errors import AdaptertxError
from adaptertx.features import Features, encode_examples
from adaptertx.models import hub_reachable
from adaptertx.tasks import Task

log = logging.getLogger(__name__)


def english_splits(task: Task, limit: int | None) -> tuple[list[dict], list[dict], list[dict] | None]:
    """The English train, validation and test examples of ``task``'s bundled data.

    A task without bundled data is loaded from the Hub when it is reachable
    (:func:`adaptertx.data.remote.load_remote`). A task without an English validation split
    gets one carved from its training split (a fixed 10%); one without an English test split
    gets ``None``. ``limit`` keeps the first ``limit`` examples of each split in a fixed
    shuffled order.
    """
    if not task.bundled:
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
    return subset(train_rows, limit), subset(dev_rows, limit), None if test_rows is None else subset(test_rows, limit)


def subset(rows: list[dict], limit: int | None) -> list[dict]:
    if limit is None or limit >= len(rows):
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1234))[:limit]
    return [rows[i] for i in sorted(order.tolist())]


def encode(task: Task, rows: list[dict], tokenizer, max_length: int, what: str) -> Features:
    # QA windows overlap by up to 128 tokens (XTREME's doc stride), at most half a window.
    overlap = max(0, min(128, (max_length - 64 - tokenizer.num_special_tokens_to_add(pair=True)) // 2))
    features = encode_examples(task, rows, tokenizer, max_length=max_length, doc_stride=overlap)
    if features.truncated:
        log.warning("%s: %d of %d %s examples were longer than %d tokens and were truncated",
                    task.name, features.truncated, len(rows), what, max_length)
    return features
