"""Turn task examples into model inputs, and model outputs back into task predictions.

:func:`encode_examples` takes examples in the schema of their task family (see
:mod:`adaptertx.data`) and returns :class:`Features`: padded tensors named as the
``adapters`` prediction heads expect, plus what decoding needs. :func:`decode_predictions`
maps head logits back to predictions in the form :func:`adaptertx.metrics.score` takes.

======================  ====================================================  ===================================
family                  tensors (``n`` rows, ``L`` tokens)                    predictions
======================  ====================================================  ===================================
classification          ``input_ids``/``attention_mask``: (n, L);             label strings, one per example
                        ``labels``: (n,) index in ``task.labels``
multiple_choice         ``input_ids``/``attention_mask``: (n, C, L);          choice indices, one per example
                        ``labels``: (n,)
extractive_qa           ``input_ids``/``attention_mask``: (windows, L);       ``{example id: answer text}``
                        ``start_positions``/``end_positions``: (windows,)
tagging                 ``input_ids``/``attention_mask``/``labels``: (n, L)   tag lists, one tag per word
======================  ====================================================  ===================================

``token_type_ids`` is included exactly when the tokenizer returns it (BERT-style
tokenizers do, XLM-R's does not; a BERT encoder fed by the XLM-R tokenizer, such as the
default ``me5-small``, then uses segment 0 everywhere, as it was trained).

Padding is on the right with the tokenizer's pad id, to the longest row of the set;
:meth:`Features.batch` cuts the columns that are padding in every row of a batch. Texts are
encoded as given: no model-specific prefix (such as e5's ``"passage: "``) is added.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from adaptertx.errors import AdaptertxError
from adaptertx.tasks import TRAINABLE_FAMILIES, Task

__all__ = ["Features", "encode_examples", "decode_predictions", "postprocess_qa", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # label of positions the loss skips (torch's CrossEntropyLoss default)
_LABEL_KEYS = ("labels", "start_positions", "end_positions")


@dataclass
class Features:
    """Encoded examples of one task.

    Attributes:
        task: the task the examples belong to.
        tensors: model inputs and labels by name (shapes in the module docstring).
        example_ids: for every row, the id of the example it encodes (extractive QA: one
            example gives one row per context window).
        truncated: how many examples lost tokens to ``max_length`` (extractive QA: how many
            questions were cut to ``max_query_length``; long contexts are split into windows,
            never cut).
        offsets: extractive QA only: for every row and token, the ``(start, end)`` character
            span of a context token in its example's context, ``None`` for question, special
            and padding tokens.
        contexts: extractive QA only: example id → context.
        cls_index: extractive QA only: the CLS position of every row (the null answer).
        word_index: tagging only: (n, L) index of the word whose first sub-token sits at each
            position, -1 elsewhere.
        num_words: tagging only: the number of words of each example.
    """

    task: Task
    tensors: dict[str, torch.Tensor]
    example_ids: list[str]
    truncated: int = 0
    offsets: list[list[tuple[int, int] | None]] | None = None
    contexts: dict[str, str] | None = None
    cls_index: list[int] | None = None
    word_index: torch.Tensor | None = None
    num_words: list[int] | None = None
    _length: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mask = self.tensors["attention_mask"]
        # Index of the last attended token + 1, per row (over all choices for multiple choice).
        lengths = torch.where(mask.bool(), torch.arange(1, mask.shape[-1] + 1), 0).amax(dim=-1)
        self._length = lengths.amax(dim=-1) if lengths.dim() > 1 else lengths

    def __len__(self) -> int:
        return len(self.example_ids)

    @property
    def num_examples(self) -> int:
        """How many distinct examples the rows encode."""
        return len(dict.fromkeys(self.example_ids))

    @property
    def seq_len(self) -> int:
        """``L``, the padded length of every row."""
        return self.tensors["input_ids"].shape[-1]

    def batch(self, indices: Sequence[int] | torch.Tensor, *, labels: bool = True) -> dict[str, torch.Tensor]:
        """The rows ``indices`` as keyword arguments for the model, cut to their longest row.

        Args:
            indices: row numbers.
            labels: include ``labels`` / ``start_positions`` / ``end_positions``.
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.dim() != 1 or idx.numel() == 0:
            raise AdaptertxError("batch indices must be a non-empty 1-D sequence of row numbers")
        if int(idx.min()) < -len(self) or int(idx.max()) >= len(self):
            raise AdaptertxError(f"batch index out of range for {len(self)} rows")
        width = max(int(self._length[idx].max()), 1)
        out = {}
        for name, t in self.tensors.items():
            if not labels and name in _LABEL_KEYS:
                continue
            t = t[idx]
            out[name] = t[..., :width].contiguous() if t.dim() >= 2 else t
        return out

    def batches(self, batch_size: int, *, labels: bool = True, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """All rows in batches of ``batch_size`` (in order, or shuffled with ``generator``)."""
        if batch_size < 1:
            raise AdaptertxError(f"batch_size must be at least 1, got {batch_size}")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start:start + batch_size], labels=labels)


# ----------------------------------------------------------------------------- encoding


def encode_examples(task: Task, examples: Sequence[Mapping], tokenizer, *, max_length: int = 256,
                    doc_stride: int = 128, max_query_length: int = 64) -> Features:
    """Encode ``examples`` of ``task`` for its ``adapters`` prediction head.

    * classification: ``(text_a, text_b)`` pairs (``text_b`` may be ``None`` for every
      example), longest-first truncation; ``labels`` = index of the label in ``task.labels``.
    * multiple choice: each choice paired with the context followed by the question (either
      may be empty), longest-first truncation; every item has ``task.num_choices`` choices
      (when that is 0, as many as the first item).
    * extractive QA: question first, context second, the context split into windows of at
      most ``max_length`` tokens overlapping by ``doc_stride`` tokens (Hugging Face's
      ``stride``); ``start_positions``/``end_positions`` = the answer's first and last token
      in a window holding the whole answer (the first answer, as in SQuAD training), else
      the CLS position (also for unanswerable questions, as in SQuAD 2.0). Questions longer
      than ``max_query_length`` tokens are cut.
    * tagging: pre-split words, each labelled on its first sub-token, ``-100`` on the other
      sub-tokens, special tokens and padding; a word the tokenizer turns into no token is
      encoded as the unknown token, so every word keeps a position.

    Sequences longer than ``max_length`` are truncated, never rejected; ``Features.truncated``
    counts them.

    Raises:
        AdaptertxError: a label or tag outside the task's labels, a wrong number of choices,
            an answer outside its context, malformed examples, or impossible lengths.
    """
    if task.family not in TRAINABLE_FAMILIES:
        raise AdaptertxError(f"task {task.name!r} is a {task.family} task; encode_examples handles "
                             f"{', '.join(TRAINABLE_FAMILIES)}")
    if not examples:
        raise AdaptertxError(f"no examples to encode for task {task.name!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise AdaptertxError("encode_examples needs a fast (Rust) tokenizer: it uses offset mappings and word ids")
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < 10**6 and max_length > limit:
        raise AdaptertxError(f"max_length {max_length} exceeds the tokenizer's model_max_length {limit}")
    if max_length < tokenizer.num_special_tokens_to_add(pair=True) + 2:
        raise AdaptertxError(f"max_length {max_length} is too small to hold a token pair")
    for ex in examples:
        if not isinstance(ex, Mapping) or "id" not in ex:
            raise AdaptertxError(f"task {task.name!r}: every example must be a mapping with an 'id'")
    encoder = {"classification": _encode_classification, "multiple_choice": _encode_multiple_choice,
               "extractive_qa": _encode_qa, "tagging": _encode_tagging}[task.family]
    if task.family == "extractive_qa":
        return encoder(task, examples, tokenizer, max_length, doc_stride, max_query_length)
    return encoder(task, examples, tokenizer, max_length)


def _field(task: Task, ex: Mapping, name: str):
    try:
        return ex[name]
    except KeyError:
        raise AdaptertxError(f"task {task.name!r}: example {ex['id']!r} has no field {name!r}") from None


def _encode_pairs(tokenizer, first: list[str], second: list[str] | None, max_length: int):
    """Tokenize (pairs of) texts; longest-first truncation only for what is too long."""
    enc = tokenizer(first, second, truncation=False, verbose=False)
    rows = {k: list(v) for k, v in enc.items()}
    long = [i for i, ids in enumerate(rows["input_ids"]) if len(ids) > max_length]
    if long:
        cut = tokenizer([first[i] for i in long], [second[i] for i in long] if second is not None else None,
                        truncation="longest_first", max_length=max_length)
        for j, i in enumerate(long):
            for k in rows:
                rows[k][i] = cut[k][j]
    return rows, long


def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _pad_inputs(tokenizer, rows: dict[str, list[list[int]]], width: int | None = None) -> dict[str, torch.Tensor]:
    if width is None:
        width = max(len(r) for r in rows["input_ids"])
    out = {}
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        if name in rows:
            value = tokenizer.pad_token_id if name == "input_ids" else 0
            out[name] = _pad(rows[name], width, value)
    return out


def _encode_classification(task: Task, examples, tokenizer, max_length: int) -> Features:
    if not task.labels:
        raise AdaptertxError(f"task {task.name!r} has no label set")
    index = {lab: i for i, lab in enumerate(task.labels)}
    first, second, labels = [], [], []
    for ex in examples:
        label = _field(task, ex, "label")
        if label not in index:
            raise AdaptertxError(f"task {task.name!r}: example {ex['id']!r} has label {label!r}, not one of "
                                 f"{', '.join(task.labels)}")
        first.append(str(_field(task, ex, "text_a")))
        second.append(ex.get("text_b"))
        labels.append(index[label])
    if all(b is None for b in second):
        second = None
    elif any(b is None for b in second):
        raise AdaptertxError(f"task {task.name!r}: either every example or none has a text_b")
    rows, long = _encode_pairs(tokenizer, first, second, max_length)
    tensors = _pad_inputs(tokenizer, rows)
    tensors["labels"] = torch.tensor(labels, dtype=torch.long)
    return Features(task, tensors, [str(ex["id"]) for ex in examples], len(long))


def _encode_multiple_choice(task: Task, examples, tokenizer, max_length: int) -> Features:
    n_choices = task.num_choices or len(_field(task, examples[0], "choices"))
    first, second, labels = [], [], []
    for ex in examples:
        choices = _field(task, ex, "choices")
        if not isinstance(choices, (list, tuple)) or len(choices) != n_choices:
            got = len(choices) if isinstance(choices, (list, tuple)) else type(choices).__name__
            raise AdaptertxError(f"task {task.name!r}: example {ex['id']!r} has {got} choices, expected {n_choices}")
        label = _field(task, ex, "label")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_choices:
            raise AdaptertxError(f"task {task.name!r}: example {ex['id']!r} has label {label!r}, expected an "
                                 f"integer in 0..{n_choices - 1}")
        prompt = " ".join(s for s in (str(ex.get("context") or "").strip(), str(ex.get("question") or "").strip()) if s)
        first.extend([prompt] * n_choices)
        second.extend(str(c) for c in choices)
        labels.append(label)
    rows, long = _encode_pairs(tokenizer, first, second, max_length)
    flat = _pad_inputs(tokenizer, rows)
    tensors = {k: v.view(len(examples), n_choices, -1) for k, v in flat.items()}
    tensors["labels"] = torch.tensor(labels, dtype=torch.long)
    truncated = len({i // n_choices for i in long})
    return Features(task, tensors, [str(ex["id"]) for ex in examples], truncated)


def _cut_questions(tokenizer, questions: list[str], max_query_length: int) -> int:
    """Cut questions longer than ``max_query_length`` tokens in place; return how many."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    cut = 0
    for i, ids in enumerate(enc["input_ids"]):
        if len(ids) <= max_query_length:
            continue
        cut += 1
        keep = max_query_length
        while keep > 0:
            text = questions[i][:enc["offset_mapping"][i][keep - 1][1]]
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_query_length:
                break
            keep -= 1
        questions[i] = text if keep > 0 else ""
    return cut


def _answer_span(task: Task, ex: Mapping) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of an example's first answer, or None if unanswerable."""
    answers = ex.get("answers") or {}
    texts, starts = answers.get("text") or [], answers.get("answer_start") or []
    if len(texts) != len(starts):
        raise AdaptertxError(f"task {task.name!r}: example {ex['id']!r} has {len(texts)} answer texts but "
                             f"{len(starts)} answer_start values")
    if not texts or texts[0] == "":
        return None
    start, end = int(starts[0]), int(starts[0]) + len(texts[0])
    if start < 0 or end > len(ex["context"]):
        raise AdaptertxError(f"task {task.name!r}: example {ex['id']!r} has an answer at characters "
                             f"{start}..{end}, outside its context of {len(ex['context'])} characters")
    return start, end


def _encode_qa(task: Task, examples, tokenizer, max_length: int, doc_stride: int,
               max_query_length: int) -> Features:
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    room = max_length - max_query_length - specials
    if max_query_length < 1 or room <= 0:
        raise AdaptertxError(f"max_length {max_length} leaves no room for the context after a question of "
                             f"up to {max_query_length} tokens")
    if not 0 <= doc_stride < room:
        raise AdaptertxError(f"doc_stride {doc_stride} must be below {room} (max_length - max_query_length - "
                             f"{specials} special tokens) so that consecutive windows advance")
    questions = [str(_field(task, ex, "question")).lstrip() for ex in examples]
    contexts = [str(_field(task, ex, "context")) for ex in examples]
    ctx_by_id = {str(ex["id"]): c for ex, c in zip(examples, contexts, strict=True)}
    if len(ctx_by_id) != len(examples):
        raise AdaptertxError(f"task {task.name!r}: example ids are not unique; QA answers are keyed by id")
    spans = [_answer_span(task, ex) for ex in examples]
    truncated = _cut_questions(tokenizer, questions, max_query_length)
    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    sample_map = enc["overflow_to_sample_mapping"]
    offsets, starts, ends, ids, cls_index = [], [], [], [], []
    for row, input_ids in enumerate(enc["input_ids"]):
        seq = enc.sequence_ids(row)
        offs = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][row], seq, strict=True)]
        ex_i = sample_map[row]
        cls = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        start = end = cls
        span = spans[ex_i]
        ctx = [k for k, o in enumerate(offs) if o is not None]
        if span is not None and ctx and offs[ctx[0]][0] <= span[0] and offs[ctx[-1]][1] >= span[1]:
            start = max(k for k in ctx if offs[k][0] <= span[0])
            end = min(k for k in ctx if offs[k][1] >= span[1])
        offsets.append(offs)
        starts.append(start)
        ends.append(end)
        cls_index.append(cls)
        ids.append(str(examples[ex_i]["id"]))
    rows = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    tensors = _pad_inputs(tokenizer, rows)
    width = tensors["input_ids"].shape[1]
    offsets = [o + [None] * (width - len(o)) for o in offsets]
    tensors["start_positions"] = torch.tensor(starts, dtype=torch.long)
    tensors["end_positions"] = torch.tensor(ends, dtype=torch.long)
    return Features(task, tensors, ids, truncated, offsets=offsets, contexts=ctx_by_id, cls_index=cls_index)


def _encode_tagging(task: Task, examples, tokenizer, max_length: int) -> Features:
    if not task.labels:
        raise AdaptertxError(f"task {task.name!r} has no tag set")
    index = {lab: i for i, lab in enumerate(task.labels)}
    words, tags = [], []
    for ex in examples:
        toks, tg = _field(task, ex, "tokens"), _field(task, ex, "tags")
        if len(toks) != len(tg):
            raise AdaptertxError(f"task {task.name!r}: example {ex['id']!r} has {len(toks)} tokens but "
                                 f"{len(tg)} tags")
        bad = [t for t in tg if t not in index]
        if bad:
            raise AdaptertxError(f"task {task.name!r}: example {ex['id']!r} has tag {bad[0]!r}, not one of "
                                 f"{', '.join(task.labels)}")
        words.append([str(w) for w in toks])
        tags.append([index[t] for t in tg])
    # A word the tokenizer turns into nothing (e.g. a lone zero-width character) becomes the
    # unknown token, so that every word has a first sub-token to be labelled on.
    vocab = list(dict.fromkeys(w for ws in words for w in ws))
    empty = {w for w, ids in zip(vocab, tokenizer(vocab, add_special_tokens=False)["input_ids"], strict=True)
             if not ids}
    if empty:
        words = [[tokenizer.unk_token if w in empty else w for w in ws] for ws in words]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    rows = {k: list(v) for k, v in enc.items()}
    word_ids = [enc.word_ids(i) for i in range(len(words))]
    tensors = _pad_inputs(tokenizer, rows)
    width = tensors["input_ids"].shape[1]
    labels = torch.full((len(words), width), IGNORE_INDEX, dtype=torch.long)
    word_index = torch.full((len(words), width), -1, dtype=torch.long)
    truncated = 0
    for i, wid in enumerate(word_ids):
        previous = None
        labelled = 0
        for pos, w in enumerate(wid):
            if w is not None and w != previous:
                labels[i, pos] = tags[i][w]
                word_index[i, pos] = w
                labelled += 1
            previous = w
        if labelled < len(words[i]):
            truncated += 1
    tensors["labels"] = labels
    return Features(task, tensors, [str(ex["id"]) for ex in examples], truncated,
                    word_index=word_index, num_words=[len(w) for w in words])


# ----------------------------------------------------------------------------- decoding


def _as_logits(logits, rows: int, width: int | None, name: str) -> torch.Tensor:
    """A (rows, [width,] ...) float tensor from a tensor, an array or a list of batch outputs.

    Batch outputs cut to different lengths (see :meth:`Features.batch`) are padded on the
    right with ``-inf`` to ``width``.
    """
    parts = list(logits) if isinstance(logits, (list, tuple)) else [logits]
    parts = [torch.as_tensor(p).detach().float().cpu() for p in parts]
    if width is not None:
        padded = []
        for p in parts:
            if p.dim() < 2 or p.shape[1] > width:
                raise AdaptertxError(f"{name}: expected shape (rows, up to {width}, ...), got {tuple(p.shape)}")
            if p.shape[1] < width:
                fill = p.new_full((p.shape[0], width - p.shape[1], *p.shape[2:]), float("-inf"))
                p = torch.cat([p, fill], dim=1)
            padded.append(p)
        parts = padded
    out = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    if out.shape[0] != rows:
        raise AdaptertxError(f"{name}: got {out.shape[0]} rows of logits for {rows} feature rows")
    return out


def decode_predictions(task: Task, features: Features, logits, **qa_options) -> list | dict[str, str]:
    """Predictions from head logits, in the form :func:`adaptertx.metrics.score` takes.

    Args:
        task: the task ``features`` were encoded for.
        features: the output of :func:`encode_examples`.
        logits: classification (n, num_labels); multiple choice (n, num_choices); tagging
            (n, L', num_labels); extractive QA a pair ``(start_logits, end_logits)`` of
            (windows, L'). ``L' <= L``; each may also be a list of per-batch outputs in row
            order (as from :meth:`Features.batches` without shuffling), padded here.
        **qa_options: passed to :func:`postprocess_qa`.

    Returns:
        classification: label strings; multiple choice: choice indices; tagging: one tag list
        per example (one tag per word); extractive QA: ``{example id: answer text}``.
    """
    if features.task.name != task.name:
        raise AdaptertxError(f"features were encoded for task {features.task.name!r}, not {task.name!r}")
    if task.family == "extractive_qa":
        if not isinstance(logits, (tuple, list)) or len(logits) != 2:
            raise AdaptertxError("extractive QA logits must be a pair (start_logits, end_logits)")
        return postprocess_qa(features, logits[0], logits[1], **qa_options)
    if qa_options:
        raise AdaptertxError(f"options {', '.join(sorted(qa_options))} apply to extractive QA only")
    if task.family == "tagging":
        return _decode_tagging(task, features, _as_logits(logits, len(features), features.seq_len, "tagging logits"))
    scores = _as_logits(logits, len(features), None, f"{task.family} logits")
    if scores.dim() != 2:
        raise AdaptertxError(f"{task.family} logits must be (rows, classes), got {tuple(scores.shape)}")
    best = scores.argmax(dim=-1).tolist()
    if task.family == "classification":
        if scores.shape[1] != len(task.labels):
            raise AdaptertxError(f"got {scores.shape[1]} logits per row for {len(task.labels)} labels")
        return [task.labels[i] for i in best]
    n_choices = features.tensors["input_ids"].shape[1]
    if scores.shape[1] != n_choices:
        raise AdaptertxError(f"got {scores.shape[1]} logits per row for {n_choices} choices")
    return best


def _fallback_tag(labels: Sequence[str]) -> str:
    for tag in ("O", "X"):
        if tag in labels:
            return tag
    return labels[0]


def _decode_tagging(task: Task, features: Features, logits: torch.Tensor) -> list[list[str]]:
    if logits.dim() != 3 or logits.shape[2] != len(task.labels):
        raise AdaptertxError(f"tagging logits must be (rows, L, {len(task.labels)}), got {tuple(logits.shape)}")
    best = logits.argmax(dim=-1)
    fallback = _fallback_tag(task.labels)
    out = []
    for i, n in enumerate(features.num_words):
        # Words cut off by max_length get the fallback tag ("O" for NER).
        tags = [fallback] * n
        pos = (features.word_index[i] >= 0).nonzero().flatten()
        for p, w in zip(pos.tolist(), features.word_index[i, pos].tolist(), strict=True):
            tags[w] = task.labels[int(best[i, p])]
        out.append(tags)
    return out


def postprocess_qa(features: Features, start_logits, end_logits, *, n_best: int = 20,
                   max_answer_length: int = 30, version_2_with_negative: bool | None = None,
                   null_score_diff_threshold: float = 0.0) -> dict[str, str]:
    """Best answer span of every example from window start/end logits (SQuAD post-processing).

    In each window the ``n_best`` highest start and end logits are paired; a pair counts when
    both tokens are context tokens, ``start <= end`` and it spans at most
    ``max_answer_length`` tokens; its score is ``start_logit + end_logit``. The answer is the
    best pair over all windows of the example. With ``version_2_with_negative`` (default:
    whether the task is ``squad_v2``) the answer is empty when the null score (CLS start +
    CLS end, the lowest over the example's windows) exceeds the best span's score by more
    than ``null_score_diff_threshold``. An example without any valid span gets ``""``.

    Args:
        features: extractive QA features from :func:`encode_examples`.
        start_logits, end_logits: (windows, L') each, ``L' <= L``, or lists of per-batch outputs.

    Returns:
        ``{example id: answer text}`` (the context slice, stripped of surrounding whitespace),
        in the order the examples were encoded.
    """
    if features.offsets is None or features.contexts is None or features.cls_index is None:
        raise AdaptertxError("postprocess_qa needs extractive QA features")
    if n_best < 1 or max_answer_length < 1:
        raise AdaptertxError("n_best and max_answer_length must be at least 1")
    if version_2_with_negative is None:
        version_2_with_negative = features.task.name == "squad_v2"
    starts = _as_logits(start_logits, len(features), features.seq_len, "start_logits")
    ends = _as_logits(end_logits, len(features), features.seq_len, "end_logits")
    if starts.dim() != 2 or ends.dim() != 2:
        raise AdaptertxError("start_logits and end_logits must be (windows, L)")
    k = min(n_best, features.seq_len)
    top_s = starts.topk(k, dim=1).indices.tolist()
    top_e = ends.topk(k, dim=1).indices.tolist()
    best: dict[str, tuple[float, str]] = {}
    null: dict[str, float] = {}
    for row, ex_id in enumerate(features.example_ids):
        offs = features.offsets[row]
        s_row, e_row = starts[row].tolist(), ends[row].tolist()
        c = features.cls_index[row]
        null_score = s_row[c] + e_row[c]
        if ex_id not in null or null_score < null[ex_id]:
            null[ex_id] = null_score
        context = features.contexts[ex_id]
        for s in top_s[row]:
            if offs[s] is None:
                continue
            for e in top_e[row]:
                if offs[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = s_row[s] + e_row[e]
                if ex_id not in best or score > best[ex_id][0]:
                    best[ex_id] = (score, context[offs[s][0]:offs[e][1]].strip())
    answers = {}
    for ex_id in dict.fromkeys(features.example_ids):
        if ex_id not in best:
            answers[ex_id] = ""
        elif version_2_with_negative and null[ex_id] - best[ex_id][0] > null_score_diff_threshold:
            answers[ex_id] = ""
        else:
            answers[ex_id] = best[ex_id][1]
    return answers
