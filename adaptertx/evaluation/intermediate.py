"""Intermediate configurations: what a zero-shot evaluation freezes under the target adapter.

``none`` (nothing), ``single`` (one task adapter), a one-adapter merge (``average``,
``task_arithmetic``, ``ties``, ``multitask``) or ``fusion`` (task adapters under a Fuse layer,
trained with each target or, from a ``merge --method fusion`` folder, already trained). Read
from run and merged folders through :mod:`adaptertx.rundir`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from adapters.composition import Fuse

from adaptertx import rundir
from adaptertx.errors import AdaptertxError
from adaptertx.merging.fusion import load_fusion_weights
from adaptertx.rundir import check_same_base, load_run, sha256_file


@dataclass(frozen=True)
class Intermediate:
    """An intermediate configuration, frozen under the target adapter.

    Attributes:
        method: ``none``, ``single`` (one task adapter), a weight-space merge (``average``,
            ``task_arithmetic``, ``ties``, ``multitask``) or ``fusion``.
        tasks: the intermediate tasks it was made from.
        adapters: AdapterHub adapter folders to load (one; several for a Fusion).
        fusion_dir: an ``adaptertx merge --method fusion`` setup folder to start the Fusion from.
        source: the run or merged folder it came from (``None`` for ``none``).
        fingerprint: the base the adapters were trained on (``None`` for ``none``).
    """

    method: str = "none"
    tasks: tuple[str, ...] = ()
    adapters: tuple[Path, ...] = ()
    fusion_dir: Path | None = None
    source: Path | None = None
    fingerprint: str | None = None

    def describe(self) -> dict:
        """A JSON-able description (for results and traces)."""
        return {"method": self.method, "tasks": list(self.tasks), "dir": str(self.source) if self.source else None,
                "adapters": [str(a) for a in self.adapters],
                "fusion_dir": str(self.fusion_dir) if self.fusion_dir else None}

    def checkpoints(self) -> list[dict]:
        """The weight files it loads, with their SHA-256."""
        files = []
        for folder in self.adapters + ((self.fusion_dir,) if self.fusion_dir else ()):
            for f in sorted(Path(folder).rglob("*.safetensors")):
                files.append({"role": "intermediate", "path": str(f), "sha256": sha256_file(f)})
        return files


NONE = Intermediate()


def load_intermediate(spec: str | os.PathLike | None) -> Intermediate:
    """The intermediate configuration in a folder: ``None``/``"none"``, a finished
    ``adaptertx train`` run, or an ``adaptertx merge`` folder (any method)."""
    if spec is None or str(spec) == "none":
        return NONE
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise AdaptertxError(f"intermediate configuration {spec!r}: no such folder (give 'none', a run folder or "
                             f"a merged folder)")
    folder = folder.resolve()
    recipe_file = folder / "recipe.json"
    if recipe_file.is_file():
        recipe = rundir.read_json(recipe_file, "expected a merge recipe")
        method = recipe.get("method")
        tasks = tuple(i.get("task") for i in recipe.get("inputs", [])) or tuple(recipe.get("tasks", ()))
        if method == "fusion":
            inputs = [load_run(rundir.input_dir(i, folder)) for i in recipe["inputs"]]
            return Intermediate("fusion", tuple(i.task for i in inputs), tuple(i.adapter_dir for i in inputs),
                                fusion_dir=folder / "adapter", source=folder, fingerprint=recipe.get("fingerprint"))
        if len(recipe.get("inputs", [])) == 1 and method in rundir.MERGE_METHODS:
            method = "single"
        if method not in rundir.ONE_ADAPTER and method != "single":
            raise AdaptertxError(f"{recipe_file}: unknown merge method {method!r}")
        if not (folder / "adapter" / "adapter_config.json").is_file():
            raise AdaptertxError(f"{folder} has a recipe but no adapter/adapter_config.json; the merge is incomplete")
        return Intermediate(method, tasks, (folder / "adapter",), source=folder, fingerprint=recipe.get("fingerprint"))
    inp = load_run(folder)
    return Intermediate("single", (inp.task,), (inp.adapter_dir,), source=folder, fingerprint=inp.fingerprint)


def fusion_of(run_dirs: list[str | os.PathLike]) -> Intermediate:
    """A Fusion over finished task-adapter runs (its Fuse layer is trained with each target)."""
    if len(run_dirs) < 2:
        raise AdaptertxError("a Fusion needs at least two task adapters")
    inputs = [load_run(d) for d in run_dirs]
    check_same_base(inputs)
    return Intermediate("fusion", tuple(i.task for i in inputs), tuple(i.adapter_dir for i in inputs),
                        source=None, fingerprint=inputs[0].fingerprint)




def load_into(model, inter: Intermediate):
    """Load ``inter`` into ``model``; returns the composition block the target stacks on."""
    if inter.method == "none":
        return None
    names = []
    for i, folder in enumerate(inter.adapters):
        name = f"inter{i}_{inter.tasks[i] if i < len(inter.tasks) else i}"
        try:
            model.load_adapter(str(folder), load_as=name, with_head=False, use_safetensors=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise AdaptertxError(f"could not load the adapter in {folder}: {str(e).splitlines()[0]}") from None
        names.append(name)
    if inter.method != "fusion":
        return names[0]
    fuse = Fuse(*names)
    model.add_adapter_fusion(fuse, config="dynamic")
    if inter.fusion_dir is not None:
        load_fusion_weights(model, inter.fusion_dir)
    return fuse
