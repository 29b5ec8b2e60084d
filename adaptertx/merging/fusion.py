"""AdapterFusion (Pfeiffer et al., 2021, EACL): task adapters, frozen, under a learnt ``Fuse`` layer.

:func:`merge_fusion` trains the Fusion layer and a new head on one target task's English data
(:func:`adaptertx.training.train_one_task`: resume, checkpoints, best epoch, scores), or, with
``target="mixture"``, on a mixture of the inputs' own English tasks, each batch through the head
its run saved (:func:`adaptertx.training.train_mixture`: the multi-task loop and sampling).

The folder is a training run folder (run.json, metrics.jsonl, checkpoints/) plus ``recipe.json``;
its ``adapter/`` holds the whole setup as ``adapters``' ``save_adapter_setup`` writes it (one
folder per task adapter, the fusion, the head, ``adapter_setup.json``; reload with
``model.load_adapter_setup(OUT/adapter, use_safetensors=True)``). On the mixture, ``adapter/``
holds the adapters, each with its task's head as trained under the Fusion, and the Fusion (no
active head), and ``heads/<task>/`` every task's head as for the other methods.

The Fusion's attention runs as one GEMM per layer in training (:func:`adaptertx.fused_fusion.fast_fusion_attention`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from adapters.composition import Fuse

from adaptertx import rundir
from adaptertx.errors import AdaptertxError
from adaptertx.fused_fusion import fast_fusion_attention
from adaptertx.io import atomic_dir
from adaptertx.merging.common import (
    MIXTURE,
    MergeOptions,
    MergeResult,
    adapter_config_name,
    adapter_seed,
    recipe,
    unique_names,
)
from adaptertx.modeling import BuiltModel, add_head, load_base_checked, to_base_device
from adaptertx.rundir import TrainedAdapter, check_same_base
from adaptertx.settings import FUSION
from adaptertx.tasks import get_task
from adaptertx.training import MultitaskConfig, TrainConfig, train_mixture, train_one_task
from adaptertx.training.data import english_splits

FUSION_CONFIGS = ("dynamic", "static")


def fusion_regulariser(fusion_config: str):
    """The extra loss of a Fusion's training: ``adapters``' value-matrix regularisation (dynamic
    Fusion), ``None`` for a static one."""
    if fusion_config != "dynamic":
        return None
    return lambda model: model.get_fusion_regularization_loss()


def _check_labels(task, rows: list[dict]) -> None:
    """Refuse a fusion dataset whose examples carry no labels."""
    field = {"classification": "label", "multiple_choice": "label", "extractive_qa": "answers",
             "tagging": "tags"}.get(task.family)
    unlabelled = [r for r in rows if field is None or r.get(field) in (None, "", [], {})]
    if unlabelled and (task.family != "extractive_qa" or len(unlabelled) == len(rows)):
        raise AdaptertxError(f"the fusion dataset ({task.name}, English training split) has no labels: "
                             f"{len(unlabelled)} of {len(rows)} examples lack {field!r}; AdapterFusion is trained "
                             f"on labelled data")


def _fusion_model(model_name: str, quant: str, seed: int, inputs: list[TrainedAdapter], names: list[str], fuse,
                  fusion_config: str, heads: bool = False, device: str | torch.device = "auto"):
    """(model, tokenizer, base fingerprint): the base with the inputs' adapters as ``names``
    (and, with ``heads``, each run's head named by its task) and a new AdapterFusion ``fuse``
    (initialised from ``seed``, with the one-GEMM fusion attention), on the base the adapters
    were trained on (refused otherwise), all on ``device``."""
    model, tokenizer, base_print = load_base_checked(model_name, quant, inputs[0].fingerprint, device=device)
    for inp, name in zip(inputs, names, strict=True):
        model.load_adapter(str(inp.adapter_dir), load_as=name, with_head=False, use_safetensors=True)
        if heads:
            model.load_head(str(inp.adapter_dir), load_as=inp.task, use_safetensors=True)
    torch.manual_seed(seed)
    model.add_adapter_fusion(fuse, config=fusion_config)
    to_base_device(model)
    fast_fusion_attention(model)
    return model, tokenizer, base_print


def _config_kwargs(inputs: list[TrainedAdapter], options: MergeOptions) -> dict:
    """The base, adapter and training settings a Fusion over ``inputs`` trains with."""
    settings = options.settings or FUSION
    return {"model": inputs[0].model, "quant": options.quant or inputs[0].quant,
            "adapter": adapter_config_name(inputs[0]), "adapter_seed": adapter_seed(inputs[0]),
            **settings.training_json()}


def merge_fusion(inputs: list[TrainedAdapter], out: Path, options: MergeOptions, overwrite: bool, *,
                 resume: bool = False) -> MergeResult:
    """AdapterFusion over the inputs, trained on ``options.target``'s English data (or the mixture)."""
    if options.weights is not None:
        raise AdaptertxError("--weights applies to weight-space merges; AdapterFusion learns its own weighting")
    if options.target is None:
        raise AdaptertxError("AdapterFusion needs --target TASK (the task whose English data trains the fusion) "
                             "or --target mixture (the inputs' own tasks)")
    if options.fusion_config not in FUSION_CONFIGS:
        raise AdaptertxError(f"unknown fusion config {options.fusion_config!r}; choose dynamic or static")
    check_same_base(inputs)
    if options.target == MIXTURE:
        return _fusion_on_mixture(inputs, out, options, overwrite, resume)
    task = get_task(options.target)
    names = unique_names(inputs)
    fuse = Fuse(*names)
    head = options.name or f"fusion_{task.name}"
    if head in names:
        raise AdaptertxError(f"the fusion's head name {head!r} is also an adapter's name; pass another --name")
    config = TrainConfig(task=task.name, out=str(out), **_config_kwargs(inputs, options))
    train_rows, _, _ = english_splits(task, config.max_examples)
    _check_labels(task, train_rows)
    info = {"fusion": {"inputs": [rundir.relative(i.run_dir, out) for i in inputs], "adapters": names,
                       "fusion_config": options.fusion_config, "head": head}}
    if (out / rundir.RECIPE_FILE).exists() and not overwrite:
        raise AdaptertxError(f"{out} already holds a merged model; pass --overwrite to replace it")
    saved = rundir.read_json(out / rundir.RUN_FILE) if (out / rundir.RUN_FILE).is_file() and not overwrite else None
    if saved is not None and saved.get("fusion") != info["fusion"]:
        raise AdaptertxError(f"{out} holds an unfinished AdapterFusion of other inputs or settings; cannot resume "
                             f"it: pass --overwrite to start again, or choose another --out")

    def build() -> BuiltModel:
        model, tokenizer, base_print = _fusion_model(config.model, config.quant, config.adapter_seed, inputs, names,
                                                     fuse, options.fusion_config, device=options.device)
        add_head(model, task, head)
        to_base_device(model)
        model.train_adapter_fusion(fuse)
        for p in model.heads[head].parameters():
            p.requires_grad_(True)
        model.active_head = head
        return BuiltModel(model, tokenizer, head, base_print, autocast=config.quant != "none")

    def save(model, built: BuiltModel, folder: Path) -> None:
        model.save_adapter_setup(str(folder), fuse, head_setup=head, use_safetensors=True)

    if saved is not None and saved.get("status") == "finished" and rundir.differs(config.to_json(), saved["config"]) \
            == []:  # trained, killed before its recipe was written: write it
        validation, test = saved.get("validation"), saved.get("test")
    else:
        result = train_one_task(config, task, build, save, run_info=info,
                                extra_loss=fusion_regulariser(options.fusion_config), resume=resume,
                                overwrite=overwrite, progress=options.progress)
        validation, test = result.validation, result.test
    body = recipe("fusion", inputs, None, None, head, where=out, target=task.name, adapters=names,
                  fusion_config=options.fusion_config, seed=config.seed, adapter_seed=config.adapter_seed,
                  train=config.to_json(), validation=validation, test=test,
                  layout="adapter/ holds the setup written by save_adapter_setup: load it with "
                         "model.load_adapter_setup(<out>/adapter, use_safetensors=True)")
    rundir.write_recipe(out, body)
    return MergeResult(out, body, head)


def _fusion_on_mixture(inputs: list[TrainedAdapter], out: Path, options: MergeOptions, overwrite: bool,
                       resume: bool) -> MergeResult:
    """AdapterFusion trained on the inputs' own English tasks at once, each batch through the
    head its run saved."""
    tasks = [i.task for i in inputs]
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise AdaptertxError(f"a Fusion on the task mixture takes one run per task; {', '.join(twice)} "
                             f"{'is' if len(twice) == 1 else 'are'} given twice")
    for i in inputs:
        if not i.has_head:
            raise AdaptertxError(f"the {i.task} run in {i.run_dir} saved no head; a Fusion on the task mixture "
                                 f"scores every task through its own head")
    names = unique_names(inputs)
    fuse = Fuse(*names)
    name = options.name or "fusion_mixture"
    if name in names:
        raise AdaptertxError(f"the fusion's name {name!r} is also an adapter's name; pass another --name")
    runs = [i.record(out) for i in inputs]
    if (out / rundir.RUN_FILE).is_file() and not overwrite:
        saved = rundir.read_json(out / rundir.RUN_FILE).get("inputs")
        if saved is not None and [r.get("adapter_sha256", r["run_dir"]) for r in saved] != [
                r.get("adapter_sha256", r["run_dir"]) for r in runs]:
            raise AdaptertxError(f"{out} holds an AdapterFusion of other inputs; cannot resume it: pass --overwrite "
                                 f"to start again, or choose another --out")
    config = MultitaskConfig(tasks=tuple(tasks), out=str(out), sampling=options.sampling,
                             temperature=options.temperature, name=name, **_config_kwargs(inputs, options))

    def build(task_list) -> BuiltModel:
        model, tokenizer, base_print = _fusion_model(config.model, config.quant, config.adapter_seed, inputs, names,
                                                     fuse, options.fusion_config, heads=True, device=options.device)
        model.train_adapter_fusion(fuse)
        for task in task_list:
            for p in model.heads[task.name].parameters():
                p.requires_grad_(True)
        return BuiltModel(model, tokenizer, name, base_print, autocast=config.quant != "none")

    def save(model, folder: Path) -> dict[str, str]:
        with atomic_dir(folder / "heads") as tmp:
            for task in config.tasks:
                model.save_head(str(tmp / task), task, use_safetensors=True)
        with atomic_dir(folder / "adapter") as tmp:
            model.save_adapter_setup(str(tmp), fuse, use_safetensors=True)
        return {task: f"heads/{task}" for task in config.tasks}

    extra = {"target": MIXTURE, "adapters": names, "fusion_config": options.fusion_config,
             "layout": "adapter/ holds the adapters (each with its task's head) and the Fusion "
                       "(save_adapter_setup, no active head); heads/<task>/ each task's head"}
    result = train_mixture(config, build, save, method="fusion", recipe_extra=extra,
                           extra_loss=fusion_regulariser(options.fusion_config), resume=resume, overwrite=overwrite,
                           progress=options.progress, runs=runs, base_fingerprint=inputs[0].fingerprint)
    return MergeResult(out, result.recipe, name)


def load_fusion_weights(model, fusion_dir: Path) -> None:
    """Copy the Fusion layers saved in ``fusion_dir`` (a fusion folder's setup) into ``model``'s
    Fusion, matched by layer; a clear error when they do not fit."""
    files = sorted(Path(fusion_dir).rglob("*fusion*.safetensors"))
    if not files:
        raise AdaptertxError(f"{fusion_dir} holds no Fusion weights (adapter_fusion*.safetensors)")
    state = rundir.load_tensors(files[0])
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
        raise AdaptertxError(f"the Fusion in {fusion_dir} does not fit these adapters "
                             f"({loaded} of {len(own)} tensors matched)")
