"""Run and merged folders: the one place that writes and reads them.

A **run folder** is what training writes (``adaptertx train``, multi-task training, AdapterFusion
training, a zero-shot target adapter)::

    OUT/run.json          config, status ("running", then "finished"), base fingerprint, versions, scores
    OUT/metrics.jsonl     one JSON line per logged step and per evaluation
    OUT/adapter/          the trained adapter (and head) in the AdapterHub layout, safetensors
    OUT/checkpoints/      last.safetensors (resume state, one file) and best.safetensors

A **merged folder** (``adaptertx merge``) holds ``recipe.json`` (the method, inputs, weights),
``adapter/`` and ``heads/<task>/``; a trained merge (multitask, fusion) is a run folder too, and
its ``recipe.json`` is written last: a folder with a recipe is a finished merge.

:data:`METHODS` is the table of merge methods and what they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from adaptertx.environment import versions
from adaptertx.errors import AdaptertxError
from adaptertx.io import append_line, atomic_write_bytes, atomic_write_text, is_temporary, remove_dir, writing
from adaptertx.metrics import PRIMARY
from adaptertx.tasks import get_task

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.json"
METRICS_FILE = "metrics.jsonl"
ADAPTER_FILES = ("adapter_config.json", "adapter.safetensors")
HEAD_FILES = ("head_config.json", "model_head.safetensors")

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ methods


@dataclass(frozen=True)
class Method:
    """A way to make one intermediate configuration from task adapters.

    Attributes:
        name: the method's name (``adaptertx merge --method``, a study's ``method``).
        weight_space: it combines the adapters' weights (no training).
        trained: it trains (multi-task training, AdapterFusion).
        adapters: ``"one"`` when the result is one adapter, ``"several"`` when it keeps the task
            adapters (AdapterFusion).
        mergeable: ``adaptertx merge`` makes it (``none`` and ``single`` need no merging).
    """

    name: str
    weight_space: bool
    trained: bool
    adapters: str
    mergeable: bool = True


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("none", False, False, "none", mergeable=False),
    Method("single", False, False, "one", mergeable=False),
    Method("average", True, False, "one"),
    Method("task_arithmetic", True, False, "one"),
    Method("ties", True, False, "one"),
    Method("multitask", False, True, "one"),
    Method("fusion", False, True, "several"),
)}
#: The methods that average or otherwise combine weights (``--weights`` applies).
WEIGHT_SPACE = tuple(m.name for m in METHODS.values() if m.weight_space)
#: The methods ``adaptertx merge`` runs.
MERGE_METHODS = tuple(m.name for m in METHODS.values() if m.mergeable)
#: The methods whose result is one adapter.
ONE_ADAPTER = tuple(m.name for m in METHODS.values() if m.adapters == "one" and m.mergeable)


def method(name: str) -> Method:
    """The :class:`Method` called ``name``, or a clear error."""
    if name not in METHODS:
        raise AdaptertxError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


# ------------------------------------------------------------------------------ reading


def read_json(path: Path, what: str = "") -> dict:
    """A JSON file's object, or a one-line error for a missing or damaged one."""
    try:
        body = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdaptertxError(f"{path} does not exist{'; ' + what if what else ''}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdaptertxError(f"{path} is not valid JSON ({e}){'; ' + what if what else ''}") from None
    if not isinstance(body, dict):
        raise AdaptertxError(f"{path} does not hold a JSON object{'; ' + what if what else ''}")
    return body


def run_status(folder: Path) -> str | None:
    """The status a run folder records (``running``, ``finished``), or ``None`` without one."""
    run_file = Path(folder) / RUN_FILE
    return read_json(run_file).get("status") if run_file.is_file() else None


def finished_run(folder: Path, what: str = "run") -> dict:
    """``run.json`` of a finished run, or a clear error."""
    run = read_json(Path(folder) / RUN_FILE, f"expected a {what} folder")
    if run.get("status") != "finished":
        raise AdaptertxError(f"the {what} in {folder} is not finished (status {run.get('status')!r}); "
                             f"finish it first (`--resume`)")
    return run


def require_files(folder: Path, names: tuple[str, ...], what: str) -> None:
    """Refuse ``folder`` unless it holds every file of ``names``."""
    missing = [n for n in names if not (Path(folder) / n).is_file()]
    if missing:
        raise AdaptertxError(f"{folder} lacks {', '.join(missing)}: not a complete {what}")


def has_head(folder: Path) -> bool:
    """Whether an AdapterHub folder holds a prediction head."""
    return all((Path(folder) / f).is_file() for f in HEAD_FILES)


def load_tensors(path: str | os.PathLike) -> dict:
    """The tensors of a safetensors file, or a one-line error naming a missing or damaged file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise AdaptertxError(f"{path} does not exist: the folder is incomplete") from None
    except Exception as e:  # safetensors raises its own error types for damaged files
        text = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise AdaptertxError(f"{path} is damaged or not a safetensors file ({text}); make that folder again "
                             f"(--overwrite)") from None


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TrainedAdapter:
    """One finished training run's adapter, as merging and evaluation read it.

    Attributes:
        run_dir: the run folder; adapter_dir: its ``adapter/`` folder.
        task: the run's task; adapter_name: the adapter's (and head's) name in the files.
        fingerprint: the base model's fingerprint; model, quant: how the base was given and stored.
        adapter_seed: the adapter-init seed (``None`` when the run did not record one).
        adapter_config: the ``config`` block of ``adapter_config.json``; hidden_size: its hidden size.
        config: the run's whole training config.
    """

    run_dir: Path
    adapter_dir: Path
    task: str
    adapter_name: str
    fingerprint: str
    model: str
    quant: str
    adapter_seed: int | None
    adapter_config: dict
    hidden_size: int | None
    config: dict

    @property
    def has_head(self) -> bool:
        return has_head(self.adapter_dir)

    def record(self, where: Path, weight: float | None = None) -> dict:
        """What a recipe's ``inputs`` says of this run, written in the folder ``where``: the run
        folder relative to ``where`` (never an absolute local path), the base fingerprint and the
        SHA-256 of the adapter's weights."""
        return {"run_dir": relative(self.run_dir, where), "task": self.task, "adapter_name": self.adapter_name,
                "fingerprint": self.fingerprint,
                "adapter_sha256": sha256_file(self.adapter_dir / "adapter.safetensors"),
                "model": portable_model(self.model, where), "quant": self.quant,
                "adapter_seed": self.adapter_seed, **({"weight": weight} if weight is not None else {})}


def relative(path: str | os.PathLike, where: str | os.PathLike) -> str:
    """``path`` relative to the folder ``where`` (both resolved), as a recipe records an input."""
    return os.path.relpath(Path(path).resolve(), Path(where).resolve())


def portable_model(model: str | None, where: str | os.PathLike) -> str | None:
    """A base model as a record written in ``where`` names it: a known name or Hub id as given,
    a local folder relative to ``where``."""
    if model and os.path.isabs(os.path.expanduser(model)):
        return relative(os.path.expanduser(model), where)
    return model


def input_dir(record: dict, where: str | os.PathLike) -> Path:
    """The run folder a recipe's input ``record`` names (relative to the recipe's folder ``where``;
    older recipes hold absolute paths)."""
    return Path(os.path.normpath(Path(where) / record["run_dir"]))


def load_run(run_dir: str | os.PathLike) -> TrainedAdapter:
    """Read a finished ``adaptertx train`` run folder; clear errors for anything that is not one."""
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise AdaptertxError(f"{run_dir} is not a training run folder: it has no run.json")
    run = read_json(run_file)
    if run.get("status") != "finished":
        raise AdaptertxError(f"the run in {run_dir} is not finished (status {run.get('status')!r}); "
                             f"finish it with `adaptertx train --resume` first")
    adapter_dir = run_dir / "adapter"
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        raise AdaptertxError(f"{adapter_dir} lacks {', '.join(missing)}: expected an AdapterHub folder in safetensors")
    cfg = read_json(adapter_dir / "adapter_config.json")
    config = run.get("config") or {}
    if not run.get("fingerprint"):
        raise AdaptertxError(f"{run_file} records no base fingerprint; cannot check the inputs share a base")
    return TrainedAdapter(run_dir=run_dir, adapter_dir=adapter_dir, task=config.get("task", cfg.get("name")),
                          adapter_name=run.get("adapter_name") or cfg["name"], fingerprint=run["fingerprint"],
                          model=config.get("model", cfg.get("model_name")), quant=config.get("quant", "none"),
                          adapter_seed=config.get("adapter_seed"), adapter_config=cfg.get("config", {}),
                          hidden_size=cfg.get("hidden_size"), config=config)


def check_same_base(inputs: list[TrainedAdapter]) -> None:
    """Refuse adapters trained on different base models (fingerprints differ)."""
    prints = {i.fingerprint for i in inputs}
    if len(prints) > 1:
        listing = "; ".join(f"{i.run_dir} ({i.model}): {i.fingerprint}" for i in inputs)
        raise AdaptertxError(f"the adapters were trained on different base models (fingerprints differ): {listing}")


def read_recipe(folder: Path) -> dict:
    """A merged folder's ``recipe.json``, checked to name a known method."""
    recipe = read_json(Path(folder) / RECIPE_FILE, "expected a merge recipe")
    if recipe.get("method") is None:
        raise AdaptertxError(f"{Path(folder) / RECIPE_FILE} names no merge method")
    method(recipe["method"])
    return recipe


def kind(folder: str | os.PathLike) -> str:
    """``"merge"`` for a merged folder (it has a recipe), ``"run"`` for a training run, else a clear error."""
    root = Path(folder)
    if not root.is_dir():
        raise AdaptertxError(f"{root} is not a folder: expected a finished training run or a merged folder")
    if (root / RECIPE_FILE).is_file():
        return "merge"
    if (root / RUN_FILE).is_file():
        return "run"
    raise AdaptertxError(f"{root} is neither a training run folder (no run.json) nor a merged folder "
                         f"(no recipe.json)")


# ------------------------------------------------------------------------------ writing


#: What :func:`prepare` found: a new run, an unfinished one to restart from scratch (it never
#: checkpointed), or an unfinished one to continue from its last checkpoint.
NEW, RESTART, RESUME = "new", "restart", "resume"
CHECKPOINT = Path("checkpoints") / "last.safetensors"


def has_checkpoint(out: Path) -> bool:
    """Whether the run folder ``out`` holds a resume checkpoint (this layout's or the older ``last/``)."""
    return (out / CHECKPOINT).is_file() or (out / "checkpoints" / "last" / "progress.json").is_file()


def _holds_nothing(out: Path) -> bool:
    """Whether ``out`` is missing or holds only what an interrupted write leaves (temporary names)."""
    return not out.exists() or all(is_temporary(p.name) for p in out.iterdir())


def differs(config: dict, saved: dict) -> list[str]:
    """The keys in which two run configs differ; ``out`` is where the run is, not what it is."""
    keys = (set(config) | set(saved)) - {"out"}
    return sorted(k for k in keys if config.get(k) != saved.get(k))


def prepare(out: Path, config: dict, *, resume: bool = False, overwrite: bool = False,
            method: str | None = None) -> str:
    """What to do in ``out``: :data:`NEW` (empty or missing, or ``overwrite``), :data:`RESUME` (it
    holds this unfinished run and its checkpoint) or :data:`RESTART` (this unfinished run, killed
    before its first checkpoint: it starts again from scratch). Nothing is written.

    An unfinished run of the same config always continues, with or without ``resume``: the same
    command run again after a crash finishes the work. ``method`` is the merge method a trained
    merge records in ``run.json`` (``None`` for a single-task run); ``config`` is the run's config
    as ``run.json`` holds it (its ``out`` is not compared: a folder may be moved or named another way).
    A trained merge is finished when its ``recipe.json`` exists (it is written last).
    """
    run_file = out / RUN_FILE
    what = "merge" if method else "run"
    if out.exists() and not out.is_dir():
        raise AdaptertxError(f"{out} exists and is not a folder; choose another --out")
    if overwrite or _holds_nothing(out):
        if resume and not overwrite:
            log.info("nothing to resume in %s: starting the run", out)
        return NEW
    if not run_file.exists():
        if (out / RECIPE_FILE).exists():
            raise AdaptertxError(f"{out} already holds a merged model; pass --overwrite to replace it")
        raise AdaptertxError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    saved = read_json(run_file, "start again with --overwrite")
    if saved.get("method") != method:
        raise AdaptertxError(f"{out} holds no {method} run; choose another --out or pass --overwrite" if method else
                             f"{out} holds a {saved.get('method')} run, not a training run; choose another --out "
                             f"or pass --overwrite")
    finished = (out / RECIPE_FILE).exists() if method else saved.get("status") == "finished"
    if finished:
        if resume:
            raise AdaptertxError(f"{out} holds a finished {what}; nothing to resume (use --overwrite to train again)")
        raise AdaptertxError(f"{out} already holds a merged model; pass --overwrite to replace it" if method else
                             f"{out} already holds a finished run; pass --overwrite to replace it")
    diff = differs(config, saved.get("config") or {})
    if diff:
        raise AdaptertxError(f"{out} holds an unfinished {what} of a different config (differs in: "
                             f"{', '.join(diff)}); cannot resume it: pass --overwrite to start again, or choose "
                             f"another --out")
    if has_checkpoint(out):
        return RESUME
    log.info("%s holds an unfinished %s that never reached a checkpoint: starting it again", out, what)
    return RESTART


def write_run(out: Path, config: dict, status: str, *, method: str | None = None, **extra) -> None:
    """``run.json`` (atomically): the method (trained merges), config, status, versions and ``extra``."""
    body = {**({"method": method} if method else {}), "config": config, "status": status, "versions": versions(),
            **extra}
    atomic_write_text(out / RUN_FILE, json.dumps(body, indent=2) + "\n")


def sweep(out: Path) -> None:
    """Remove what interrupted writes left in the run folder ``out`` (temporary names), before it continues."""
    for folder in (out, out / "checkpoints"):
        for p in folder.iterdir() if folder.is_dir() else ():
            if is_temporary(p.name):
                remove_dir(p) if p.is_dir() else p.unlink(missing_ok=True)


def start(out: Path, config: dict, *, method: str | None = None, **extra) -> None:
    """Begin a new run in ``out`` (after :func:`prepare` said :data:`NEW` or :data:`RESTART`): clear
    what it holds, write ``run.json`` with status ``running`` and start an empty metrics log."""
    if _holds_nothing(out):
        sweep(out)
    else:  # an earlier run (overwritten, or started again): gone as a whole, even if killed meanwhile
        remove_dir(out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    write_run(out, config, "running", method=method, **extra)


def append_log(out: Path, record: dict) -> None:
    """One line of the run's metrics log."""
    append_line(out / METRICS_FILE, json.dumps(record))


def read_log(out: Path) -> list[dict]:
    """The run's metrics log; a line torn by a crash (the last one) is left out."""
    path = out / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        try:
            records.append(json.loads(line))
        except ValueError:  # a torn or empty line
            continue
    return records


def truncate_log(out: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be written again),
    and the final test line of a run killed while writing its results."""
    if not (out / METRICS_FILE).exists():
        return
    keep = [json.dumps(r) for r in read_log(out) if r.get("step", 0) <= step and "test" not in r]
    atomic_write_bytes(out / METRICS_FILE, ("\n".join(keep) + "\n" if keep else "").encode())


def write_recipe(out: Path, recipe: dict) -> None:
    """``recipe.json`` (atomically): the last file of a merge."""
    atomic_write_text(out / RECIPE_FILE, json.dumps(recipe, indent=2) + "\n")


# ------------------------------------------------------------------------------ summaries


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
