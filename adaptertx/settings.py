"""How to train: one settings type for every training run adaptertx makes.

:class:`TrainSettings` holds what decides an optimisation (epochs, batch size, learning rate,
schedule, lengths, limits, seed, checkpointing); every config that trains something embeds one
(:class:`adaptertx.training.TrainConfig`, :class:`adaptertx.training.MultitaskConfig`,
:class:`adaptertx.evaluation.EvalConfig`, a study's budgets, AdapterFusion training) and the
CLI builds its options from the fields (:func:`field_help`), so every default and every check
is written here once. Runs write the settings flat into ``run.json`` (:meth:`to_json`).

The presets are the defaults of each kind of training:

- :data:`TRAIN` — task adapters (``adaptertx train``, multi-task training);
- :data:`FUSION` — AdapterFusion layers over frozen task adapters (a lower learning rate);
- :data:`TARGET` — the zero-shot target adapter trained on English (``adaptertx evaluate``)
  and a study's budgets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from adaptertx.errors import AdaptertxError

#: The base model wherever none is named: multilingual-e5-small, converted from a registry package.
DEFAULT_MODEL = "me5-small"
#: The adapter-init seed of a base: one per base, so task adapters start alike and average.
ADAPTER_SEED = 42
#: The ``adapters`` config of new adapters.
ADAPTER = "seq_bn"
#: How the frozen base is stored.
QUANT = "int8"
QUANT_MODES = ("int8", "bnb-int8", "bf16", "none")


def check_quant(quant: str) -> str:
    """``quant`` unchanged, or a one-line error naming the storage modes."""
    if quant not in QUANT_MODES:
        raise AdaptertxError(f"unknown quantisation {quant!r}; choose one of {', '.join(QUANT_MODES)}")
    return quant


def _help(text: str, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How to train (the optimisation, not the model): every field is checked on creation.

    Configs that train something extend it (their own fields come first and may be positional;
    these are keyword-only), so ``TrainConfig(task="siqa", epochs=1)`` reads as one flat config.
    """

    epochs: int = _help("Passes over the training data.", 3)
    batch_size: int = _help("Examples per forward.", 16)
    grad_accum: int = _help("Forwards per optimiser step.", 1)
    lr: float = _help("Peak learning rate of AdamW.", 1e-4)
    weight_decay: float = _help("AdamW weight decay.", 0.01)
    warmup: float = _help("Fraction of the optimiser steps spent warming up linearly.", 0.1)
    max_length: int = _help("Tokens per input (longer inputs are truncated, with a warning).", 128)
    max_examples: int | None = _help("Use at most N examples per split (a fixed subset).", None)
    max_steps: int | None = _help("Stop after N optimiser steps.", None)
    seed: int = _help("Data order and dropout.", 0)
    gradient_checkpointing: bool = _help("Recompute activations in backward to save memory.", False)
    save_every: int = _help("Write a resume checkpoint every N optimiser steps (and at epoch ends).", 100)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be at least 1, got {self.grad_accum}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be positive, got {self.lr}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be non-negative, got {self.weight_decay}"),
            (0 <= self.warmup < 1, f"warmup is a fraction in [0, 1), got {self.warmup}"),
            (self.max_length >= 8, f"max_length must be at least 8, got {self.max_length}"),
            (self.max_examples is None or self.max_examples >= 1,
             f"max_examples must be at least 1 or unset, got {self.max_examples}"),
            (self.max_steps is None or self.max_steps >= 1,
             f"max_steps must be at least 1 or unset, got {self.max_steps}"),
            (self.save_every >= 1, f"save_every must be at least 1, got {self.save_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise AdaptertxError(message)

    def settings(self) -> TrainSettings:
        """Just the training settings (of a config that extends them)."""
        return TrainSettings(**{n: getattr(self, n) for n in names()})

    def training_json(self) -> dict:
        """The training settings as JSON values."""
        return {n: getattr(self, n) for n in names()}

    def replace(self, **changes: Any) -> TrainSettings:
        """A copy with ``changes`` (names that are no field are a clear error)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise AdaptertxError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


def _like(name: str, default: Any) -> Any:
    """A field of :class:`TrainSettings` with another default (its help text kept)."""
    return _help(TrainSettings.__dataclass_fields__[name].metadata["help"], default)


@dataclass(frozen=True, kw_only=True)
class TargetSettings(TrainSettings):
    """The defaults of zero-shot target training (and of a study's budgets): a new target adapter
    learns fast from English data, so fewer epochs at a higher learning rate."""

    epochs: int = _like("epochs", 2)
    lr: float = _like("lr", 1e-3)


def names() -> tuple[str, ...]:
    """The field names of :class:`TrainSettings`."""
    return tuple(f.name for f in dataclasses.fields(TrainSettings))


def preset(method: str | None) -> TrainSettings:
    """The default settings of a training: :data:`FUSION` for ``fusion``, else :data:`TRAIN`."""
    return FUSION if method == "fusion" else TRAIN


def field_help() -> dict[str, str]:
    """Each field's help text (the CLI's option help)."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainSettings)}


def check_names(values: dict, kind: str) -> dict:
    """``values`` unchanged, or a clear error naming the keys that are no training setting."""
    unknown = sorted(set(values) - set(names()))
    if unknown:
        raise AdaptertxError(f"unknown {kind}(s) {', '.join(unknown)}; known: {', '.join(names())}")
    return values


def split(values: dict) -> tuple[dict, dict]:
    """``values`` split into (the training settings among them, the rest)."""
    known = set(names())
    return {k: v for k, v in values.items() if k in known}, {k: v for k, v in values.items() if k not in known}


def _check_type(name: str, value: Any, annotation: str) -> None:
    """A one-line error for a value of the wrong type (as a TOML file or a caller may give)."""
    optional = "None" in annotation
    if value is None and optional:
        return
    want = annotation.split("|")[0].strip()
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool)}.get(want, True)
    if not ok:
        kind = {"int": "a whole number", "float": "a number", "bool": "true or false"}[want]
        raise AdaptertxError(f"{name} must be {kind}{' or unset' if optional else ''}, got {value!r}")


#: Task adapters: ``adaptertx train`` and multi-task training.
TRAIN = TrainSettings()
#: AdapterFusion layers trained over frozen task adapters.
FUSION = TRAIN.replace(lr=5e-5)
#: The zero-shot target adapter trained on English, and a study's budgets.
TARGET = TargetSettings()
