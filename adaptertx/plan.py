"""What a study will cost before it runs (``adaptertx experiment STUDY --plan``).

A plan lists the study's task graph (:mod:`adaptertx.study_graph`: intermediate adapters, merged
configurations, cells), says for each node how many tokens it trains on and encodes and where its
English data comes from, and turns that into GPU hours and a wall time on 1, 8, 32 … GPUs.

The rate (seconds per trained token, per encoded token, and per model load) is measured: a few
training steps and encoder passes of the study's own base, adapter and budget, on this machine's
device (:func:`calibrate`). Where the base cannot be loaded here (a Hub model offline) or
``tflops`` is given, it comes from a FLOP count instead (:func:`flop_rate`), and the plan says so.

Tokens are real tokens, padding not counted: the mean length of a sample of the bundled data
through the base's tokenizer (each choice of a multiple-choice item, each window of a long QA
context, both sides of a retrieval pair), times the examples and epochs. Where adaptertx bundles
no such data (a Hub-only task) every sequence counts ``max_length`` (a padded bound, marked ``<=``).
Test rows of the Hub releases are their published sizes (:data:`PUBLISHED_TEST_ROWS`). Validation
passes during training and weight-space merges are not counted. The wall time is a list schedule of the
graph (a free GPU takes the ready node with the longest chain after it), never below the critical
path or the GPU hours divided by the GPUs (:func:`adaptertx.study_graph.makespan`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from adaptertx.errors import AdaptertxError

#: Sizes of the full public releases for tasks adaptertx reads from the Hub (or the user's files)
#: rather than from its bundled data: the English ``train`` split's rows, and a typical language's
#: test rows (XTREME's released test sets; an estimate's input, not a measurement).
PUBLISHED_TRAIN_ROWS = {"mnli": 392_702, "qqp": 363_846, "squad": 87_599, "squad_v2": 130_319, "ccg": 39_604}
PUBLISHED_DEV_ROWS = {"mnli": 9815, "qqp": 40_430, "squad": 10_570, "squad_v2": 11_873, "ccg": 1913}
PUBLISHED_TEST_ROWS = {"xnli": 5010, "xcopa": 500, "udpos": 2000, "panx": 5000, "xquad": 1190, "mlqa": 5000,
                       "tydiqa": 560, "tatoeba": 1000, "lareqa": 1190, "mewsli_x": 4000, "bucc": 10_000,
                       "masakhaner": 800, "pawsx": 2000}
#: Retrieval targets whose queries are searched in a candidate pool encoded once per cell (about
#: this many candidates; a study's ``max_candidates`` caps Mewsli-X's).
CANDIDATES = {"lareqa": 13_000, "mewsli_x": 1_000_000}
#: Retrieval targets whose test rows are sentence pairs (both sides encoded).
BITEXT = ("tatoeba", "bucc")
#: The sustained rate the FLOP model assumes when none is given (about a fifth of an H100's dense
#: bf16 peak: an 8-bit base's matmuls run below bf16's).
DEFAULT_TFLOPS = 200.0
DEFAULT_GPUS = (1, 8, 32)


@dataclass(frozen=True)
class Rate:
    """Seconds per trained token, per encoded token and per node (loading the base); ``how`` says
    where they come from; ``measured`` whether they were timed on this machine."""

    train: float
    encode: float
    load: float
    how: str
    measured: bool


@dataclass(frozen=True)
class Work:
    """One node's work: tokens trained on and encoded, its English data, its seconds at the plan's rate,
    and why it would fail (``missing``), if it would."""

    key: str
    kind: str
    label: str
    rows: int
    train_tokens: int
    encode_tokens: int
    source: str
    seconds: float
    missing: str | None = None
    lengths_measured: bool = True


@dataclass
class Plan:
    """A study's nodes with their work, the rate used, and the cells already recorded."""

    study: object
    nodes: list
    works: dict[str, Work]
    rate: Rate
    recorded: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float:
        return sum(w.seconds for w in self.works.values()) / 3600

    def critical_path_hours(self) -> float:
        from adaptertx.study_graph import critical_path

        return critical_path(self.nodes, self.seconds()) / 3600

    def wall_hours(self, gpus: int) -> float:
        """Expected wall time on ``gpus`` GPUs, one node per GPU at a time."""
        from adaptertx.study_graph import makespan

        return makespan(self.nodes, self.seconds(), gpus) / 3600

    def seconds(self) -> dict[str, float]:
        return {k: w.seconds for k, w in self.works.items()}


# ------------------------------------------------------------------------------ the rate


def calibrate(study, steps: int = 3) -> Rate:
    """Time ``steps`` training steps (forward and backward) and ``steps`` encoder passes of the
    study's base with its adapter, at the intermediate budget's batch size and length, on the
    device training uses here (CUDA when there is one). Raises :class:`AdaptertxError` when the base
    cannot be loaded."""
    from adaptertx.modeling import build_adapter_model
    from adaptertx.tasks import get_task

    b = study.intermediate
    start = time.perf_counter()
    built = build_adapter_model(study.model, get_task("mrpc"), adapter=study.adapter, quant=study.quant,
                                adapter_seed=study.adapter_seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where training puts the model
    model = built.model.to(device)
    load = time.perf_counter() - start
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (b.batch_size, b.max_length), generator=g).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.zeros(b.batch_size, dtype=torch.long, device=device)}

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=built.autocast):
            loss = model(**batch).loss
        loss.backward()

    def encode_step():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=built.autocast):
            model(**batch)

    tokens = b.batch_size * b.max_length
    train_s, encode_s = (_timed(fn, steps) / tokens for fn in (train_step, encode_step))
    how = (f"measured on {device.type} ({study.model}, {study.quant}, batch {b.batch_size} x {b.max_length}, "
           f"{steps} steps)")
    return Rate(train_s, encode_s, load, how, measured=True)


def _timed(fn, steps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def flop_rate(study, tflops: float, why: str = "") -> Rate:
    """The rate from a FLOP count of the base at ``tflops`` sustained: an encoder pass costs
    ``2 * 12 * layers * hidden**2`` plus ``4 * layers * max_length * hidden`` (attention) per token;
    adapter training on a frozen base about twice that (the backward pass takes activation
    gradients only). Model loading is not counted."""
    layers, hidden = model_shape(study.model)
    length = study.intermediate.max_length
    forward = 2 * 12 * layers * hidden ** 2 + 4 * layers * length * hidden
    per_second = tflops * 1e12
    how = f"FLOP model at {tflops:g} TFLOPS sustained ({layers} layers x {hidden}; assumed, not measured{why})"
    return Rate(2 * forward / per_second, forward / per_second, 0.0, how, measured=False)


def model_shape(model: str) -> tuple[int, int]:
    """``(layers, hidden size)`` of a base given by name (the registry) or by folder (its config)."""
    from pathlib import Path

    from adaptertx.models import MODELS

    spec = MODELS.get(model)
    if spec is not None:
        return spec.layers, spec.hidden
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        import json

        c = json.loads(config.read_text())
        return int(c["num_hidden_layers"]), int(c["hidden_size"])
    raise AdaptertxError(f"the size of model {model!r} is unknown here (not a known name and no config.json): "
                         f"give a folder, or plan on a machine that can load it")


# ------------------------------------------------------------------------------ tokens per example


def plan_tokenizer(model: str):
    """``(tokenizer, note)``: the base's own tokenizer, or, where the base cannot be found here,
    the bundled default's (multilingual-e5-small: XLM-R's SentencePiece vocabulary)."""
    from adaptertx.models import DEFAULT_MODEL, load_tokenizer, resolve

    try:
        return load_tokenizer(resolve(model)), ""
    except (AdaptertxError, OSError, ValueError):
        return load_tokenizer(resolve(DEFAULT_MODEL)), f"lengths in {DEFAULT_MODEL}'s tokens (XLM-R's vocabulary)"


def tokens_per_example(task_name: str, split: str, lang: str, tokenizer, max_length: int,
                       sample: int = 256) -> float | None:
    """The mean number of real (unpadded) tokens one example of ``task_name``'s bundled ``split`` in
    ``lang`` costs at ``max_length``, as the model sees it: every choice of a multiple-choice item,
    every window of a long QA context, both sentences of a retrieval pair. ``None`` where adaptertx
    bundles no such split (then a plan counts the padded bound)."""
    from adaptertx import data
    from adaptertx.tasks import get_task
    from adaptertx.training.data import encode, subset

    task = get_task(task_name)
    if not task.bundled or split not in data.available(task.bundled)[task.bundled].get(lang, {}):
        return None
    rows = subset(data.load(task.bundled, lang, split), sample)
    if not rows:
        return None
    if task.family == "retrieval":
        sides = [r[k] for r in rows for k in ("source", "target")]
        ids = tokenizer(sides, truncation=True, max_length=max_length)["input_ids"]
        return sum(map(len, ids)) / len(rows)
    quiet = logging.getLogger("adaptertx.training.data")  # truncation is what a length cap does; not news here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        features = encode(task, rows, tokenizer, max_length, "plan")
    finally:
        quiet.setLevel(level)
    return features.tensors["attention_mask"].sum().item() / len(rows)


class _Lengths:
    """Tokens per example, measured once per (task, split, language, length), and each task's
    English data (:func:`english_data`), read once per task."""

    def __init__(self, tokenizer, hub: bool) -> None:
        self.tokenizer, self.hub, self.cache, self.englishes = tokenizer, hub, {}, {}

    def english(self, task_name: str) -> English:
        if task_name not in self.englishes:
            self.englishes[task_name] = english_data(task_name, self.hub)
        return self.englishes[task_name]

    def __call__(self, task_name: str, split: str, langs, max_length: int) -> tuple[float, bool]:
        """``(tokens per example, measured)``: measured on the first of ``langs`` with bundled data
        (its ``split``, else its validation split), else the padded bound (``max_length`` per sequence)."""
        from adaptertx.tasks import get_task

        for lang in langs:
            for name in (split, "validation"):  # a task released without a test split is scored on its dev set
                key = (task_name, name, lang, max_length)
                if key not in self.cache:
                    self.cache[key] = tokens_per_example(task_name, name, lang, self.tokenizer, max_length)
                if self.cache[key] is not None:
                    return self.cache[key], True
        return max_length * (2 if task_name in BITEXT else _choices(get_task(task_name))), False


# ------------------------------------------------------------------------------ the work of each node


@dataclass(frozen=True)
class English:
    """A task's English data as a study reads it: rows of each split, where they come from, and why
    there are none (``missing``)."""

    train: int
    validation: int
    test: int
    source: str
    missing: str | None = None


def english_data(task_name: str, hub: bool) -> English:
    """The bundled splits where adaptertx bundles the task (a validation split carved from train
    where none is released, as training does), else the Hub's full release (its published sizes;
    ``hub``: whether the Hub answers from here), else the user's files."""
    from adaptertx import data
    from adaptertx.data.remote import remote_splits
    from adaptertx.tasks import get_task
    from adaptertx.training.data import english_splits

    task = get_task(task_name)
    if task.bundled and "train" in data.available(task.bundled)[task.bundled].get("en", {}):
        train, dev, test = english_splits(task, None)  # the splits training reads, validation carved as it carves
        return English(len(train), len(dev), len(test or ()), "bundled")
    train, dev = PUBLISHED_TRAIN_ROWS.get(task_name, 0), PUBLISHED_DEV_ROWS.get(task_name, 0)
    if task.hub.dataset and "train" in remote_splits(task_name):
        return English(train, dev, 0, f"Hub {task.hub.dataset}",
                       None if hub else f"the Hub ({task.hub.dataset}) is unreachable here")
    return English(train, dev, 0, "own files", task.hub.note or "no English training data")


def _trained(english: English, b, per: float) -> tuple[int, int]:
    """``(tokens trained, tokens encoded)`` of training on ``english`` at budget ``b``: the epochs over
    the training rows, the validation rows after every epoch and the test rows once (each capped
    by ``max_examples``, as training caps them)."""
    cap = b.max_examples
    checks = _capped(english.validation, cap) * b.epochs + _capped(english.test, cap)
    return round(_capped(english.train, cap) * b.epochs * per), round(checks * per)


def _capped(rows: int | None, cap: int | None) -> int:
    return 0 if rows is None else min(rows, cap) if cap else rows


def _choices(task) -> int:
    return task.num_choices or 1


def _intermediate_work(study, task_name: str, rate: Rate, lengths: _Lengths) -> Work:
    b = study.intermediate
    english = lengths.english(task_name)
    per, measured = lengths(task_name, "train", ("en",), b.max_length)
    tokens, checks = _trained(english, b, per)
    return Work(f"intermediate:{task_name}", "intermediate", task_name, _capped(english.train, b.max_examples),
                tokens, checks, english.source, rate.load + tokens * rate.train + checks * rate.encode,
                english.missing, measured)


def _merge_work(study, spec, rate: Rate, inputs: dict[str, Work]) -> Work:
    from adaptertx.rundir import METHODS

    if not METHODS[spec.method].trained:  # weight space: seconds, not counted
        return Work(f"merge:{spec.name}", "merge", spec.name, 0, 0, 0, "weights", 0.0)
    parts = [inputs[f"intermediate:{t}"] for t in spec.tasks]  # one epoch of the mixture: every task's rows
    tokens, checks = sum(w.train_tokens for w in parts), sum(w.encode_tokens for w in parts)
    return Work(f"merge:{spec.name}", "merge", spec.name, sum(w.rows for w in parts), tokens, checks,
                "the tasks' mixture", rate.load + tokens * rate.train + checks * rate.encode, None,
                all(w.lengths_measured for w in parts))


def _cell_work(study, node, rate: Rate, lengths: _Lengths) -> Work:
    from adaptertx.tasks import get_task

    task = get_task(node.target)
    b = study.budget_for(node.target)
    langs = study.languages_for(node.target) or task.languages
    test = _capped(PUBLISHED_TEST_ROWS.get(node.target, 1000), study.max_eval_examples)
    per_test, measured = lengths(node.target, "test", langs, b.max_length)
    pool = _capped(CANDIDATES.get(node.target, 0), study.max_candidates if node.target == "mewsli_x" else None)
    encode = round((len(langs) * test + pool) * per_test)
    unread = _unreadable(study, node.target)
    if task.english_train is None:  # retrieval: encoded, nothing trained
        return Work(f"cell:{node.name}", "cell", node.target, 0, 0, encode, "-",
                    rate.load + encode * rate.encode, unread, measured)
    english = lengths.english(task.english_train)
    per_train, measured_train = lengths(task.english_train, "train", ("en",), b.max_length)
    tokens, checks = _trained(english, b, per_train)
    return Work(f"cell:{node.name}", "cell", node.target, _capped(english.train, b.max_examples), tokens,
                encode + checks, f"{task.english_train} ({english.source})",
                rate.load + tokens * rate.train + (encode + checks) * rate.encode, english.missing or unread,
                measured and measured_train)


def _unreadable(study, target: str) -> str | None:
    """Why a target's test data cannot be read at all (no bundled copy, no Hub split adaptertx
    reads, no ``[targets.data]`` folder), or ``None``."""
    from adaptertx.data.remote import remote_splits
    from adaptertx.tasks import get_task

    task = get_task(target)
    if task.bundled or dict(study.data).get(target) or "test" in remote_splits(target):
        return None
    return task.hub.note or f"{target} is read from its release's files only: give them in [targets.data]"


def plan_study(study, out=None, *, tflops: float | None = None) -> Plan:
    """The plan of ``study`` (cells already recorded in the study folder ``out`` left out). The rate
    is measured here unless ``tflops`` is given or the base cannot be loaded (then the FLOP model
    at ``tflops`` or :data:`DEFAULT_TFLOPS`)."""
    from pathlib import Path

    from adaptertx.models import hub_reachable
    from adaptertx.results import STORE_FILE, read_store
    from adaptertx.study_graph import build_graph, cell_id

    if tflops is not None:
        rate = flop_rate(study, tflops)
    else:
        try:
            rate = calibrate(study)
        except (AdaptertxError, OSError) as e:
            rate = flop_rate(study, DEFAULT_TFLOPS, why=f"; {study.model} cannot be loaded here: "
                                                        f"{str(e).splitlines()[0]}")
    recorded = set()
    if out is not None and (Path(out) / STORE_FILE).is_file():
        recorded = {c["cell"] for c in read_store(out)[1] if c.get("status") == "finished"}
    cells = [(c, t, s) for c, t, s in study.cells() if cell_id(c.name, t, s) not in recorded]
    nodes = build_graph(study, cells)
    tokenizer, note = plan_tokenizer(study.model)
    lengths = _Lengths(tokenizer, hub_reachable())
    works: dict[str, Work] = {}
    for node in nodes:
        if node.kind == "intermediate":
            works[node.key] = _intermediate_work(study, node.name, rate, lengths)
        elif node.kind == "merge":
            works[node.key] = _merge_work(study, study.config(node.config), rate, works)
        else:
            works[node.key] = _cell_work(study, node, rate, lengths)
    return Plan(study, nodes, works, rate, recorded=len(recorded), notes=[note] if note else [])


# ------------------------------------------------------------------------------ the plan as text


def would_fail(plan: Plan) -> dict[str, str]:
    """The nodes that would fail for want of data (their own or an input's): key → reason."""
    out: dict[str, str] = {}
    for node in plan.nodes:
        own = plan.works[node.key].missing
        inherited = next((out[d] for d in node.deps if d in out), None)
        if own or inherited:
            out[node.key] = own or inherited
    return out


def plan_lines(plan: Plan, gpus=DEFAULT_GPUS) -> list[str]:
    """The plan as a person reads it: the grid, a table of the work per kind of node and per target,
    the wall time on each number of ``gpus``, and what would fail."""
    from tabulate import tabulate

    study = plan.study
    kinds = {k: [w for w in plan.works.values() if w.kind == k] for k in ("intermediate", "merge", "cell")}
    cells = len(study.cells())
    lines = [f"plan of {study.name!r}: {len(kinds['intermediate'])} intermediate adapters, "
             f"{sum(w.train_tokens > 0 for w in kinds['merge'])} trained merges "
             f"(+{sum(w.train_tokens == 0 for w in kinds['merge'])} in weight space), {len(study.configs)} "
             f"configurations x {len(study.targets)} targets x {len(study.seeds)} seeds = {cells} cells "
             f"({plan.recorded} already recorded, {len(kinds['cell'])} to run)",
             f"rate: {plan.rate.how}: {plan.rate.train * 1e6:.3g} s per million trained tokens, "
             f"{plan.rate.encode * 1e6:.3g} per million encoded, {plan.rate.load:.1f} s per model load"]
    lines += [f"note: {n}" for n in plan.notes]
    groups = [(w.key, [w]) for w in kinds["intermediate"] + kinds["merge"]]
    groups += [(f"cells of {t}", ws) for t in study.targets if (ws := [w for w in kinds["cell"] if w.label == t])]
    groups.append(("total", list(plan.works.values())))
    rows = [[name, len(ws), ws[0].source if name != "total" else "", f"{ws[0].rows:,}" if name != "total" else "",
             _tokens(ws, "train_tokens"), _tokens(ws, "encode_tokens"), _duration(sum(w.seconds for w in ws))]
            for name, ws in groups]
    lines.append(tabulate(rows, ["node", "n", "English data", "rows each", "tokens trained", "tokens encoded",
                                 "time"], tablefmt="simple", disable_numparse=True))
    if not all(w.lengths_measured for w in plan.works.values()):
        lines.append("<=: no bundled sample to measure lengths on; every sequence counted at max_length")
    lines.append(f"wall time (one node per GPU; critical path {_duration(plan.critical_path_hours() * 3600)}):")
    lines.append(tabulate([[g, _duration(plan.wall_hours(g) * 3600),
                            f"{plan.gpu_hours / g / max(plan.wall_hours(g), 1e-12):.0%}"] for g in gpus],
                          ["GPUs", "wall time", "GPUs busy"], tablefmt="simple", disable_numparse=True))
    failing = would_fail(plan)
    if failing:
        reasons: dict[str, list[str]] = {}
        for key, why in failing.items():
            reasons.setdefault(why, []).append(key)
        lines.append(f"{len(failing)} nodes would fail (counted above all the same):")
        lines += [f"  {len(keys)} nodes ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}): {why}"
                  for why, keys in reasons.items()]
    if not plan.rate.measured:
        lines.append("the rate is not measured here: on the GPU that will run the study, `--plan` measures it")
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _tokens(works: list[Work], what: str) -> str:
    n = sum(getattr(w, what) for w in works)
    bound = "<=" if any(getattr(w, what) and not w.lengths_measured for w in works) else ""
    size = f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n else "-"
    return bound + size
