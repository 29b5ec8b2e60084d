"""Where a study's nodes run: in this process, on a Ray cluster, or as Slurm jobs through submitit.

Every executor has the same two calls the driver (:func:`adaptertx.study_graph.drive`) uses:
``submit(node, args, progress)`` returns a handle, and ``wait_any(handles)`` returns
``(handle, ("done", outcome))`` for a node whose worker ran it (``outcome`` is
:func:`adaptertx.study_graph.run_node`'s answer), ``(handle, ("lost", reason))`` for one whose
worker died or whose job was killed (the driver runs it again), or ``None`` when nothing finished
within about a second. The engines themselves (Ray, submitit) are optional extras, imported only
here and only when asked for.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from adaptertx.errors import AdaptertxError, import_optional
from adaptertx.study_graph import KINDS, run_node

log = logging.getLogger(__name__)

#: The executors ``adaptertx experiment --executor`` takes.
EXECUTORS = ("local", "ray", "slurm", "submitit-local")


def _node_task(args: tuple, progress: bool = False) -> dict:
    """A node run by an engine's worker (a plain module function, so every engine can pickle it)."""
    return run_node(*args, progress=progress)


class LocalExecutor:
    """In this process, one node at a time: intermediate adapters first, then merges, then cells
    (each kind in the graph's order), as a study has always run."""

    slots = 1  # one node runs at a time; the other submitted ones wait

    def __init__(self) -> None:
        self._queue: dict[int, tuple] = {}
        self._ids = itertools.count()

    def submit(self, node, args: tuple, progress: bool) -> int:
        handle = next(self._ids)
        self._queue[handle] = (KINDS.index(node.kind), handle, args, progress)
        return handle

    def wait_any(self, handles: list):
        _, handle, args, progress = min(self._queue[h] for h in handles)
        del self._queue[handle]
        return handle, ("done", _node_task(args, progress))

    def close(self) -> None:
        self._queue.clear()


class RayExecutor:
    """Each node a Ray task with its resources declared. With no ``address`` a local Ray
    cluster of ``workers`` CPUs (default: this machine's) starts by itself and stops at the end;
    ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) joins a running cluster."""

    def __init__(self, address: str | None = None, *, cpus_per_task: float = 1, gpus_per_task: float = 0,
                 workers: int | None = None) -> None:
        self.ray = import_optional("ray", "ray", "--executor ray")
        self.resources = {"num_cpus": cpus_per_task, "num_gpus": gpus_per_task}
        if address:
            _check_reachable(address)
        try:
            if address:
                self.ray.init(address=address, log_to_driver=False)
            else:
                self.ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise AdaptertxError(f"cannot start or join {where}: {str(e).splitlines()[0] if str(e) else e}") from None
        self._check_resources(cpus_per_task, gpus_per_task, joined=bool(address))
        self._task = self.ray.remote(_node_task)

    def _check_resources(self, cpus: float, gpus: float, joined: bool) -> None:
        """One clear line when no node of the cluster could ever run a task of this size (Ray would
        keep it pending for ever); only a warning for a joined cluster, whose autoscaler may add
        such nodes later."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
            return
        have = ", ".join(f"{r.get('CPU', 0):g} CPUs and {r.get('GPU', 0):g} GPUs" for r in nodes) or "no nodes"
        if joined:
            log.warning("no node of the Ray cluster has %g CPUs and %g GPUs for one task yet (its nodes have %s); "
                        "the nodes wait until the cluster has one", cpus, gpus, have)
            return
        self.ray.shutdown()
        raise AdaptertxError(f"no node of the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs for one task "
                             f"(--cpus-per-task, --gpus-per-task); its nodes have {have}")

    def submit(self, node, args: tuple, progress: bool):
        return self._task.options(name=node.key, max_retries=0, **self.resources).remote(args)

    def wait_any(self, handles: list):
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=1.0)
        if not ready:
            return None
        try:
            return ready[0], ("done", self.ray.get(ready[0]))
        except self.ray.exceptions.RayError as e:  # the worker died, its node left, the task was cancelled
            return ready[0], ("lost", _first_line(e))

    def close(self) -> None:
        self.ray.shutdown()


def _check_reachable(address: str) -> None:
    """One clear line when a ``HOST:PORT`` / ``ray://HOST:PORT`` address does not answer (Ray itself
    would retry for a minute and print a page)."""
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise AdaptertxError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=5).close()
    except OSError as e:
        raise AdaptertxError(f"cannot reach the Ray cluster at {address}: {e.strerror or e} (is it started, "
                             f"with `ray start --head`, and is the port open from here?)") from None


class SubmititExecutor:
    """Each node a job through submitit: on Slurm (``partition``, ``gpus_per_node``,
    ``cpus_per_task``, ``timeout_min``), or with ``local=True`` as local processes (submitit's
    own local executor, which behaves as Slurm does: a job per node, its logs in ``folder``)."""

    def __init__(self, folder: Path, *, local: bool = False, partition: str | None = None, gpus_per_node: int = 0,
                 cpus_per_task: int = 1, timeout_min: int = 240) -> None:
        self.submitit = import_optional("submitit", "slurm", "--executor slurm")
        if local:
            self.executor = self.submitit.LocalExecutor(folder=str(folder))
            self.executor.update_parameters(timeout_min=timeout_min, gpus_per_node=gpus_per_node,
                                            cpus_per_task=cpus_per_task)
        else:
            check_partition(partition)
            self.executor = self.submitit.AutoExecutor(folder=str(folder), cluster="slurm")
            self.executor.update_parameters(slurm_partition=partition, gpus_per_node=gpus_per_node,
                                            cpus_per_task=cpus_per_task, timeout_min=timeout_min,
                                            slurm_job_name="adaptertx")
        self._jobs: dict[int, object] = {}
        self._ids = itertools.count()

    def submit(self, node, args: tuple, progress: bool) -> int:
        try:
            job = self.executor.submit(_node_task, args)
        except Exception as e:  # sbatch refused the job: a wrong partition, account, limits
            raise AdaptertxError(f"could not submit {node.key}: {_first_line(e)}") from None
        handle = next(self._ids)
        self._jobs[handle] = job
        return handle

    def wait_any(self, handles: list):
        deadline = time.monotonic() + 1.0
        while True:
            for h in handles:
                job = self._jobs[h]
                if job.done():
                    del self._jobs[h]
                    try:
                        return h, ("done", job.result())
                    except Exception as e:  # killed, preempted, timed out, its process died
                        return h, ("lost", f"job {job.job_id}: {_first_line(e)}")
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def close(self) -> None:
        for job in self._jobs.values():
            job.cancel(check=False)
        self._jobs.clear()


def check_partition(partition: str | None) -> None:
    """One clear line unless Slurm's ``sinfo`` is here and knows ``partition``."""
    if not partition:
        raise AdaptertxError("--executor slurm needs --partition (the Slurm partition to run the nodes in)")
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        raise AdaptertxError("--executor slurm needs Slurm's commands (sinfo, sbatch) on this machine: run the study "
                             "from a login node of the cluster")
    done = subprocess.run([sinfo, "--noheader", "--format=%P"], capture_output=True, text=True, timeout=60)
    known = sorted({p.strip().rstrip("*") for p in done.stdout.split() if p.strip()})
    if done.returncode != 0:
        raise AdaptertxError(f"sinfo failed: {done.stderr.strip().splitlines()[0] if done.stderr.strip() else ''}")
    if partition not in known:
        raise AdaptertxError(f"no Slurm partition {partition!r} (partitions: {', '.join(known) or 'none'})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def make_executor(name: str, out: Path, *, address: str | None = None, cpus_per_task: float = 1,
                  gpus_per_task: float = 0, workers: int | None = None, partition: str | None = None,
                  timeout_min: int = 240):
    """The executor called ``name`` (one of :data:`EXECUTORS`) for the study folder ``out``."""
    if name not in EXECUTORS:
        raise AdaptertxError(f"unknown executor {name!r} (executors: {', '.join(EXECUTORS)})")
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, workers=workers)
    return SubmititExecutor(out / "jobs", local=name == "submitit-local", partition=partition,
                            gpus_per_node=int(gpus_per_task), cpus_per_task=max(1, int(cpus_per_task)),
                            timeout_min=timeout_min)
