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

Retrieval targets are scored without training (:mod:`adaptertx.evaluation.retrieval_targets`).
Every language's result holds its per-example counts (:func:`adaptertx.metrics.example_stats`),
so reports recompute scores and bootstrap intervals from the stored counts alone. Under a Fusion,
the result also holds the Fusion's attention over the task adapters per language and layer (per
gold label for classification targets), recorded while scoring (:mod:`adaptertx.fusion_attention`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import torch
from adapters.composition import Fuse, Stack

from adaptertx import data, rundir
from adaptertx.data.remote import hub_source, load_remote, remote_splits
from adaptertx.environment import resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation.common import (
    EvalConfig,
    EvalResult,
    LanguageResult,
    ids_sha,
    is_low,
    own_sets,
    progress_bar,
    rounded,
    trace,
)
from adaptertx.evaluation.intermediate import NONE, Intermediate, load_into
from adaptertx.evaluation.retrieval_targets import evaluate_retrieval
from adaptertx.floors import chance, floors, learned
from adaptertx.fused_fusion import enable_fused_fusion, fast_fusion_attention
from adaptertx.fusion_attention import record_fusion_attention
from adaptertx.kernels.dropout import use_fast_dropout
from adaptertx.languages import normalize
from adaptertx.merging.fusion import fusion_regulariser
from adaptertx.metrics import PRIMARY, example_stats, stats_score, stats_sums
from adaptertx.modeling import BuiltModel, adapter_config, add_head, load_base, to_base_device
from adaptertx.models import fingerprint, hub_reachable
from adaptertx.tasks import Task, get_task
from adaptertx.training import TrainConfig, train_one_task
from adaptertx.training.data import encode, english_splits, subset
from adaptertx.training.loop import load_best
from adaptertx.training.scoring import predict

log = logging.getLogger(__name__)

TARGET_NAME = "target"


def eval_sets(task: Task, config: EvalConfig) -> tuple[dict[str, tuple[list[dict], str, str]], dict[str, str]]:
    """``{lang: (rows, split, source)}`` to evaluate and ``{lang: why not}`` for the rest.

    ``source`` is ``"bundled"``, the user's file, or ``"hub:<dataset>/<config>"`` for a language
    the bundled data lacks, loaded from the Hub when it is reachable.
    """
    own = own_sets(task, config)
    wanted = list(config.languages) if config.languages else None
    bundled = data.available(task.bundled)[task.bundled] if task.bundled else {}
    if wanted is None:
        wanted = list(dict.fromkeys([*task.languages, *own]))
    sets, missing = {}, {}
    hub = task.hub.dataset or task.hub.note
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
                raise AdaptertxError(f"unknown language {lang!r} for {task.name}; "
                                     f"give its file with --data-file") from None
            if code not in task.languages and code not in own:
                raise AdaptertxError(f"task {task.name!r} has no language {lang!r}; its languages are "
                                     f"{', '.join(task.languages)} (others need --data-file)")
        if code in own:
            rows, path = own[code]
            sets[code] = (subset(rows, config.max_eval_examples), "file", path)
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
                sets[code] = (subset(rows, config.max_eval_examples), split, f"hub:{hub_source(task.name, code)}")
                continue
        if split is None:
            where = f"the Hub ({hub})" if task.hub.dataset else (hub or "the public release")
            missing[code] = (f"no bundled {task.name} data for {code}" if task.bundled else
                             f"{task.name} is not bundled") + f"; it is in {where}, or pass --data-file"
            continue
        rows = data.load(task.bundled, code, split)
        sets[code] = (subset(rows, config.max_eval_examples), split, "bundled")
    return sets, missing


def entity_types(labels) -> set[str]:
    return {lab[2:] for lab in labels if lab != "O"}


def restrict(tags: list[str], keep: set[str]) -> list[str]:
    return [t if t == "O" or t[2:] in keep else "O" for t in tags]


def build_target_model(config: EvalConfig, inter: Intermediate, train_task: Task, *,
                       device: str | torch.device | None = "auto"):
    """The base with ``inter`` frozen and a new target adapter + head for ``train_task`` on
    top, all on ``device``; only the target adapter, the head (and a Fusion layer) train."""
    adapter_cfg = adapter_config(config.adapter)
    model, tokenizer = load_base(config.model, config.quant, device=device)
    base_print = fingerprint(model.base_model)
    if inter.fingerprint is not None and inter.fingerprint != base_print:
        raise AdaptertxError(f"the intermediate adapters in {inter.source or inter.adapters[0]} were trained on "
                             f"another base (fingerprint {inter.fingerprint}) than {config.model!r} ({base_print})")
    block = load_into(model, inter)
    torch.manual_seed(config.adapter_seed)
    model.add_adapter(TARGET_NAME, config=adapter_cfg)
    add_head(model, train_task, TARGET_NAME)
    to_base_device(model)
    model.train_adapter(TARGET_NAME)
    if block is not None:
        model.active_adapters = Stack(block, TARGET_NAME)
    if isinstance(block, Fuse):
        fast_fusion_attention(model)
        for name, p in model.named_parameters():
            if "adapter_fusion_layer" in name:
                p.requires_grad_(True)
    use_fast_dropout(model)  # the head's and the Fusion layer's dropout (the base's has it from load_base)
    model.active_head = TARGET_NAME
    return BuiltModel(model, tokenizer, TARGET_NAME, base_print, autocast=config.quant != "none")


def evaluate(config: EvalConfig, inter: Intermediate = NONE, out: str | os.PathLike = "runs/eval", *,
             progress: bool = True, device: str | torch.device | None = "auto") -> EvalResult:
    """Train the target adapter on English over ``inter`` (in the run folder ``out``; a
    finished run there is reused, an interrupted one resumed) and evaluate zero-shot on every
    language of ``config.target``, on ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``:
    :func:`adaptertx.environment.resolve_device`; recorded in the result's trace)."""
    task = get_task(config.target)
    start = time.time()
    device = resolve_device(device)
    if task.family == "retrieval":
        return _with_chance(task, evaluate_retrieval(config, inter, task, start, progress, device=device))
    sets, missing = eval_sets(task, config)
    if not sets:
        raise AdaptertxError(f"no data to evaluate {task.name} on: "
                             + "; ".join(f"{k}: {v}" for k, v in missing.items()))
    train_task = get_task(task.english_train)
    built = _train_target(config, inter, train_task, Path(out), progress, device)
    train_rows = english_splits(train_task, config.max_examples)[0]  # the majority floor's labels

    notes = []
    keep = None
    if task.metric == "entity_f1" and set(task.labels or ()) != set(train_task.labels or ()):
        keep = entity_types(task.labels) & entity_types(train_task.labels)
        notes.append(f"entity types scored: {', '.join(sorted(keep))} (those of both {train_task.name} and "
                     f"{task.name}; other types count as O in gold and predictions)")
    results = {}
    attention = {}
    with _fused_inference(built.model), _attention_recorder(built.model) as recorder:
        preds_by_lang = {}
        for lang, (rows, _, _) in progress_bar(sets.items(), progress, f"zero-shot {task.name}"):
            encodable = [_placeholder_labels(train_task, r) for r in rows]
            features = encode(train_task, encodable, built.tokenizer, config.max_length, f"{lang} test")
            with recorder.collect(_gold_labels(task, rows, features)) if recorder else contextlib.nullcontext():
                preds_by_lang[lang] = predict(built, train_task, features, batch_size=config.batch_size * 4)
            if recorder:
                attention[lang] = recorder.take()
    for lang, (rows, split, source) in sets.items():
        preds = preds_by_lang[lang]
        gold = rows
        if keep is not None:
            preds = [restrict(p, keep) for p in preds]
            gold = [dict(r, tags=restrict(r["tags"], keep)) for r in rows]
        stats = example_stats(task, preds, gold, lang=lang)
        scores = stats_score(task, stats_sums(stats))
        floor = rounded(floors(task, gold, train_rows, lang=lang))
        results[lang] = LanguageResult(rounded(scores), len(rows), is_low(lang, config), split, source, stats,
                                       ids_sha(rows), floor)
    record = trace(config, inter, built.fingerprint, Path(out), start, device=device)
    fusion_attention = None
    if attention:
        fusion_attention = {"adapters": list(inter.tasks), "layers": recorder.layers, "languages": attention}
    return EvalResult(task.name, task.metric, PRIMARY[task.metric], results, missing, record, notes,
                      target_learned(Path(out)), fusion_attention)


def _attention_recorder(model):
    """A :class:`adaptertx.fusion_attention.FusionAttention` for the model's Fuse (a no-op
    context without one)."""
    recorder = record_fusion_attention(model)
    return recorder if recorder is not None else contextlib.nullcontext()


def _gold_labels(task: Task, rows: list[dict], features) -> list[str] | None:
    """Classification targets: each encoded row's gold label (the Fusion's attention is also
    recorded per label); ``None`` otherwise."""
    if task.family != "classification":
        return None
    label = {str(r["id"]): str(r["label"]) for r in rows}
    return [label[str(i)] for i in features.example_ids]


def _with_chance(task: Task, result: EvalResult) -> EvalResult:
    """Tatoeba's floor: chance, one right sentence among the language's ``n`` candidates."""
    if task.metric != "retrieval_accuracy":
        return result
    langs = {k: dataclasses.replace(v, floor=rounded({"majority": None, "chance": chance(task, candidates=v.n)}))
             for k, v in result.languages.items()}
    return dataclasses.replace(result, languages=langs)


def target_learned(out: Path) -> dict | None:
    """The target run's English held-out score against its majority floor, from its ``run.json``
    (:func:`adaptertx.floors.versus_floor`), with ``"learned"`` (``None``: not recorded)."""
    versus = rundir.read_json(out / rundir.RUN_FILE).get("test_vs_majority")
    if not isinstance(versus, dict) or "low" not in versus:
        return {"learned": None, "why": "the target run recorded no comparison with its floor"}
    return {**versus, "split": "test", "learned": learned(versus)}


def _fused_inference(model):
    """:func:`adaptertx.fused_fusion.enable_fused_fusion` for the Fuse of the model's active setup
    (``Stack(Fuse(...), target)``): all task adapters of a layer in one GEMM at inference,
    outputs equal to the library's. A no-op context without a Fuse (or one the fused path
    cannot run, said in the log)."""
    setup = model.active_adapters
    fuse = next((c for c in getattr(setup, "children", ()) if isinstance(c, Fuse)), None)
    if fuse is None:
        return contextlib.nullcontext()
    try:
        return enable_fused_fusion(model, fuse)
    except AdaptertxError as e:
        log.info("zero-shot predictions run the adapters library's Fusion forward: %s", e)
        return contextlib.nullcontext()


def _placeholder_labels(train_task: Task, row: dict) -> dict:
    """``row`` with labels the training task's head knows (gold stays in the original row)."""
    if train_task.family == "tagging":
        return dict(row, tags=[train_task.labels[0]] * len(row["tags"]))
    if train_task.family == "classification":
        return dict(row, label=train_task.labels[0])
    return row


def _train_target(config: EvalConfig, inter: Intermediate, train_task: Task, out: Path, progress: bool,
                  device: torch.device):
    """Train (or resume, or reload) the target adapter; returns the model with the best weights."""
    tcfg = TrainConfig(task=train_task.name, model=config.model, out=str(out), adapter=config.adapter,
                       quant=config.quant, adapter_seed=config.adapter_seed, **config.training_json())
    holder = {}

    def build() -> BuiltModel:
        holder["built"] = build_target_model(config, inter, train_task, device=device)
        return holder["built"]

    def save(model, built: BuiltModel, folder: Path) -> None:
        model.save_adapter_setup(str(folder), model.active_adapters, head_setup=TARGET_NAME, use_safetensors=True)

    # What the target run is trained over: the frozen weights by SHA-256 (folders may move).
    info = {"intermediate": inter.describe(), "intermediate_sha256": [c["sha256"] for c in inter.checkpoints()],
            "target": config.target}
    status = rundir.run_status(out)
    if status is not None:
        saved = rundir.read_json(out / rundir.RUN_FILE)
        differs = rundir.differs(tcfg.to_json(), saved.get("config") or {})
        key = "intermediate_sha256" if "intermediate_sha256" in saved else "intermediate"  # older runs: folders
        if saved.get(key) != info[key]:
            differs.append("intermediate")
        if differs:
            raise AdaptertxError(f"{out} holds a{' finished' if status == 'finished' else 'n unfinished'} target run "
                                 f"of another configuration (differs in: {', '.join(differs)}); choose another "
                                 f"--out")
    if status == "finished":
        built = build()
        load_best(out, built.model)
        return built
    # AdapterFusion's value-matrix regulariser (the Fuse under a target is a dynamic one). An
    # unfinished run continues from its last checkpoint, or from scratch when it never reached one.
    extra_loss = fusion_regulariser("dynamic") if inter.method == "fusion" else None
    train_one_task(tcfg, train_task, build, save, run_info=info, extra_loss=extra_loss, progress=progress)
    return holder["built"]
