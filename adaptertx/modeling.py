"""Build an ``adapters`` model for one task: a frozen (optionally 8-bit) base, one adapter, one head.

Quantisation modes (``quant``):

- ``"int8"`` — adaptertx's int8-storage, bf16-compute linear layers (:mod:`adaptertx.quantize`),
  the rest of the base (embeddings, LayerNorms) in bf16;
- ``"bnb-int8"`` — bitsandbytes LLM.int8 (``Linear8bitLt`` through ``BitsAndBytesConfig``),
  the standard on CUDA, slow on CPU; bitsandbytes comes with the ``bnb`` extra;
- ``"bf16"`` — the base in bf16; ``"none"`` — fp32.

Adapters and heads stay fp32 (their optimiser needs the precision); the forward runs under
bf16 autocast whenever the base computes in bf16, so no dtype mismatch reaches users.

Dropout layers become :class:`adaptertx.kernels.Dropout` (one pass, no stored mask, on CPU;
torch's own dropout elsewhere).

Devices: :func:`load_base` puts the base on the device asked for (``auto``, ``cpu``, ``cuda``,
``cuda:N``; bitsandbytes places an 8-bit base itself, through ``device_map``). The ``adapters``
library creates and loads adapters, AdapterFusion layers and heads on the CPU whatever the
base's device: :func:`to_base_device` moves them next to the base, and every builder here calls
it once its adapters and heads are in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaptertx.environment import resolve_device
from adaptertx.errors import AdaptertxError, import_optional
from adaptertx.kernels.dropout import use_fast_dropout
from adaptertx.models import fingerprint, load_tokenizer, resolve
from adaptertx.settings import ADAPTER, ADAPTER_SEED, QUANT, check_quant
from adaptertx.tasks import TRAINABLE_FAMILIES, Task


@dataclass(frozen=True)
class BuiltModel:
    """A model ready to train: the ``adapters`` model, its tokenizer and facts about it.

    Attributes:
        model: an ``adapters`` flexible-head model with the adapter and head added, the
            adapter active and training set up (everything else frozen).
        tokenizer: the base model's tokenizer.
        name: the adapter and head name (the task name).
        fingerprint: the base model's :func:`adaptertx.models.fingerprint`.
        autocast: whether forwards must run under bf16 autocast.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fingerprint: str
    autocast: bool


def check_trainable(task: Task) -> None:
    """Refuse tasks no prediction head can train (retrieval has no head)."""
    if task.family not in TRAINABLE_FAMILIES:
        raise AdaptertxError(f"task {task.name!r} is a {task.family} task: adapters are trained for "
                             f"{', '.join(TRAINABLE_FAMILIES)} tasks (score retrieval with `adaptertx retrieve`)")


def load_base(model_name: str, quant: str, *, device: str | torch.device | None = "auto",
              ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base encoder as an ``adapters`` flexible-head model, stored as ``quant`` asks, on
    ``device`` (:func:`adaptertx.environment.resolve_device`)."""
    from adapters import AutoAdapterModel

    check_quant(quant)
    device = resolve_device(device)
    kwargs = {}
    if quant == "bnb-int8":
        from transformers import BitsAndBytesConfig

        import_optional("bitsandbytes", "bnb", "quant 'bnb-int8'")
        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "dtype": torch.float32}
        if device.type != "cpu":
            kwargs["device_map"] = {"": str(device)}  # bitsandbytes quantises as it places the weights
    source = resolve(model_name)
    try:
        model = AutoAdapterModel.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise AdaptertxError(f"could not load {model_name!r} as an adapter model: {str(e).splitlines()[0]}") from None
    if quant == "int8":
        from adaptertx.quantize import quantize_linears

        quantize_linears(model.base_model)
        # What stays floating point (embeddings, LayerNorms) is stored in bf16, as in the bf16
        # base: activations then flow in bf16 between the int8 layers, and the embedding
        # matrix takes half the bytes. The int8 layers' scales are buffers and stay fp32.
        for p in model.base_model.parameters():
            p.data = p.data.to(torch.bfloat16)
    elif quant == "bf16":
        model.base_model.to(torch.bfloat16)
    if quant != "bnb-int8":
        model.to(device)
    use_fast_dropout(model)
    return model, load_tokenizer(source)


def base_device(model: PreTrainedModel) -> torch.device:
    """The device of a model's base (of its first parameter: the embeddings)."""
    base = getattr(model, "base_model", model)
    return next(base.parameters()).device


def to_base_device(model: PreTrainedModel) -> torch.device:
    """Move whatever of ``model`` is not on its base's device (the adapters, AdapterFusion layers
    and heads that ``adapters`` creates and loads on the CPU) there; returns that device.

    Moves each such parameter's or buffer's module, never the base's own modules, so an 8-bit
    base that bitsandbytes placed is left alone.
    """
    device = base_device(model)
    stray = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.device != device]
    for owner in dict.fromkeys(name.rpartition(".")[0] for name in stray):
        model.get_submodule(owner).to(device)
    return device


def add_head(model: PreTrainedModel, task: Task, name: str) -> None:
    """Add the prediction head ``task.family`` needs, named ``name``."""
    if task.family == "classification":
        model.add_classification_head(name, num_labels=len(task.labels),
                                      id2label=dict(enumerate(task.labels)))
    elif task.family == "multiple_choice":
        if task.num_choices < 2:
            raise AdaptertxError(f"task {task.name!r} does not say how many choices its items have")
        model.add_multiple_choice_head(name, num_choices=task.num_choices)
    elif task.family == "extractive_qa":
        model.add_qa_head(name)
    elif task.family == "tagging":
        model.add_tagging_head(name, num_labels=len(task.labels), id2label=dict(enumerate(task.labels)))
    else:
        check_trainable(task)


def adapter_config(adapter: str):
    """The ``adapters`` config called ``adapter`` (``seq_bn``, ``lora``, ...), or a clear error."""
    from adapters import AdapterConfig

    try:
        return AdapterConfig.load(adapter)
    except (ValueError, TypeError, KeyError, OSError):
        raise AdaptertxError(f"unknown adapter config {adapter!r}; "
                             f"try seq_bn, double_seq_bn, par_bn, lora or ia3") from None


def build_adapter_model(model_name: str, task: Task | Sequence[Task], *, adapter: str = ADAPTER,
                        quant: str = QUANT, adapter_seed: int = ADAPTER_SEED, name: str | None = None,
                        device: str | torch.device | None = "auto") -> BuiltModel:
    """Load the base, add one adapter and one head per task, and set up adapter training (base
    frozen; the adapter and every head trainable).

    Args:
        model_name: a model name, folder or Hub id.
        task: the task to train, or several (multi-task training: one head per task, each
            named by its task, picked per batch with ``model(**batch, head=task)``).
        adapter: an ``adapters`` config name (``seq_bn``, ``double_seq_bn``, ``par_bn``, ``lora``,
            ``ia3``, …).
        quant: one of :data:`QUANT_MODES`.
        adapter_seed: seeds the adapter's and the heads' initial weights. One seed per base
            (the default) gives every task adapter the same initialisation, which weight
            averaging needs.
        name: the adapter's name (default: the task's name; required for several tasks).
        device: where the base, the adapter and the heads go (:func:`load_base`).
    """
    tasks = [task] if isinstance(task, Task) else list(task)
    if name is None:
        if len(tasks) != 1:
            raise AdaptertxError("an adapter for several tasks needs a name")
        name = tasks[0].name
    for t in tasks:
        check_trainable(t)
    config = adapter_config(adapter)
    model, tokenizer = load_base(model_name, quant, device=device)
    torch.manual_seed(adapter_seed)
    model.add_adapter(name, config=config)
    for t in tasks:
        add_head(model, t, t.name)
    to_base_device(model)
    model.train_adapter(name)
    for t in tasks:
        for p in model.heads[t.name].parameters():
            p.requires_grad_(True)
    use_fast_dropout(model)  # the heads' dropout layers
    adapter_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "heads." not in n)
    if adapter_params == 0:
        raise AdaptertxError(f"adapter {adapter!r} added no trainable parameters on the {quant} base "
                             f"(the adapters library cannot wrap these layers); use --quant int8 or bf16")
    return BuiltModel(model, tokenizer, name, fingerprint(model.base_model), autocast=quant != "none")


def rename_key(key: str, old: str, new: str) -> str:
    """A state-dict key with the name component ``old`` (an adapter or head name) replaced by ``new``."""
    return ".".join(new if part == old else part for part in key.split("."))


def load_base_checked(model_name: str, quant: str, expected: str, *, device: str | torch.device | None = "auto",
                      ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model, tokenizer, fingerprint): the base ``model_name`` stored as ``quant`` on ``device``,
    refused unless its fingerprint is ``expected`` (the base the adapters to load were trained on).
    Adapters and heads loaded into it afterwards go to its device with :func:`to_base_device`."""
    model, tokenizer = load_base(model_name, quant, device=device)
    base_print = fingerprint(model.base_model)
    if base_print != expected:
        raise AdaptertxError(f"base {model_name!r} (fingerprint {base_print}) is not the base the adapters were "
                             f"trained on ({expected})")
    return model, tokenizer, base_print


def trainable_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The trainable tensors (adapter and head) by parameter name, detached, on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> None:
    """Copy :func:`trainable_state` output back into ``model`` (names and shapes must match)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise AdaptertxError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for n, p in params.items():
            if p.shape != state[n].shape:
                raise AdaptertxError(f"checkpoint tensor {n} has shape {tuple(state[n].shape)}, "
                                     f"model needs {tuple(p.shape)}")
            p.copy_(state[n])
