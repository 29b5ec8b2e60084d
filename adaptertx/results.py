"""The append-only results store of a study: one JSON line per finished (or failed) cell.

A study (:mod:`adaptertx.experiment`) writes ``STUDY/results.jsonl``. Its first line is the
header, every later line one cell::

    {"kind": "study", "study": NAME, "study_hash": H, "config": {...}, "created": ISO time}
    {"kind": "cell", "cell": "avg|xcopa|seed0", "config": "avg", "method": "average",
     "intermediate": {"tasks": [...], "dir": ABS PATH or null},
     "target": "xcopa", "seed": 0, "status": "finished" | "failed",
     "metric": "accuracy", "primary": "accuracy",
     "languages": {"sw": {"scores": {"accuracy": 55.2}, "n": 500, "low_resource": true,
                          "split": "test", "source": "bundled" | FILE, "stats": [[1, 1], ...]}},
     "missing": {"lareqa/xx": "why there is no score"},
     "trace": {"model", "fingerprint", "checkpoints": [{"role", "path", "sha256"}], "versions", "seconds"},
     "error": "..." (failed cells only), "finished": ISO time}

``stats`` holds one row of counts per test example (see :func:`adaptertx.metrics.example_stats`),
so any score, and a bootstrap over test examples, can be recomputed from the store alone.
Lines are appended whole and flushed to disk one at a time; a last line torn by a crash is
ignored with a warning (its cell simply runs again). A later line for the same cell replaces
an earlier one (a failed cell that is run again and finishes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from adaptertx.errors import AdaptertxError
from adaptertx.io import append_line, write_failure

log = logging.getLogger(__name__)

STORE_FILE = "results.jsonl"


def now() -> str:
    """The current UTC time as an ISO string (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def computed(record: dict) -> dict:
    """What a cell record says the cell computed (status, per-example stats and scores, what its
    adapters learned, the checkpoints' hashes), without where and when it ran (folders, hosts,
    seconds): two runs of one study with one seed, on any executor, give equal ``computed``."""
    trace = record.get("trace", {})
    return {"cell": record["cell"], "status": record["status"], "error": record.get("error"),
            "languages": record.get("languages"), "learned": record.get("learned"),
            "adapters_learned": record["intermediate"].get("learned"),
            "checkpoints": [(k["role"], k["sha256"]) for k in trace.get("checkpoints", [])]}


def _lines(path: Path) -> list[dict]:
    records = []
    with open(path, "rb") as f:  # bytes: a torn line may end inside a UTF-8 character
        raw = f.read().split(b"\n")
    for n, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            if n == len(raw) or (n == len(raw) - 1 and not raw[-1]):
                log.warning("%s: ignoring a torn last line (an interrupted write); that cell runs again", path)
                continue
            raise AdaptertxError(f"{path}:{n}: not a JSON line; the results store is damaged") from None
    return records


def read_store(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """The header and the cells (latest record per cell id, in first-seen order) of a store.

    ``path`` is the ``results.jsonl`` file or the study folder holding it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STORE_FILE
    if not path.is_file():
        raise AdaptertxError(f"no results store at {path}")
    records = _lines(path)
    if not records or records[0].get("kind") != "study":
        raise AdaptertxError(f"{path} is not an adaptertx results store (its first line is no study header)")
    cells: dict[str, dict] = {}
    for r in records[1:]:
        if r.get("kind") != "cell" or "cell" not in r:
            raise AdaptertxError(f"{path}: a record that is not a cell: {str(r)[:80]}")
        cells[r["cell"]] = r
    return records[0], list(cells.values())


class ResultsStore:
    """An open results store for one study (created with its header when new).

    Opening an existing store with a different ``study_hash`` is refused: results of two
    studies are never mixed in one file.
    """

    def __init__(self, path: str | os.PathLike, header: dict) -> None:
        self.path = Path(path)
        if self.path.exists():
            old, cells = read_store(self.path)
            if old.get("study_hash") != header.get("study_hash"):
                raise AdaptertxError(
                    f"{self.path} holds results of another study ({old.get('study')!r}, hash "
                    f"{old.get('study_hash')}); this config's hash is {header.get('study_hash')}. "
                    f"Refusing to mix them: choose another output folder")
            self.header = old
            self.cells = {c["cell"]: c for c in cells}
            self._repair_tail()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.header = {"kind": "study", **header, "created": now()}
            self.cells = {}
            self._append(self.header)

    def _repair_tail(self) -> None:
        """Drop a torn last line (reading ignored it) and end the file with a newline, so the
        next record starts a line of its own and the torn one never ends up mid-file."""
        with open(self.path, "rb+") as f:
            body = f.read()
            if not body or body.endswith(b"\n"):
                return
            start = body.rfind(b"\n") + 1
            try:
                json.loads(body[start:])
            except ValueError:
                f.truncate(start)
                return
            f.write(b"\n")

    def _append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            append_line(self.path, line, sync=True)
        except (AdaptertxError, OSError) as e:
            with contextlib.suppress(OSError):  # no torn line left behind
                os.truncate(self.path, size)
            cause = e.__context__ if isinstance(e, AdaptertxError) and e.__context__ is not None else e
            why = write_failure(cause) or getattr(cause, "strerror", None) or str(e)
            raise AdaptertxError(f"could not append to {self.path} ({why}); earlier results are kept: free space "
                                 f"and run the same command again") from None

    def finished(self, cell: str) -> bool:
        """Whether ``cell`` has a finished record."""
        return self.cells.get(cell, {}).get("status") == "finished"

    def add(self, record: dict) -> None:
        """Append one cell record (it must carry ``cell`` and ``status``)."""
        if "cell" not in record or record.get("status") not in ("finished", "failed"):
            raise AdaptertxError("a cell record needs a 'cell' id and a status 'finished' or 'failed'")
        record = {"kind": "cell", **record, "finished": now()}
        self._append(record)
        self.cells[record["cell"]] = record
