"""Deterministic split rules: which released file (and which rows of it) form each of
adaptertx's "train" / "validation" / "test" splits.

Rows are assigned by :func:`bucket`, a stable hash (SHA-256, not Python's ``hash()``) of
``"<dataset>:<key>"`` into 0..99, so the assignment is the same on every machine and run.
The rules (documented in ``bundled/README.md``):

* ``intermediate`` (anli, cosmosqa, commonsenseqa, hellaswag: one labelled release file):
  bucket < 80 → train, 80–89 → validation, ≥ 90 → test.
* ``carve`` (mrpc, siqa, copa): the released labelled held-out file is "test"; the other file
  is cut into train (bucket < 90) and validation (≥ 90).
* ``parallel`` (xnli, pawsx, xquad: rows in every language are translations of the same
  English items): the key is the item (xnli/pawsx: the row, shared across languages;
  xquad: the article title, so that whole articles stay together). bucket < 30 → English
  "train" only (these items are dropped from every other language), 30–39 → "validation"
  and ≥ 40 → "test" in every language. No item in English train appears in any split of
  any other language, and every language's test holds the same items.
* ``released``: splits as the files name them (dev → validation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

SPLITS = ("train", "validation", "test")

PARALLEL_TRAIN = 30  # buckets [0, 30): English train
PARALLEL_VALID = 40  # buckets [30, 40): validation; [40, 100): test
INTERMEDIATE_TRAIN = 80
INTERMEDIATE_VALID = 90
CARVE_TRAIN = 90


def bucket(dataset: str, key: str) -> int:
    """Stable bucket 0..99 of ``key`` within ``dataset`` (first 8 bytes of SHA-256, mod 100)."""
    digest = hashlib.sha256(f"{dataset}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def parallel_split(dataset: str, key: str, lang: str) -> str | None:
    """Split of a parallel item in ``lang`` (None: the item is English-train only)."""
    b = bucket(dataset, key)
    if b < PARALLEL_TRAIN:
        return "train" if lang == "en" else None
    return "validation" if b < PARALLEL_VALID else "test"


def intermediate_split(dataset: str, key: str) -> str:
    b = bucket(dataset, key)
    if b < INTERMEDIATE_TRAIN:
        return "train"
    return "validation" if b < INTERMEDIATE_VALID else "test"


def carve_split(dataset: str, key: str) -> str:
    return "train" if bucket(dataset, key) < CARVE_TRAIN else "validation"


def sentence_groups(rows: list[dict], fields: tuple[str, ...] = ("text_a", "text_b")) -> dict[str, str]:
    """Item id → group key, where items that share a sentence (in any of ``fields``) are one
    group (connected components; the key is the group's smallest id). PAWS reuses a sentence
    in several pairs, so splitting its items by id alone would put a test pair's sentence in
    training."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for ex in rows:
        for f in fields:
            a, b = find("id:" + ex["id"]), find("text:" + ex[f])
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[str, list[str]] = {}
    for ex in rows:
        groups.setdefault(find("id:" + ex["id"]), []).append(ex["id"])
    return {i: min(ids) for ids in groups.values() for i in ids}


def parallel_key(dataset: str) -> Callable[[dict], str]:
    """The grouping key of a parallel dataset's example (xquad: article title)."""
    if dataset == "xquad":
        return lambda ex: ex["title"]
    return lambda ex: ex["id"]
