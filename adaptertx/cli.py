"""The ``adaptertx`` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import json
import sys
from functools import wraps

import click
from tabulate import tabulate

from adaptertx.errors import AdaptertxError
from adaptertx.io import write_error
from adaptertx.settings import ADAPTER, ADAPTER_SEED, DEFAULT_MODEL, QUANT, QUANT_MODES, TARGET, TRAIN


def _clear_errors(fn):
    """Turn an :class:`AdaptertxError` into a one-line message and exit status 1."""

    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AdaptertxError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # a write or read the library did not name (a full disk, no permission)
            clear = write_error(e, e.filename or "a file")
            if clear is None and e.filename is None:
                raise
            raise click.ClickException(str(clear or f"{e.filename}: {e.strerror}")) from None

    return run


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _counts(value: str, flag: str) -> list[int]:
    try:
        counts = [int(v) for v in _csv(value) or []]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"expected positive whole numbers separated by commas, got {value!r}",
                                 param_hint=flag)
    return counts


_QUANT_HELP = "Base storage: adaptertx int8 (bf16 compute), bitsandbytes LLM.int8, bf16, or fp32."
_DEVICE_HELP = "Where to run: auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N."


def _device_option(note: str = ""):
    """``--device``, passed to the library as typed (the library resolves and checks it)."""
    return click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
                        help=_DEVICE_HELP + note)
_SETTING_TYPES = {"int": int, "float": float, "bool": bool, "int | None": int, "float | None": float}


def _training_options(defaults=None, skip: tuple[str, ...] = (), what: str = ""):
    """One click option per :class:`adaptertx.settings.TrainSettings` field, help text from the
    field. With ``defaults`` (a settings instance) each option shows and takes its default; without,
    options are unset unless given (``None``: the library's preset for the method applies)."""
    import dataclasses

    from adaptertx.settings import TrainSettings

    def decorate(fn):
        for f in reversed(dataclasses.fields(TrainSettings)):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            help_text = what + f.metadata["help"]
            kind = _SETTING_TYPES[f.type]
            if kind is bool:
                fn = click.option(flag, f.name, is_flag=True, default=None, help=help_text)(fn)
            elif defaults is not None:
                default = getattr(defaults, f.name)
                fn = click.option(flag, f.name, type=kind, default=default, show_default=default is not None,
                                  help=help_text)(fn)
            else:
                fn = click.option(flag, f.name, type=kind, default=None, help=help_text)(fn)
        return fn

    return decorate


def _given_settings(kwargs: dict) -> dict:
    """Pop the training options from a command's ``kwargs``; returns the ones that were set."""
    from adaptertx.settings import names

    popped = {n: kwargs.pop(n) for n in names() if n in kwargs}
    return {n: v for n, v in popped.items() if v is not None}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adaptertx")
def main() -> None:
    """adaptertx: English intermediate-task adapters on a frozen 8-bit encoder, merged and
    evaluated zero-shot across languages (low-resource languages reported apart)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("adaptertx").setLevel(logging.INFO)
    # Library chatter that is no news to a user: bitsandbytes' optional CPU 4-bit kernel
    # package, its per-call fp16 cast notice, and adapters' note before an adapter is active.
    # huggingface_hub's retry notices come before the one-line error a missing model gives.
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions", "adapters.model_mixin",
                 "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_clear_errors
def env(as_json: bool) -> None:
    """Versions, device and which kernel backends are active (and why)."""
    from adaptertx.environment import describe

    info = describe()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for section, values in info.items():
        click.echo(f"{section}:")
        width = max((len(k) for k in values), default=0)
        for key, value in values.items():
            click.echo(f"  {key:<{width}}  {value}")


@main.command()
def models() -> None:
    """Models adaptertx knows by name (any local folder or Hub id works too)."""
    from adaptertx.models import MODELS

    rows = [(("* " if s.name == DEFAULT_MODEL else "  ") + s.name, s.source, s.layers, s.hidden,
             s.params_m, s.retrieval_layer, s.note) for s in MODELS.values()]
    click.echo(tabulate(rows, headers=["name", "source", "layers", "hidden", "params (M)",
                                       "retrieval layer", "note"]))
    click.echo("\n* default. Also accepted: a local folder with a saved Hugging Face encoder, or a Hub id.")


@main.command("tasks")
@click.option("--family", type=click.Choice(["classification", "multiple_choice", "extractive_qa",
                                             "tagging", "retrieval"]), help="Only this family.")
@click.option("--role", type=click.Choice(["intermediate", "target"]), help="Only this role.")
@_clear_errors
def tasks_cmd(family: str | None, role: str | None) -> None:
    """The task registry: languages, low-resource marks and what is available offline."""
    from adaptertx import data
    from adaptertx.tasks import tasks as list_tasks

    bundled = data.available()
    rows = []
    for t in list_tasks(family, role):
        offline = bundled.get(t.bundled, {}) if t.bundled else {}
        if offline:
            sizes = {}
            for splits in offline.values():
                for split, n in splits.items():
                    sizes[split] = sizes.get(split, 0) + n
            avail = f"{len(offline)} lang: " + " ".join(f"{s}={n}" for s, n in sizes.items())
        else:
            avail = "Hub only" if t.hub.dataset else "user files"
        low = ",".join(t.low_resource) if len(t.low_resource) <= 6 else \
            ",".join(t.low_resource[:6]) + f",… ({len(t.low_resource)})"
        rows.append((t.name, t.role, t.family, t.metric, len(t.languages), low or "-", avail))
    click.echo(tabulate(rows, headers=["task", "role", "family", "metric", "langs", "low-resource",
                                       "offline (bundled)"]))
    click.echo("\nlow-resource: under 5 GiB of XLM-R pretraining text (CC-100; Conneau et al. 2020, "
               "Table 6) or none.")


@main.group()
def data() -> None:
    """Inspect the bundled data."""


@data.command("show")
@click.argument("task")
@click.option("--lang", default="en", show_default=True, help="Language code.")
@click.option("--split", default=None, help="Split (default: test, else the first available).")
@click.option("-n", "count", default=3, show_default=True, help="How many examples.")
@_clear_errors
def data_show(task: str, lang: str, split: str | None, count: int) -> None:
    """Print a few examples of TASK in one language."""
    from adaptertx import data as bundled_data
    from adaptertx.tasks import get_task

    t = get_task(task)
    code = t.check_language(lang)
    if not t.bundled:
        raise AdaptertxError(f"task {t.name!r} has no bundled data; "
                             f"{t.hub.note or 'its source is the Hub: ' + str(t.hub.dataset)}")
    langs = bundled_data.available(t.bundled)[t.bundled]
    if code not in langs:
        raise AdaptertxError(f"task {t.name!r} has no bundled data for {code!r}; bundled: {', '.join(sorted(langs))}")
    split = split or ("test" if "test" in langs[code] else next(iter(langs[code])))
    rows = bundled_data.load(t.bundled, code, split)
    click.echo(f"{t.name} · {code} · {split}: {len(rows)} examples"
               + (" (low-resource)" if code in t.low_resource else ""))
    for row in rows[:count]:
        click.echo(json.dumps(row, ensure_ascii=False))


@main.command("train")
@click.argument("task")
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True,
              help="Base model name, folder or Hub id.")
@click.option("--adapter", default=ADAPTER, show_default=True,
              help="adapters config: seq_bn, double_seq_bn, par_bn, lora, ia3, ...")
@click.option("--quant", type=click.Choice(QUANT_MODES), default=QUANT, show_default=True, help=_QUANT_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@_training_options(TRAIN)
@click.option("--adapter-seed", default=ADAPTER_SEED, show_default=True,
              help="Adapter/head initialisation (keep one per base).")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in --out.")
@click.option("--overwrite", is_flag=True, help="Replace what --out holds.")
@_device_option()
@_clear_errors
def train_cmd(task, model_name, adapter, quant, out, adapter_seed, resume, overwrite, device, **options):
    """Train one adapter + head for TASK's English data on a frozen base."""
    from adaptertx.training import TrainConfig, train

    config = TrainConfig(task=task, model=model_name, out=out, adapter=adapter, quant=quant, adapter_seed=adapter_seed,
                         **_given_settings(options))
    result = train(config, resume=resume, overwrite=overwrite, device=device)
    fmt = lambda d: ", ".join(f"{k} {v:.1f}" for k, v in d.items())  # noqa: E731
    click.echo(f"{task}: best epoch {result.best_epoch}; validation {fmt(result.validation)}; "
               f"test {fmt(result.test) or 'n/a (no English test split)'}; "
               f"{result.steps} steps in {result.seconds:.0f}s")
    click.echo(f"adapter: {result.out / 'adapter'}")


@main.command("merge")
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--method", type=click.Choice(["average", "task_arithmetic", "ties", "fusion", "multitask"]),
              default="average", show_default=True,
              help="How to merge (multitask: train one adapter jointly on the runs' or --tasks' English data).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The merged folder.")
@click.option("--tasks", help="Multitask without run folders: comma-separated tasks to train on.")
@click.option("--sampling", type=click.Choice(["proportional", "temperature", "uniform"]),
              help="Multitask: how each batch's task is drawn (default proportional to the task's size).")
@click.option("--temperature", type=float, help="Multitask: T of temperature sampling, p ∝ n^(1/T) (default 2).")
@click.option("--weights", help="Comma-separated weights, one per run (normalised; default uniform), or 'dev': "
                               "chosen on the English dev sets of --dev-tasks (average, task_arithmetic, ties).")
@click.option("--dev-tasks", help="--weights dev: comma-separated tasks scored (default: the runs' tasks).")
@click.option("--dev-examples", type=int, help="--weights dev: at most N dev examples per task (default 200).")
@click.option("--grid-step", type=int, help="--weights dev: search the simplex grid with step 1/K (default 4).")
@click.option("--dev-search", type=click.Choice(["auto", "grid", "greedy_soup"]),
              help="--weights dev: the grid, greedy soup, or auto (grid up to 50 points; the default).")
@click.option("--target", help="Fusion: the task to train it on, or 'mixture' (the inputs' own tasks). "
                               "Others: the task whose head goes into adapter/.")
@click.option("--name", help="Name of the merged adapter (fusion: of its head).")
@click.option("--density", default=0.2, show_default=True, help="TIES: kept fraction of each task vector.")
@click.option("--scale", default=1.0, show_default=True,
              help="TIES / task arithmetic: factor on the merged task vector.")
@click.option("--fusion-config", type=click.Choice(["dynamic", "static"]), default="dynamic", show_default=True)
@_training_options(what="Fusion / multitask training (default: their presets; lr 5e-5 / 1e-4): ")
@click.option("--quant", type=click.Choice(QUANT_MODES),
              help="Fusion / multitask: base storage (default: the runs', or int8 with --tasks).")
@click.option("--model", "model_name",
              help="Multitask with --tasks: base model name, folder or Hub id (default me5-small).")
@click.option("--resume", is_flag=True, help="Fusion / multitask: continue the unfinished training in --out.")
@click.option("--overwrite", is_flag=True, help="Replace what --out holds.")
@_device_option()
@_clear_errors
def merge_cmd(run_dirs, method, out, tasks, sampling, temperature, weights, dev_tasks, dev_examples, grid_step,
              dev_search, target, name, density, scale, fusion_config, quant, model_name, resume, overwrite, device,
              **options):
    """Merge the task adapters of the training runs RUN_DIRS (one base) into one model.

    --method multitask trains one new adapter on the runs' tasks jointly (or on --tasks, with no
    RUN_DIRS), one head per task."""
    from adaptertx.merging import MergeOptions, merge
    from adaptertx.settings import preset

    try:
        weight_list = "dev" if weights and weights.strip().lower() == "dev" else (
            [float(w) for w in _csv(weights)] if weights else None)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers or 'dev', got {weights!r}",
                                 param_hint="--weights") from None
    given = _given_settings(options)
    train_kw = {**given, **{k: v for k, v in dict(quant=quant, model=model_name).items() if v is not None}}
    if train_kw and method not in ("fusion", "multitask"):
        raise click.UsageError(f"{', '.join('--' + k.replace('_', '-') for k in train_kw)} apply to --method fusion "
                               f"or multitask only")
    sample_kw = {k: v for k, v in dict(sampling=sampling, temperature=temperature).items() if v is not None}
    if (sample_kw or tasks) and method != "multitask":
        raise click.UsageError("--tasks, --sampling and --temperature apply to --method multitask only")
    if model_name and not tasks:
        raise click.UsageError("--model applies to --method multitask with --tasks (runs bring their own base)")
    options = MergeOptions(weights=weight_list, target=target, name=name, density=density, scale=scale,
                           fusion_config=fusion_config, settings=preset(method).replace(**given) if given else None,
                           quant=quant, model=model_name, tasks=_csv(tasks) if tasks else None,
                           dev_tasks=_csv(dev_tasks) if dev_tasks is not None else None, dev_examples=dev_examples,
                           grid_step=grid_step, dev_search=dev_search or "auto", device=device, **sample_kw)
    result = merge(method, list(run_dirs), out, options, overwrite=overwrite, resume=resume)
    if result.recipe.get("tasks"):
        click.echo(f"{method}: one adapter trained on {', '.join(result.recipe['tasks'])} -> {result.out} "
                   f"(name {result.name}; {result.recipe['steps']} steps, best epoch {result.recipe['best_epoch']})")
        for task, p in result.recipe["probabilities"].items():
            test = result.recipe["test"].get(task) or {}
            click.echo(f"  {task}: p={p:.3f}  validation " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                                      result.recipe["validation"][task].items())
                       + ("; test " + ", ".join(f"{k} {v:.1f}" for k, v in test.items()) if test else ""))
        return
    click.echo(f"{method}: {len(result.recipe['inputs'])} adapter(s) -> {result.out} (name {result.name})")
    if result.recipe.get("weights"):
        click.echo("weights: " + ", ".join(f"{i['task']} {w:.3f}" for i, w in zip(result.recipe["inputs"],
                                                                                 result.recipe["weights"],
                                                                                 strict=True)))
    if result.recipe.get("weights_from") == "dev":
        _print_dev_search(result.recipe)
    for warning in result.recipe.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)


def _print_dev_search(recipe: dict, top: int = 5) -> None:
    """How ``--weights dev`` chose: the dev tasks and the best candidates by mean dev score."""
    dev = recipe["dev"]
    sizes = ", ".join(f"{t} {dev['examples'][t]} ({dev['metrics'][t]})" for t in dev["tasks"])
    if dev["search"] == "none":
        click.echo(f"weights chosen on English dev sets: one input, nothing to search (dev tasks: {sizes})")
        return
    how = f"grid, step 1/{dev['grid_step']}" if dev["search"] == "grid" else "greedy soup"
    click.echo(f"weights chosen on English {dev['split']} sets of {sizes}: {len(dev['candidates'])} candidates "
               f"({how}), mean {dev['chosen_mean']:.2f}")
    labels = [i["task"] for i in recipe["inputs"]]
    n = len(labels)  # best first; equal means: closest to uniform first, as the search breaks ties
    rows = sorted(dev["candidates"], key=lambda c: (-c["mean"], sum((w - 1 / n) ** 2 for w in c["weights"])))[:top]
    table = [[*(f"{w:.3f}" for w in c["weights"]), *(f"{c['scores'][t]:.2f}" for t in dev["tasks"]),
              f"{c['mean']:.2f}", "*" if c["weights"] == recipe["weights"] else ""] for c in rows]
    headers = [f"w:{t}" for t in labels] + [f"dev:{t}" for t in dev["tasks"]] + ["mean", "chosen"]
    click.echo(f"top {len(rows)} of {len(dev['candidates'])} candidates by mean dev score:")
    click.echo(tabulate(table, headers=headers, disable_numparse=True))


@main.command("runs")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@_clear_errors
def runs_cmd(root: str) -> None:
    """Summarise the training runs under ROOT: scores beside the majority baseline.

    "test - majority" carries the 95% interval of the paired per-example difference; "clearly
    above" is yes when the whole interval is above zero."""
    from adaptertx.rundir import summarize_runs

    def num(v):
        return "-" if v is None else f"{v:.1f}"

    def versus(r):
        if r["test"] is None or r["baseline"] is None:
            return "-", "-"
        text = f"{r['test'] - r['baseline']:+.1f}"
        if r["interval"] is None:
            return text, "-"
        low, high = r["interval"]
        return f"{text} [{low:+.1f}, {high:+.1f}]", "yes" if low > 0 else "no"

    rows = [(r["run"], r["task"], r["status"], r["steps"] or "-", num(r["seconds"]), r["metric"],
             num(r["validation"]), num(r["test"]), num(r["baseline"]), *versus(r))
            for r in summarize_runs(root)]
    click.echo(tabulate(rows, headers=["run", "task", "status", "steps", "seconds", "metric", "validation",
                                       "test", "majority", "test - majority (95%)", "clearly above"],
                        disable_numparse=True))


def _data_file(item: str) -> tuple[str, str]:
    """``--data-file``'s ``LANG=PATH``, or ``PATH`` named by the file-name rule (``test-de.tsv``)."""
    from pathlib import Path

    from adaptertx.evaluation import file_language

    lang, sep, path = item.partition("=")
    if sep and lang and path and "/" not in lang:
        return lang.strip(), path.strip()
    p = Path(item)
    named = file_language(p.name) or file_language(f"{p.parent.name}/{p.name}")
    if named is None:
        raise click.UsageError(f"--data-file takes LANG=PATH, or a PATH whose name gives its language "
                               f"(test-de.tsv, kk_ktb-ud-test.conllu, hau/test.txt, xnli.test.tsv, de.tsv); "
                               f"got {item!r}")
    return named, item


@main.command("evaluate")
@click.argument("target")
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True,
              help="Base model name, folder or Hub id.")
@click.option("--intermediate", default="none", show_default=True,
              help="'none', a finished `adaptertx train` run, or an `adaptertx merge` folder.")
@click.option("--fusion", "fusion_runs",
              help="Comma-separated run folders to fuse (the Fusion trains with the target).")
@click.option("--quant", type=click.Choice(QUANT_MODES), default=QUANT, show_default=True, help=_QUANT_HELP)
@click.option("--adapter", default=ADAPTER, show_default=True, help="The target adapter's config.")
@click.option("--langs", help="Comma-separated languages (default: every language with data).")
@click.option("--data-file", "data_files", multiple=True,
              help="LANG=PATH, or a PATH whose name gives its language (as --data-dir): your own test file in the "
                   "target's public release format (repeatable; one file per language).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False),
              help="A folder of your own test files, one per language, named as released: test-de.tsv, "
                   "kk_ktb-ud-test.conllu, hau/test.txt, xnli.test.tsv, de.tsv (README: own data).")
@click.option("--pretraining-gib", "pretraining_gib", multiple=True,
              help="CODE=GIB: the CC-100 size of a language code adaptertx does not know (decides low-resource).")
@click.option("--unknown-lang-low-resource", is_flag=True,
              help="Count language codes adaptertx does not know as low-resource instead of refusing them.")
@_training_options(TARGET, what="Target training: ")
@click.option("--max-eval-examples", type=int, help="At most N test examples per language.")
@click.option("--max-candidates", type=int,
              help="Mewsli-X: score against every gold entity plus a sample, N candidates in all (default: all).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Target run folder (a finished one is reused, an interrupted one resumed).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the result here as JSON.")
@_device_option()
@_clear_errors
def evaluate_cmd(target, model_name, intermediate, fusion_runs, quant, adapter, langs, data_files, data_dir,
                 pretraining_gib, unknown_lang_low_resource, max_eval_examples, max_candidates, out, json_out, device,
                 **options) -> None:
    """Train TARGET's adapter on English over an intermediate configuration, then score it
    zero-shot on every language (retrieval targets: encode and score directly)."""
    from adaptertx.evaluation import EvalConfig, data_dir_files, evaluate, fusion_of, load_intermediate
    from adaptertx.evaluation.common import ALL_LANGUAGES
    from adaptertx.io import atomic_write_text
    from adaptertx.languages import normalize_or_keep

    files = [_data_file(item) for item in data_files]
    wanted = {normalize_or_keep(w) for w in _csv(langs) or []}
    outside = [f"{lang}={path}" for lang, path in files
               if wanted and lang != ALL_LANGUAGES and normalize_or_keep(lang) not in wanted]
    if outside:
        raise click.UsageError(f"--data-file {', '.join(outside)}: not a language of --langs ({langs}); add it to "
                               f"--langs or leave the file out")
    if data_dir:
        files += data_dir_files(data_dir, target)
    sizes = []
    for item in pretraining_gib:
        code, _, gib = item.partition("=")
        try:
            sizes.append((code.strip().lower(), float(gib)))
        except ValueError:
            raise click.UsageError(f"--pretraining-gib takes CODE=GIB (a number), got {item!r}") from None
    if fusion_runs and intermediate != "none":
        raise click.UsageError("give either --intermediate or --fusion")
    inter = fusion_of(_csv(fusion_runs)) if fusion_runs else load_intermediate(intermediate)
    config = EvalConfig(target=target, model=model_name, quant=quant, adapter=adapter,
                        languages=tuple(_csv(langs)) if langs else None, max_eval_examples=max_eval_examples,
                        data_files=tuple(files), max_candidates=max_candidates, pretraining_gib=tuple(sizes),
                        unknown_lang_low_resource=unknown_lang_low_resource, **_given_settings(options))
    result = evaluate(config, inter, out, device=device)
    key = result.primary
    def floor(r, kind: str) -> str:
        value = (r.floor or {}).get(kind)
        return "–" if value is None else f"{value:.1f}"

    rows = [[lang + ("*" if r.low_resource else ""), f"{r.scores[key]:.1f}", floor(r, "majority"), floor(r, "chance"),
             r.n, r.split, r.source]
            for lang, r in sorted(result.languages.items(), key=lambda kv: (not kv[1].low_resource, kv[0]))]
    click.echo(tabulate(rows, ["language", key, "majority floor", "chance", "examples", "split", "data"],
                        tablefmt="github", disable_numparse=True))
    learned = result.learned
    if learned and learned.get("learned") is not None:
        click.echo(f"target adapter on English {learned['split']}: {learned['metric']} {learned['score']:.1f} vs "
                   f"majority floor {learned['floor']:.1f} ({learned['difference']:+.1f} [{learned['low']:+.1f}, "
                   f"{learned['high']:+.1f}]): " + ("learned" if learned["learned"] else
                                                    "DID NOT LEARN (not clearly above its floor)"))
    low = [r.scores[key] for r in result.languages.values() if r.low_resource]
    other = [r.scores[key] for r in result.languages.values() if not r.low_resource]
    if result.languages:
        allv = low + other
        click.echo(f"average {sum(allv) / len(allv):.1f} over {len(allv)} languages"
                   + (f"; low-resource* {sum(low) / len(low):.1f} ({len(low)})" if low else "")
                   + (f"; others {sum(other) / len(other):.1f} ({len(other)})" if other else ""))
    for note in result.notes:
        click.echo(f"note: {note}")
    for lang, why in sorted(result.missing.items()):
        click.echo(f"not scored: {lang}: {why}")
    if json_out:
        atomic_write_text(json_out, json.dumps(result.record(), indent=1) + "\n")


@main.command("experiment")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Study folder (default: results/<study name>).")
@click.option("--no-report", is_flag=True, help="Do not write the report at the end.")
@click.option("--executor", type=click.Choice(["local", "ray", "slurm", "submitit-local"]), default="local",
              show_default=True, help="Where the nodes run: this process, Ray tasks, or Slurm jobs (submitit; "
                                      "submitit-local: the same jobs as local processes).")
@click.option("--address", default=None, help="ray: join this cluster (auto, HOST:PORT, ray://HOST:PORT); "
                                              "default: start a local one.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="ray without --address: the local cluster's CPUs (default: this machine's).")
@click.option("--cpus-per-task", type=click.FloatRange(min=0), default=1, show_default=True,
              help="CPUs each node asks for (ray; slurm: per node's job, at least 1).")
@click.option("--gpus-per-task", type=click.FloatRange(min=0), default=0, show_default=True,
              help="GPUs each node asks for (ray; slurm: per node's job).")
@click.option("--partition", default=None, help="slurm: the partition to submit to.")
@click.option("--timeout-min", type=click.IntRange(min=1), default=240, show_default=True, help="slurm: per job.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Times a node whose worker was lost (killed, preempted) runs again before it counts as failed.")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print the grid, each node's work and the expected GPU hours and wall time; run nothing.")
@click.option("--gpus", default="1,8,32", show_default=True, help="--plan: the numbers of GPUs to give wall times for.")
@click.option("--tflops", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--plan: count FLOPs at this sustained rate instead of measuring the base here.")
@_device_option(" Each worker resolves auto for itself.")
@_clear_errors
def experiment_cmd(config, out, no_report, executor, address, workers, cpus_per_task, gpus_per_task, partition,
                   timeout_min, retries, plan_only, gpus, tflops, device) -> None:
    """Run a study (intermediate configurations x targets x seeds) from a TOML CONFIG.
    Finished cells are kept in the results store and skipped when run again."""
    from pathlib import Path

    from adaptertx.executors import make_executor
    from adaptertx.experiment import load_study, run_study

    study = load_study(config)
    folder = out or f"results/{study.name}"
    if plan_only:
        from adaptertx.plan import plan_lines, plan_study

        counts = _counts(gpus, "--gpus")
        for line in plan_lines(plan_study(study, folder, tflops=tflops), counts):
            click.echo(line)
        return
    click.echo(f"study {study.name!r} ({study.study_hash()}): {len(study.configs)} configurations x "
               f"{len(study.targets)} targets x {len(study.seeds)} seeds -> {folder}")
    engine = make_executor(executor, Path(folder).resolve(), address=address, workers=workers,
                           cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, partition=partition,
                           timeout_min=timeout_min)
    result = run_study(study, folder, echo=click.echo, executor=engine, retries=retries, device=device)
    click.echo(f"{len(result.ran)} cells run, {len(result.skipped)} kept from before, {len(result.failed)} failed "
               f"in {result.seconds / 60:.1f} min")
    if not no_report:
        _print_report(folder)
    if result.failed:
        for cid, err in result.failed.items():
            click.echo(f"failed: {cid}: {err}", err=True)
        sys.exit(1)


def _print_report(store: str) -> None:
    from adaptertx.report import target_table, task_lines, verdict, write_report

    path, report = write_report(store)
    for t in report.targets:
        if t in report.scores:
            head, rows = target_table(report, t)
            click.echo(f"\n{t} ({report.primary[t]}; * = low-resource)")
            click.echo(tabulate(rows, head, tablefmt="simple", disable_numparse=True))
    click.echo("\n" + verdict(report).replace("**", ""))
    for line in task_lines(report):
        click.echo(line)
    click.echo(f"\nreport: {path} (tables, plots, trace)")


@main.command("report")
@click.argument("study", type=click.Path(exists=True))
@click.argument("other", type=click.Path(exists=True), required=False)
@_clear_errors
def report_cmd(study, other) -> None:
    """Tables, bootstrap intervals, plots and the verdict of a study folder (or results.jsonl).
    With OTHER, a second study: compare the two studies' per-language rankings of their single
    intermediate tasks instead (written beside STUDY's report)."""
    if other is None:
        _print_report(study)
        return
    from adaptertx.report import write_comparison

    path, comparison = write_comparison(study, other)
    click.echo(path.read_text(encoding="utf-8").rstrip())
    click.echo(f"\ncomparison: {path}")


@main.group()
def retrieve() -> None:
    """Sentence retrieval evaluation: Tatoeba (nearest neighbour) and BUCC (bitext mining)."""
    import os

    # The encoder alternates oneDNN GEMMs with short OpenMP kernels; OpenMP's default
    # spin-waiting workers then compete with the working threads for the cores (about 1.4x
    # slower encoding on a shared 2-core machine). Takes effect only before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _encoder_options(fn):
    """Options shared by the retrieve commands: model, adapter, layer, precision, backend, device."""
    options = [
        click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True,
                     help="Model name, folder or Hub id."),
        click.option("--adapter", type=click.Path(exists=True, file_okay=False),
                     help="Adapter to apply (seq_bn): a run or merged folder (or its adapter/), including an "
                          "AdapterFusion from `adaptertx merge --method fusion` (its adapters and Fusion)."),
        click.option("--layer", type=int, help="Hidden layer to pool (default: the model's XTREME layer)."),
        click.option("--data-dir", type=click.Path(exists=True, file_okay=False), help="Score your own files instead "
                     "of the bundled data (Tatoeba: tatoeba.xxx-eng.xxx + .eng line-aligned pairs; BUCC: "
                     "{lang}-en.{split}.{lang}, .en, .gold)."),
        click.option("--bf16", "precision", flag_value="bf16",
                     help="bf16 weights and compute (default where the CPU has bf16)."),
        click.option("--fp32", "precision", flag_value="fp32", help="fp32 weights and compute."),
        click.option("--int8", "precision", flag_value="int8", help="int8 weight storage, bf16 compute."),
        click.option("--reference", is_flag=True,
                     help="Use the plain Hugging Face pipeline instead of the packed encoder."),
        click.option("--out", type=click.Path(dir_okay=False), help="Also write the scores as JSON here."),
        _device_option(),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _encoder_kwargs(precision, reference, device) -> dict:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16}.get(precision)
    return {"dtype": dtype, "int8": precision == "int8", "backend": "hf" if reference else "packed", "device": device}


@retrieve.command("tatoeba")
@_encoder_options
@click.option("--langs", help="Comma-separated language codes (default: all bundled, or all in --data-dir).")
@click.option("--max-pairs", type=int, help="Use only the first N pairs per language.")
@_clear_errors
def retrieve_tatoeba(model_name, adapter, layer, data_dir, precision, reference, out, device, langs,
                     max_pairs) -> None:
    """Tatoeba accuracy (nearest neighbour by cosine) per language, both directions: en→x (XTREME's) first."""
    from adaptertx.evaluation import evaluate_tatoeba
    from adaptertx.floors import chance
    from adaptertx.io import atomic_write_text
    from adaptertx.tasks import get_task

    scores = evaluate_tatoeba(model_name, _csv(langs), layer=layer, max_pairs=max_pairs, adapter=adapter,
                              data_dir=data_dir, **_encoder_kwargs(precision, reference, device))
    tatoeba = get_task("tatoeba")
    rows = [(s.lang + (" *" if s.low_resource else ""), s.pairs, f"{s.en_to_x:.1f}", f"{s.x_to_en:.1f}",
             f"{s.x_to_en_f1:.1f}", f"{chance(tatoeba, candidates=s.pairs):.1f}") for s in scores]
    click.echo(tabulate(rows, headers=["lang", "pairs", "en→x %", "x→en %", "x→en F1 %", "chance %"],
                        colalign=("left", "right", "right", "right", "right", "right"), disable_numparse=True))
    for label, group in (("all", scores), ("low-resource *", [s for s in scores if s.low_resource]),
                         ("other", [s for s in scores if not s.low_resource])):
        if group:
            mean = {k: sum(getattr(s, k) for s in group) / len(group) for k in ("en_to_x", "x_to_en", "x_to_en_f1")}
            click.echo(f"mean, {label} ({len(group)} langs): en→x {mean['en_to_x']:.1f}%  x→en {mean['x_to_en']:.1f}%  "
                       f"x→en F1 {mean['x_to_en_f1']:.1f}%")
    if scores:
        click.echo(f"en→x is XTREME's Tatoeba score, x→en and its F1 are MTEB's; prefix {scores[0].prefix!r}")
    truncated = sum(s.truncated for s in scores)
    if truncated:
        click.echo(f"{truncated} sentences were longer than the model's limit and were truncated")
    if out:
        atomic_write_text(out, json.dumps([s.__dict__ for s in scores], indent=2) + "\n")
        click.echo(f"wrote {out}")


@retrieve.command("bucc")
@_encoder_options
@click.option("--lang", default="zh", show_default=True, help="The non-English language (bundled: zh).")
@click.option("--split", default="dev", show_default=True, help="File split (dev = BUCC's sample split, with gold).")
@click.option("-k", "k", default=4, show_default=True, help="Neighbours for the ratio margin.")
@_clear_errors
def retrieve_bucc(model_name, adapter, layer, data_dir, precision, reference, out, device, lang, split, k) -> None:
    """BUCC bitext mining: ratio-margin candidates, threshold tuned for F1 on the gold pairs."""
    from adaptertx.evaluation import evaluate_bucc
    from adaptertx.io import atomic_write_text
    from adaptertx.languages import is_low_resource

    s = evaluate_bucc(model_name, lang, split=split, data_dir=data_dir, layer=layer, adapter=adapter, k=k,
                      **_encoder_kwargs(precision, reference, device))
    try:
        mark = " *" if is_low_resource(s.lang) else ""
    except AdaptertxError:
        mark = ""
    click.echo(tabulate([(f"{s.lang}-en{mark}", s.source_sentences, s.target_sentences, s.gold, s.extracted,
                          f"{s.threshold:.4f}", f"{s.precision:.1f}", f"{s.recall:.1f}", f"{s.f1:.1f}",
                          f"{s.chance:.2f}")],
                        headers=["pair", "source", "target", "gold", "extracted", "threshold", "P %", "R %", "F1 %",
                                 "chance F1 %"],
                        disable_numparse=True))
    click.echo(f"XTREME's mining protocol (ratio margin, k={k}, F1-tuned threshold); prefix {s.prefix!r}; "
               f"chance: every source sentence paired with a random target")
    if s.truncated:
        click.echo(f"{s.truncated} sentences were longer than the model's limit and were truncated")
    if out:
        atomic_write_text(out, json.dumps(s.__dict__, indent=2) + "\n")
        click.echo(f"wrote {out}")


@main.command("export")
@click.argument("source", type=click.Path(file_okay=False))
@click.option("--repo-id", required=True, help="The Hub repository, OWNER/NAME.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The export folder.")
@click.option("--push", "do_push", is_flag=True, help="Upload the folder to the Hub (one commit).")
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option("--revision", help="Branch to commit to (default main; created when missing).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--results", type=click.Path(exists=True), help="Study folder or results.jsonl: its cells for SOURCE "
              "become the card's evaluation table.")
@click.option("--overwrite-card", is_flag=True, help="Replace a README.md already in --out (kept by default).")
@click.option("--license", "license_", help="The card's licence (default: the base model's).")
@_clear_errors
def export_cmd(source, repo_id, out, do_push, private, revision, create_pr, results, overwrite_card, license_):
    """Export a finished run or merged folder SOURCE in the AdapterHub format with a model card."""
    from adaptertx.hub import export, push

    result = export(source, repo_id, out, results=results, overwrite_card=overwrite_card, license=license_)
    click.echo(f"{result.method}: {len(result.files)} files -> {result.out} (card {result.card}; base "
               f"{result.base_model or 'a local model'}; {len(result.evaluation)} evaluation rows)")
    if do_push:
        pushed = push(result.out, repo_id, private=private or None, revision=revision, create_pr=create_pr)
        if pushed.changed:
            click.echo(f"pushed to {pushed.repo_id}@{pushed.revision}: {pushed.pr_url or pushed.commit_url}")
        else:
            click.echo(f"{pushed.repo_id}@{pushed.revision} already holds these {len(pushed.files)} files "
                       f"unchanged: no commit made ({pushed.commit_url})")


if __name__ == "__main__":
    sys.exit(main())
