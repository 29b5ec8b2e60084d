"""A study as a task graph: intermediate adapters → merged configurations → cells.

Each :class:`Node` is a pure function of the study, its inputs' folders and its seed, and writes
only its own folder (``intermediate/<task>``, ``merged/<config>``, ``cells/<config>/<target>/seed<k>``)
and its log (``logs/<node>.log``). :func:`run_node` does one node's work wherever an executor
(:mod:`adaptertx.executors`) runs it, on the device the study was given (``auto`` is resolved
by each worker: its GPU when it has one); :func:`drive` is the driver: it submits every node whose
inputs are ready, retries a node whose worker was lost, and is the one writer of the results
store (a cell's record comes back to it from the worker; a finished cell also leaves its record
in its folder, ``cell.json``, so a cell whose driver died before recording it is not run again).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from adaptertx.environment import resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import NONE, EvalConfig, evaluate, fusion_of, load_intermediate
from adaptertx.io import atomic_write_text, writing
from adaptertx.merging import MIXTURE, MergeOptions, merge
from adaptertx.results import STORE_FILE
from adaptertx.rundir import METHODS, RUN_FILE, read_json, run_status
from adaptertx.training import TrainConfig, train

log = logging.getLogger(__name__)

#: The kinds of node, in the order the serial executor runs them.
KINDS = ("intermediate", "merge", "cell")
#: A finished cell's record, in its folder.
CELL_RECORD = "cell.json"
#: The folder of the nodes' logs inside a study folder.
LOG_DIR = "logs"


@dataclass(frozen=True)
class Node:
    """One unit of work of a study.

    Attributes:
        kind: ``intermediate`` (one task adapter), ``merge`` (one merged configuration's folder)
            or ``cell`` (one configuration × target × seed).
        name: the task, the configuration, or the cell id (``config|target|seed<k>``).
        deps: the keys of the nodes whose outputs it takes.
        config, target, seed: a cell's (the configuration's name for a merge).
    """

    kind: str
    name: str
    deps: tuple[str, ...] = ()
    config: str | None = None
    target: str | None = None
    seed: int | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def log_path(self, out: Path) -> Path:
        """The node's log file in the study folder ``out``."""
        return out / LOG_DIR / f"{self.kind}-{self.name.replace('|', '-')}.log"


def needs_merge(spec) -> bool:
    """Whether configuration ``spec`` has a merged folder of its own to build before its cells run."""
    return spec.method not in ("none", "single", "fusion") or spec.fusion_data == "mixture"


def build_graph(study, cells: list[tuple]) -> list[Node]:
    """The nodes the cells ``[(spec, target, seed), ...]`` need, each after its inputs."""
    specs = list(dict.fromkeys(c for c, _, _ in cells))
    tasks = list(dict.fromkeys(t for c in specs for t in c.tasks))
    nodes = [Node("intermediate", t) for t in tasks]
    for spec in specs:
        if needs_merge(spec):
            nodes.append(Node("merge", spec.name, tuple(f"intermediate:{t}" for t in spec.tasks), config=spec.name))
    for spec, target, seed in cells:
        deps = (f"merge:{spec.name}",) if needs_merge(spec) else tuple(f"intermediate:{t}" for t in spec.tasks)
        nodes.append(Node("cell", cell_id(spec.name, target, seed), deps, spec.name, target, seed))
    return nodes


def critical_path(nodes: list[Node], seconds: dict[str, float]) -> float:
    """The longest chain of dependent nodes in ``nodes`` (deps first, as :func:`build_graph` gives
    them), in the nodes' ``seconds``: no number of workers runs the graph faster."""
    finish: dict[str, float] = {}
    for n in nodes:
        finish[n.key] = seconds[n.key] + max((finish[d] for d in n.deps if d in finish), default=0.0)
    return max(finish.values(), default=0.0)


def makespan(nodes: list[Node], seconds: dict[str, float], workers: int) -> float:
    """The wall time of ``nodes`` on ``workers`` identical workers, one node each at a time, when a
    free worker always takes the ready node with the longest chain after it (list scheduling:
    at least the critical path and the total divided by ``workers``, at most their sum)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    keys = {n.key for n in nodes}
    children: dict[str, list[str]] = {k: [] for k in keys}
    for n in nodes:
        for d in n.deps:
            if d in keys:
                children[d].append(n.key)
    chain: dict[str, float] = {}
    for n in reversed(nodes):
        chain[n.key] = seconds[n.key] + max((chain[c] for c in children[n.key]), default=0.0)
    waiting = {n.key: sum(d in keys for d in n.deps) for n in nodes}
    order = {n.key: i for i, n in enumerate(nodes)}
    ready = [(-chain[k], order[k], k) for k, w in waiting.items() if w == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int, str]] = []
    now = 0.0
    while ready or running:
        while ready and len(running) < workers:
            _, i, k = heapq.heappop(ready)
            heapq.heappush(running, (now + seconds[k], i, k))
        now, _, k = heapq.heappop(running)
        for c in children[k]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, (-chain[c], order[c], c))
    return now


# ------------------------------------------------------------------------------ the work of each kind of node


def cell_id(config: str, target: str, seed: int) -> str:
    """The store key of one grid cell."""
    return f"{config}|{target}|seed{seed}"


def train_intermediate(study, task: str, out: Path, progress: bool, device="auto") -> Path:
    """The finished run folder of ``task``'s adapter in the study folder ``out`` (trained if needed, on ``device``)."""
    run = out / "intermediate" / task
    if run_status(run) == "finished":
        return run
    config = TrainConfig(task=task, model=study.model, out=str(run), adapter=study.adapter, quant=study.quant,
                         adapter_seed=study.adapter_seed,
                         **study.intermediate.replace(seed=study.seeds[0]).training_json())
    # an interrupted run continues (or starts again if it never checkpointed)
    train(config, progress=progress, device=device)
    return run


def build_merged(study, spec, dirs: list[Path], out: Path, progress: bool, device="auto") -> Path:
    """The merged folder ``out/merged/<config>`` of a configuration that has one (merging if needed, on ``device``)."""
    folder = out / "merged" / spec.name
    if not (folder / "recipe.json").is_file():
        trained = METHODS[spec.method].trained
        options = MergeOptions(weights=spec.weights if spec.weights == "dev" else
                               list(spec.weights) if spec.weights else None,
                               target=MIXTURE if spec.method == "fusion" else None,
                               settings=study.intermediate.replace(seed=study.seeds[0]) if trained else None,
                               progress=progress, sampling=spec.sampling, temperature=spec.temperature,
                               device=device)
        # A trained merge that was interrupted continues; a weight-space one is written whole or not at all.
        merge(spec.method, dirs, folder, options, overwrite=not trained and folder.exists())
    return folder


def intermediate_of(spec, dirs: list[Path], merged: Path | None):
    """The :class:`adaptertx.evaluation.Intermediate` of one configuration, from its task adapters'
    run folders ``dirs`` (or its merged folder, for the configurations that have one)."""
    if spec.method == "none":
        return NONE
    if merged is not None:
        return load_intermediate(merged)
    if spec.method == "single":
        return load_intermediate(dirs[0])
    return fusion_of(dirs)


def cell_base(spec, target: str, seed: int, source, learned: dict) -> dict:
    """What every record of a cell holds, finished or failed: which cell, over which adapters
    (their folder and their English test scores beside their floors)."""
    return {"cell": cell_id(spec.name, target, seed), "config": spec.name, "method": spec.method, "target": target,
            "seed": seed, "intermediate": {"tasks": list(spec.tasks), "dir": str(source) if source else None,
                                           "learned": {t: learned.get(t) for t in spec.tasks}}}


def eval_config(study, target: str, seed: int) -> EvalConfig:
    """The :class:`adaptertx.evaluation.EvalConfig` of one cell."""
    b = study.budget_for(target)
    return EvalConfig(target=target, model=study.model, quant=study.quant, adapter=study.adapter,
                      languages=study.languages_for(target), max_eval_examples=study.max_eval_examples,
                      adapter_seed=study.adapter_seed, data_files=study.data_files_for(target),
                      max_candidates=study.max_candidates, pretraining_gib=study.pretraining_gib,
                      unknown_lang_low_resource=study.unknown_lang_low_resource,
                      **b.replace(seed=seed).training_json())


# ------------------------------------------------------------------------------ one node, on a worker


class FolderNotVisible(AdaptertxError):
    """The study folder cannot be read where a node runs (no shared storage)."""


def check_visible(out: Path, study_hash: str) -> None:
    """Raise :class:`FolderNotVisible` unless ``out`` holds this study's results header here."""
    where = socket.gethostname()
    try:
        with open(out / STORE_FILE, "rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        header = None
    if not isinstance(header, dict) or header.get("study_hash") != study_hash:
        raise FolderNotVisible(f"the study folder {out} cannot be read on {where} (no results header of this study "
                               f"there): every worker must see it at the same path (shared storage)")


def run_node(study, out: str, node: Node, inputs: dict[str, dict], study_hash: str, device: str = "auto",
             progress: bool = False) -> dict:
    """Do ``node``'s work (any executor calls this) and say how it went: ``{"ok": True, "value": ...}``
    or ``{"ok": False, "error": one line, "traceback": ... or None, "fatal": bool}``. An error of the
    node's own is returned, not raised, so that only a lost worker surfaces as an exception. Both
    carry ``"seconds"``: the time the node took on its worker. ``device`` is a name
    (:func:`adaptertx.environment.resolve_device`), resolved here, on the worker."""
    start = time.perf_counter()
    out = Path(out)
    path = node.log_path(out)
    with _node_log(path) as handler:
        log.info("%s started on %s, pid %d", node.key, socket.gethostname(), os.getpid())
        try:
            check_visible(out, study_hash)
            value = _work(study, out, node, inputs, progress, resolve_device(device))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # the node's own failure: recorded, never retried
            detail = None if isinstance(e, AdaptertxError) else traceback.format_exc(limit=8)
            message = str(e) if isinstance(e, AdaptertxError) else f"{type(e).__name__}: {e}"
            log.error("%s failed: %s%s", node.key, message, f"\n{detail}" if detail else "")
            return {"ok": False, "error": message, "traceback": detail, "fatal": isinstance(e, FolderNotVisible),
                    "seconds": time.perf_counter() - start}
        finally:
            if handler is not None:
                handler.flush()
        log.info("%s finished", node.key)
        return {"ok": True, "value": value, "seconds": time.perf_counter() - start}


@contextlib.contextmanager
def _node_log(path: Path):
    """adaptertx's log records go to ``path`` while the block runs (nothing if it cannot be written)."""
    handler = None
    with contextlib.suppress(OSError):
        with writing(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("adaptertx")
    old_level = root.level
    if handler is not None:
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        if handler is not None:
            root.removeHandler(handler)
            root.setLevel(old_level)
            handler.close()


def _work(study, out: Path, node: Node, inputs: dict[str, dict], progress: bool, device):
    if node.kind == "intermediate":
        run = train_intermediate(study, node.name, out, progress, device)
        return {"dir": str(run), "learned": read_json(run / RUN_FILE).get("test_vs_majority")}
    spec = study.config(node.config)
    runs = {t: Path(inputs[f"intermediate:{t}"]["dir"]) for t in spec.tasks if f"intermediate:{t}" in inputs}
    if node.kind == "merge":
        return {"dir": str(build_merged(study, spec, [runs[t] for t in spec.tasks], out, progress, device)),
                "learned": {t: inputs[f"intermediate:{t}"]["learned"] for t in spec.tasks}}
    return _cell(study, out, node, spec, runs, inputs, progress, device)


def _cell(study, out: Path, node: Node, spec, runs: dict[str, Path], inputs: dict[str, dict], progress: bool,
          device) -> dict:
    folder = out / "cells" / spec.name / node.target / f"seed{node.seed}"
    done = _finished_record(folder / CELL_RECORD, node.name)
    if done is not None:
        log.info("%s: finished before (%s); its record is kept", node.key, folder / CELL_RECORD)
        return done
    merged = inputs.get(f"merge:{spec.name}")
    learned = merged["learned"] if merged else {t: inputs[f"intermediate:{t}"]["learned"] for t in spec.tasks}
    inter = intermediate_of(spec, [runs[t] for t in spec.tasks] if not merged else [],
                            Path(merged["dir"]) if merged else None)
    base = cell_base(spec, node.target, node.seed, inter.source, learned)
    result = evaluate(eval_config(study, node.target, node.seed), inter, folder, progress=progress, device=device)
    record = {**base, "status": "finished", **result.record()}
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / CELL_RECORD, json.dumps(record, ensure_ascii=False) + "\n")
    return record


def _finished_record(path: Path, cell: str) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("cell") == cell and \
        record.get("status") == "finished" else None


# ------------------------------------------------------------------------------ the driver


@dataclass
class _State:
    """The driver's view of every node."""

    study: object
    nodes: dict[str, Node]
    status: dict[str, str]  # waiting | running | done | failed
    outputs: dict[str, dict]
    errors: dict[str, str]
    attempts: dict[str, int]
    device: str = "auto"

    def counts(self, slots: int | None = None) -> dict[str, int]:
        """Nodes per status; with ``slots``, at most that many count as running (the others wait)."""
        c = {s: sum(v == s for v in self.status.values()) for s in ("done", "running", "failed", "waiting")}
        if slots is not None and c["running"] > slots:
            c["waiting"] += c["running"] - slots
            c["running"] = slots
        return c


def drive(study, out: Path, nodes: list[Node], executor, store, *, retries: int = 2, progress: bool = True,
          echo=print, device: str = "auto") -> tuple[list[str], dict[str, str]]:
    """Run ``nodes`` on ``executor``, appending every cell's record to ``store`` as it comes back.
    Returns the cells run and the cells failed (id → reason). A node whose worker is lost is run
    again up to ``retries`` times, then recorded as failed with the reason. Every node runs on
    ``device`` (a name each worker resolves)."""
    state = _State(study, {n.key: n for n in nodes}, {n.key: "waiting" for n in nodes}, {}, {}, {}, device)
    ran, failed = [], {}
    study_hash = store.header["study_hash"]
    running: dict = {}  # handle -> node key
    bar = tqdm(total=len(nodes), desc="nodes", unit="node", disable=not progress)
    try:
        while True:
            for node in nodes:
                if state.status[node.key] == "waiting":
                    _submit_if_ready(node, state, executor, running, study, out, study_hash, progress, store,
                                     ran, failed, bar, echo)
            if not running:
                break
            done = executor.wait_any(list(running))
            _show(bar, state, executor)
            if done is None:
                continue
            handle, outcome = done
            key = running.pop(handle)
            _finish(state.nodes[key], outcome, state, store, ran, failed, retries, bar, echo)
        _show(bar, state, executor)
    finally:
        bar.close()
    return ran, failed


def _submit_if_ready(node, state, executor, running, study, out, study_hash, progress, store, ran, failed, bar,
                     echo) -> None:
    deps = [state.status[d] for d in node.deps]
    if "failed" in deps:
        reason = "; ".join(_dep_error(state, d) for d in node.deps if state.status[d] == "failed")
        _fail(node, reason, None, state, store, failed, bar, echo)
    elif all(s == "done" for s in deps):
        inputs = {d: state.outputs[d] for d in node.deps}
        if node.kind == "merge":
            spec = study.config(node.config)
            echo(f"[merge] {spec.name} ({spec.method} of {', '.join(spec.tasks)})")
        elif node.kind == "intermediate":
            echo(f"[intermediate] {node.name}")
        handle = executor.submit(node, (study, str(out), node, inputs, study_hash, state.device), progress)
        running[handle] = node.key
        state.status[node.key] = "running"
        state.attempts[node.key] = state.attempts.get(node.key, 0) + 1


def _dep_error(state: _State, key: str) -> str:
    node = state.nodes[key]
    if node.kind == "intermediate":
        return f"the {node.name} adapter failed to train: {state.errors.get(key, 'unknown error')}"
    return state.errors.get(key, "unknown error")


def _finish(node, outcome, state, store, ran, failed, retries, bar, echo) -> None:
    kind, payload = outcome
    if kind == "lost":
        if state.attempts[node.key] <= retries:
            echo(f"{node.name}: its worker was lost ({payload}); running it again "
                 f"(attempt {state.attempts[node.key] + 1} of {retries + 1})")
            state.status[node.key] = "waiting"
            return
        _fail(node, f"its worker was lost {state.attempts[node.key]} times; last: {payload}", None, state, store,
              failed, bar, echo)
        return
    if not payload["ok"]:
        if payload.get("fatal"):
            raise AdaptertxError(payload["error"])
        _fail(node, payload["error"], payload.get("traceback"), state, store, failed, bar, echo)
        return
    state.status[node.key] = "done"
    state.outputs[node.key] = payload["value"]
    bar.update(1)
    if node.kind == "cell":
        store.add(payload["value"])
        ran.append(node.name)
        bar.write(f"{node.name}: {_one_line(payload['value'])}")


def _fail(node, reason, detail, state, store, failed, bar, echo) -> None:

    state.status[node.key] = "failed"
    state.errors[node.key] = reason
    bar.update(1)
    if node.kind != "cell":
        label = "[intermediate]" if node.kind == "intermediate" else "[merge]"
        echo(f"{label} {node.name} failed: {reason}")
        return
    spec = state.study.config(node.config)
    learned = {t: state.outputs.get(f"intermediate:{t}", {}).get("learned") for t in spec.tasks}
    base = cell_base(spec, node.target, node.seed, None, learned)
    store.add({**base, "status": "failed", "error": reason, **({"traceback": detail} if detail else {})})
    failed[node.name] = reason
    bar.write(f"{node.name}: FAILED — {reason}")


def _show(bar, state: _State, executor) -> None:
    c = state.counts(getattr(executor, "slots", None))
    bar.set_postfix_str(f"{c['done']} done · {c['running']} running · {c['waiting']} waiting · {c['failed']} failed",
                        refresh=False)


def _one_line(record: dict) -> str:
    from statistics import mean

    key = record.get("primary")
    langs = record.get("languages") or {}
    scores = {k: v["scores"][key] for k, v in langs.items() if key in v.get("scores", {})}
    low = [v for k, v in scores.items() if langs[k].get("low_resource")]
    high = [v for k, v in scores.items() if not langs[k].get("low_resource")]
    parts = [f"{key} avg {mean(scores.values()):.1f} over {len(scores)} languages"] if scores else ["no scores"]
    if low:
        parts.append(f"low-resource {mean(low):.1f} ({len(low)})")
    if high:
        parts.append(f"others {mean(high):.1f} ({len(high)})")
    for floor in ("majority", "chance"):  # each score beside its floors, averaged over the same languages
        values = [langs[k]["floor"][floor] for k in scores if (langs[k].get("floor") or {}).get(floor) is not None]
        if values:
            parts.append(f"{floor} floor {mean(values):.1f}")
    if record.get("missing"):
        parts.append(f"{len(record['missing'])} without data")
    return "; ".join(parts)
