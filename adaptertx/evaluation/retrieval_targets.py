"""Retrieval targets: scored by encoding, with no target training.

Tatoeba (x→en and en→x accuracy of the nearest neighbour), BUCC (ratio-margin mining with an
F1-tuned threshold), LAReQA (mAP@20 over one multilingual candidate pool from XQuAD-R files)
and Mewsli-X (mAP@20 of mentions against entity descriptions). The intermediate adapter (if any)
encodes directly, and so does a trained Fusion (a ``merge --method fusion`` folder). A Fusion that
is only learnt with each target's adapter (``--fusion RUN,RUN``) is untrained without a target,
so retrieval under it is reported as not applicable, never silently skipped.
"""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from adaptertx import data
from adaptertx.environment import resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.evaluation.common import (
    FORMATS,
    EvalConfig,
    EvalResult,
    LanguageResult,
    ids_sha,
    is_low,
    progress_bar,
    rounded,
    trace,
)
from adaptertx.evaluation.intermediate import Intermediate
from adaptertx.floors import mining_chance
from adaptertx.languages import normalize_or_keep
from adaptertx.metrics import (
    MAP_K,
    PRIMARY,
    RETRIEVAL_DIRECTIONS,
    average_precision_at_k,
    bitext_f1,
    example_stats,
    stats_score,
    stats_sums,
)
from adaptertx.models import fingerprint, load_model
from adaptertx.retrieval.encoder import (
    SentenceEncoder,
    load_encoder,
    resolve_layer_prefix,
    retrieval_prefixes,
)
from adaptertx.retrieval.mine import knn, mine, optimize_threshold
from adaptertx.tasks import Task, get_task
from adaptertx.training.data import subset

log = logging.getLogger(__name__)


#: What a Tatoeba score is, recorded with every result (``trace["protocol"]``).
TATOEBA_PROTOCOL = (
    "accuracy of cosine nearest neighbours in both directions, en_to_x first: each English sentence searches the "
    "source-language sentences, as XTREME's third_party/evaluate_retrieval.py scores Tatoeba for XTREME and XTREME-R "
    "(its similarity_search indexes the source sentences and queries them with the English ones); x_to_en is "
    "MTEB's direction")
#: What a BUCC score is, recorded with every result (``trace["protocol"]``).
BUCC_PROTOCOL = (
    "XTREME's bitext mining (third_party/utils_retrieve.py, Artetxe & Schwenk 2019): ratio-margin scores of the k=4 "
    "nearest neighbours both ways over every source and target sentence, each sentence used once, F1 against the "
    "gold pairs at the F1-optimal threshold; not MTEB's BUCC, which matches gold sentences by nearest neighbour")


@dataclass(frozen=True)
class TatoebaScore:
    """Retrieval accuracy (percent) for one language pair, both directions.

    ``en_to_x`` is the headline (XTREME's direction, see :data:`TATOEBA_PROTOCOL`); ``x_to_en``
    is MTEB's, and ``x_to_en_f1`` its main score (:func:`adaptertx.metrics.bitext_f1`).
    ``nearest``: per pair (file order), ``(index the English sentence found, index the source
    sentence found)``, the pair found by each direction (:data:`adaptertx.metrics.RETRIEVAL_DIRECTIONS`);
    pair ``i`` is right where it is ``i``. ``prefix``: the text put before every sentence.
    ``truncated``: sentences (either side) cut to the model's length limit.
    """

    lang: str
    pairs: int
    en_to_x: float
    x_to_en: float
    x_to_en_f1: float
    low_resource: bool
    prefix: str = ""
    truncated: int = 0
    nearest: tuple[tuple[int, int], ...] = ()


_TATOEBA_SUFFIX = re.compile(r"^(?P<stem>.+)\.(?P<lang>[A-Za-z_]+)$")


def tatoeba_files(data_dir: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """Line-aligned Tatoeba-style pairs in a folder: ``{stem}.{lang}`` beside ``{stem}.eng``.

    As the LASER release names them (``tatoeba.deu-eng.deu`` / ``tatoeba.deu-eng.eng``; an
    ``.en`` English file works too). Returns {language code: (source file, English file)},
    codes normalised where :mod:`adaptertx.languages` knows them.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise AdaptertxError(f"--data-dir {root} is not a folder")
    found: dict[str, tuple[Path, Path]] = {}
    for eng in sorted(list(root.glob("*.eng")) + list(root.glob("*.en"))):
        stem = eng.name[: -len(eng.suffix)]
        for src in sorted(root.glob(f"{stem}.*")):
            m = _TATOEBA_SUFFIX.match(src.name)
            if src == eng or not m or m.group("lang") in ("eng", "en", "gold"):
                continue
            code = normalize_or_keep(m.group("lang"))
            if code in found:
                raise AdaptertxError(f"{root}: two file pairs for language {code!r}: {found[code][0].name} "
                                     f"and {src.name}")
            found[code] = (src, eng)
    if not found:
        raise AdaptertxError(f"{root} holds no Tatoeba-style pairs: expected files like tatoeba.deu-eng.deu "
                             f"beside tatoeba.deu-eng.eng")
    return found


def _tatoeba_rows(code: str, files: tuple[Path, Path] | None) -> list[dict]:
    if files is None:
        return data.load("tatoeba", code, "test")
    rows = data.read_file(files[0], "tatoeba_pair", target=files[1])
    if not rows:
        raise AdaptertxError(f"{files[0]} and {files[1]} are empty: no sentence pairs to score")
    return rows


def evaluate_tatoeba(model_name: str, langs: list[str] | None = None, *, layer: int | None = None,
                     max_pairs: int | None = None, prefix: str | None = None, batch_size: int = 64,
                     dtype: torch.dtype | None = None, progress: bool = True, adapter: str | None = None,
                     data_dir: str | os.PathLike | None = None, backend: str = "packed", int8: bool = False,
                     tokens_per_batch: int | None = None, device: str | torch.device | None = "auto",
                     ) -> list[TatoebaScore]:
    """Tatoeba retrieval accuracy of a model, x→en and en→x, per language.

    Args:
        model_name: a model name, folder or Hub id (see :func:`adaptertx.models.load_model`).
        langs: language codes (default: every bundled language, or every pair in ``data_dir``).
        layer: hidden layer to pool (default: the model's XTREME retrieval layer, else the last).
        max_pairs: use only the first ``max_pairs`` pairs of each language (file order).
        prefix: text prepended to every sentence (default: the model's for a symmetric task,
            :func:`~adaptertx.retrieval.retrieval_prefixes`: e5's ``"query: "``).
        dtype: compute dtype (default: bf16 where the CPU/GPU has it natively, else fp32).
        adapter: an AdapterHub adapter folder to apply (see :func:`load_encoder`).
        data_dir: a folder of the user's line-aligned pairs (see :func:`tatoeba_files`)
            instead of the bundled data.
        backend, int8, batch_size, tokens_per_batch: see :class:`SentenceEncoder` (the default
            tokens per batch follow the device).
        device: where to encode: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``,
            ``cuda:N`` (:func:`adaptertx.environment.resolve_device`).
    """
    if max_pairs is not None and max_pairs < 1:
        raise AdaptertxError(f"max_pairs must be at least 1, got {max_pairs}")
    device = resolve_device(device)
    if data_dir is not None:
        files = tatoeba_files(data_dir)
        if langs:
            wanted = [normalize_or_keep(code) for code in langs]
            missing = [c for c in wanted if c not in files]
            if missing:
                raise AdaptertxError(f"no pairs for {', '.join(missing)} in {data_dir}; "
                                     f"found {', '.join(sorted(files))}")
            codes = wanted
        else:
            codes = sorted(files)
    else:
        files = {}
        task = get_task("tatoeba")
        bundled = data.available("tatoeba")["tatoeba"]
        codes = sorted(bundled) if not langs else [task.check_language(code) for code in langs]
        missing = [c for c in codes if c not in bundled]
        if missing:
            raise AdaptertxError(f"no bundled Tatoeba data for {', '.join(missing)}")
    model, tokenizer, _ = load_encoder(model_name, adapter, device=device)
    layer, prefix = resolve_layer_prefix(model, layer, prefix, "symmetric")
    encoder = SentenceEncoder(model, tokenizer, layer=layer, prefix=prefix, dtype=dtype, int8=int8, backend=backend,
                              batch_size=batch_size, tokens_per_batch=tokens_per_batch)
    scores = []
    for code in tqdm(codes, desc="tatoeba", unit="lang", disable=not progress):
        rows = _tatoeba_rows(code, files.get(code))[:max_pairs]
        before = encoder.truncated
        src = encoder([r["source"] for r in rows])
        tgt = encoder([r["target"] for r in rows])
        found_en_x = knn(tgt, src, 1)[1][:, 0].tolist()  # each English sentence's nearest source sentence
        found_x_en = knn(src, tgt, 1)[1][:, 0].tolist()
        nearest = tuple(zip(found_en_x, found_x_en, strict=True))
        tatoeba = get_task("tatoeba")
        rates = stats_score(tatoeba, stats_sums(example_stats(tatoeba, nearest, _targets(len(rows)))))
        scores.append(TatoebaScore(code, len(rows), rates["en_to_x"], rates["x_to_en"], bitext_f1(found_x_en),
                                   is_low(code), prefix, encoder.truncated - before, nearest))
    return scores


def _targets(n: int) -> list[dict]:
    """Tatoeba's gold for :func:`adaptertx.metrics.example_stats`: pair ``i`` is its own translation."""
    return [{"id": i, "target_index": i} for i in range(n)]


@dataclass(frozen=True)
class BuccScore:
    """BUCC mining result for one language pair at the F1-optimal threshold (percentages), by
    :data:`BUCC_PROTOCOL`; ``prefix``: the text put before every sentence; ``chance``: the F1
    of random pairs (:func:`adaptertx.floors.mining_chance`)."""

    lang: str
    source_sentences: int
    target_sentences: int
    gold: int
    candidates: int
    extracted: int
    threshold: float
    precision: float
    recall: float
    f1: float
    prefix: str = ""
    truncated: int = 0
    chance: float | None = None


def _bucc_data(lang: str, data_dir: str | os.PathLike | None, split: str):
    if data_dir is None:
        if split != "dev":
            raise AdaptertxError(f"the bundled BUCC data has the dev (sample) split only, not {split!r}")
        return data.load_bucc(lang)
    root = Path(data_dir).expanduser()
    raw = lang.strip()
    code = normalize_or_keep(raw)
    paths = {}
    for key, suffix in (("source", raw), ("target", "en"), ("gold", "gold")):
        candidates = [root / f"{name}-en.{split}.{suffix if key != 'source' else name}"
                      for name in dict.fromkeys((raw, code))]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise AdaptertxError(f"{root}: missing {candidates[0].name} "
                                 f"(BUCC files are {{lang}}-en.{{split}}.{{lang}}, .en and .gold)")
        paths[key] = path
    source = data.read_file(paths["source"], "bucc_sentences")
    target = data.read_file(paths["target"], "bucc_sentences")
    gold = data.read_file(paths["gold"], "bucc_gold")
    for s, t in gold:
        if s not in source or t not in target:
            missing, where = (s, paths["source"].name) if s not in source else (t, paths["target"].name)
            raise AdaptertxError(f"{paths['gold']}: gold pair ({s}, {t}) names {missing!r}, which is not in {where}")
    return data.BuccData(lang=code, source=source, target=target, gold=gold)


def evaluate_bucc(model_name: str, lang: str = "zh", *, split: str = "dev", data_dir: str | os.PathLike | None = None,
                  layer: int | None = None, prefix: str | None = None, dtype: torch.dtype | None = None,
                  adapter: str | None = None, backend: str = "packed", int8: bool = False, k: int = 4,
                  block: int = 4096, batch_size: int = 64, tokens_per_batch: int | None = None,
                  progress: bool = True, device: str | torch.device | None = "auto") -> BuccScore:
    """BUCC bitext mining: ratio-margin candidates (:func:`mine`), F1-optimal threshold on gold.

    Args:
        lang: the non-English language (the bundled data has zh).
        split: file split name (``dev`` = BUCC's sample split, the one with gold pairs).
        data_dir: a folder with ``{lang}-en.{split}.{lang}``, ``.en`` and ``.gold`` files
            (``<id><TAB>sentence`` per line; gold ``<src id><TAB><en id>``).
        k: margin neighbourhood; block: similarity tile size of the search.
        Others as in :func:`evaluate_tatoeba`.
    """
    device = resolve_device(device)
    bucc = _bucc_data(lang, data_dir, split)
    if not bucc.source or not bucc.target:
        raise AdaptertxError(f"BUCC {bucc.lang}-en {split}: no sentences to mine")
    if not bucc.gold:
        raise AdaptertxError(f"BUCC {bucc.lang}-en {split}: no gold pairs to tune the threshold on")
    model, tokenizer, _ = load_encoder(model_name, adapter, device=device)
    layer, prefix = resolve_layer_prefix(model, layer, prefix, "symmetric")
    encoder = SentenceEncoder(model, tokenizer, layer=layer, prefix=prefix, dtype=dtype, int8=int8, backend=backend,
                              batch_size=batch_size, tokens_per_batch=tokens_per_batch)
    src_ids, tgt_ids = list(bucc.source), list(bucc.target)
    src = encoder([bucc.source[i] for i in src_ids], progress=progress)
    tgt = encoder([bucc.target[i] for i in tgt_ids], progress=progress)
    found = mine(src, tgt, k, block=block)
    gold = set(bucc.gold)
    correct = [(src_ids[s], tgt_ids[t]) in gold for s, t in zip(found.src.tolist(), found.tgt.tolist(), strict=True)]
    best = optimize_threshold(found.score, correct, len(gold))
    return BuccScore(bucc.lang, len(src_ids), len(tgt_ids), len(gold), len(correct), best.extracted, best.threshold,
                     100 * best.precision, 100 * best.recall, 100 * best.f1, prefix, encoder.truncated,
                     mining_chance(len(src_ids), len(tgt_ids), len(gold)))


def evaluate_retrieval(config: EvalConfig, inter: Intermediate, task: Task, start: float,
                        progress: bool, *, device: str | torch.device | None = "auto") -> EvalResult:
    """Score a retrieval target by encoding (no target training), on ``device``."""
    device = resolve_device(device)
    if inter.method == "fusion" and inter.fusion_dir is None:
        why = ("not applicable: this Fusion layer is untrained (it is learnt with each target's adapter), and "
               "retrieval has no target training; a trained Fusion (adaptertx merge --method fusion) encodes")
        langs = config.languages or task.languages
        return EvalResult(task.name, task.metric, PRIMARY.get(task.metric, "f1"), {},
                          {code: why for code in langs},
                          trace(config, inter, inter.fingerprint, None, start, device=device), [why])
    if inter.method == "fusion":
        adapter = str(inter.fusion_dir)  # the trained Fusion's setup: its task adapters and the Fusion
    else:
        adapter = str(inter.adapters[0]) if inter.adapters else None
    model, _ = load_model(config.model)
    base_print, prefixes = fingerprint(model), _prefixes_used(model, task)
    del model
    if inter.fingerprint is not None and base_print != inter.fingerprint:
        raise AdaptertxError(f"the intermediate adapter in {inter.source} was trained on another base "
                             f"(fingerprint {inter.fingerprint}) than {config.model!r} ({base_print})")
    results, missing, notes, protocol = {}, {}, [], None
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
                                  progress=progress, device=device)
        for s in scores:
            stats = example_stats(task, s.nearest, _targets(s.pairs))
            results[s.lang] = LanguageResult(rounded(stats_score(task, stats_sums(stats))), s.pairs, s.low_resource,
                                             "test", "bundled", stats, ids_sha(_targets(s.pairs)))
        protocol = {"directions": list(RETRIEVAL_DIRECTIONS), "primary": PRIMARY[task.metric],
                    "description": TATOEBA_PROTOCOL}
    elif task.name == "bucc":
        langs = list(config.languages or ("zh",))
        for code in langs:
            try:
                s = evaluate_bucc(config.model, code, adapter=adapter, progress=progress, device=device)
            except AdaptertxError as e:
                missing[code] = str(e)
                continue
            results[code] = LanguageResult({"f1": round(s.f1, 4), "precision": round(s.precision, 4),
                                            "recall": round(s.recall, 4)}, s.gold, is_low(code), "dev", "bundled",
                                           floor=rounded({"majority": None, "chance": s.chance}))
        protocol = {"description": BUCC_PROTOCOL}
    elif task.name == "lareqa":
        results, missing = _evaluate_lareqa(config, adapter, progress, device)
        protocol = {"description": "mAP@20 over one candidate pool of every given language (Roy et al., 2020)"}
    elif task.name == "mewsli_x":
        results, missing, notes = _evaluate_mewsli(config, adapter, progress, device)
        protocol = {"description": "mAP@20 of each mention against the candidate entities' descriptions (XTREME-R)"}
    else:
        hub = task.hub.dataset or task.hub.note
        for code in config.languages or task.languages:
            missing[code] = (f"{task.name} ({task.metric}) is not bundled and the Hub is needed for it "
                             f"({hub})")
    primary = PRIMARY.get(task.metric, "f1")  # BUCC's F1 has no per-example counts and no PRIMARY entry
    record = trace(config, inter, base_print, None, start, device=device)
    if protocol is not None:
        record["protocol"] = {**protocol, "prefixes": prefixes}
    return EvalResult(task.name, task.metric, primary, results, missing, record, notes)


def _prefixes_used(model, task: Task) -> dict[str, str]:
    """The text put before the queries and the candidates of ``task`` under ``model``, as
    :func:`~adaptertx.retrieval.retrieval_prefixes` gives it to the encoders."""
    kind = "asymmetric" if task.name in ASYMMETRIC_TARGETS else "symmetric"
    query, candidate = retrieval_prefixes(model, kind)
    return {"kind": kind, "query": query, "candidate": candidate}


#: Retrieval targets whose queries and candidates are different kinds of text (the rest are symmetric).
ASYMMETRIC_TARGETS = ("lareqa", "mewsli_x")


def _evaluate_lareqa(config: EvalConfig, adapter: str | None, progress: bool, device: torch.device
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
    context together, which a plain sentence encoder has no input for. Prefixes are the
    model's for an asymmetric task (:func:`~adaptertx.retrieval.retrieval_prefixes`: e5 takes
    ``"query: "`` for questions and ``"passage: "`` for candidates; other models none).

    Data: the user's files (``--data-file LANG=xquad-r/LANG.json``); XQuAD-R is not bundled,
    and its Hub copy keeps only SQuAD's fields (id, context, question, answers), without the
    sentence breaks the candidates are, so a language without a file is listed as missing.

    Returns:
        ({lang: result}, {lang: why not scored}).
    """
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

    q_encoder, c_encoder = _query_passage_encoders(config.model, adapter, device=device)
    cand_emb = c_encoder(cand_texts, progress=progress)
    results = {}
    for code in progress_bar(langs, progress, "lareqa"):
        questions = subset(sets[code]["questions"], config.max_eval_examples)
        q_emb = q_encoder([q["question"] for q in questions])
        _, index = knn(q_emb, cand_emb, MAP_K)
        stats = [[average_precision_at_k(answers[q["id"]], [cand_ids[j] for j in row], MAP_K)]
                 for q, row in zip(questions, index.tolist(), strict=True)]
        scores = stats_score(task, stats_sums(stats))
        results[code] = LanguageResult(rounded(scores), len(questions), is_low(code, config), "test", str(own[code]),
                                       stats, ids_sha(questions))
    return results, missing


def _query_passage_encoders(model_name: str, adapter: str | None, max_length: int = 512, *,
                            device: torch.device | str = "auto"):
    """Two :class:`~adaptertx.retrieval.SentenceEncoder` over one loaded model (its retrieval
    layer, the intermediate adapter when there is one): for queries and for passages, with the
    model's prefixes for an asymmetric task (:func:`~adaptertx.retrieval.retrieval_prefixes`)."""
    model, tokenizer, _ = load_encoder(model_name, adapter, device=device)
    layer, _ = resolve_layer_prefix(model, None, None)
    query, passage = retrieval_prefixes(model, "asymmetric")
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


def _evaluate_mewsli(config: EvalConfig, adapter: str | None, progress: bool, device: torch.device
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
    queries = {code: subset(by_lang[code], config.max_eval_examples) for code in langs}
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
    q_encoder, c_encoder = _query_passage_encoders(config.model, adapter, config.max_length, device=device)
    cand_ids = [c["id"] for c in candidates]
    cand_emb = c_encoder([c["text"] for c in candidates], progress=progress)
    results = {}
    for code in progress_bar(langs, progress, "mewsli_x"):
        rows = queries[code]
        _, index = knn(q_encoder([f"{m['mention']}: {m['sentence']}" for m in rows]), cand_emb, MAP_K)
        stats = [[average_precision_at_k({m["entity_id"]}, [cand_ids[j] for j in row], MAP_K)]
                 for m, row in zip(rows, index.tolist(), strict=True)]
        results[code] = LanguageResult(rounded(stats_score(task, stats_sums(stats))), len(rows), is_low(code, config),
                                       split, str(mentions_path), stats, ids_sha(rows))
    return results, missing, notes
