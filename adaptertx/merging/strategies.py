"""Weight-space merging strategies: pure functions over adapters' tensors.

- ``average`` — weight averaging ("model soups", Wortsman et al., 2022) of adapters with one
  config, trained on one base: ``theta = sum_i w_i theta_i`` with the weights normalised to sum
  to 1 (uniform by default). Meaningful only for adapters that start from one initialisation:
  ``adaptertx train`` seeds it (``--adapter-seed``, one per base by default) and records the seed,
  and averaging warns when the seeds differ.
- ``task_arithmetic`` — Ilharco et al., 2023, "Editing Models with Task Arithmetic" (ICLR):
  ``theta = theta_0 + scale * sum_i (N w_i) tau_i`` with task vectors ``tau_i = theta_i - theta_0``
  relative to the shared initialisation ``theta_0`` (uniform weights: the plain sum of the paper;
  ``scale = 1/N`` gives the average).
- ``ties`` — Yadav et al., 2023, "TIES-Merging: Resolving Interference When Merging Models"
  (NeurIPS): per task vector keep the ``density`` fraction of entries largest in magnitude
  (over the whole adapter), elect each entry's sign by the sign of the sum of the trimmed
  (weighted) task vectors, average the entries that agree with it, and add ``scale`` times that
  to ``theta_0``. Weights multiply the task vectors (``N w_i``, so uniform weights are the paper).

``theta_0`` is re-created, not stored: the base's architecture, the adapter config and the
run's ``adapter_seed`` give the initial adapter weights training started from
(:func:`initial_adapter_state`).
"""

from __future__ import annotations

import math

import torch
from adapters import AdapterConfig, AutoAdapterModel
from transformers import AutoConfig

from adaptertx import rundir
from adaptertx.errors import AdaptertxError
from adaptertx.modeling import rename_key
from adaptertx.models import resolve
from adaptertx.rundir import TrainedAdapter


def seeds_differ(inputs: list[TrainedAdapter]) -> bool:
    """Whether the adapters started from different initialisations."""
    return len({i.adapter_seed for i in inputs}) > 1


def check_same_adapter_config(inputs: list[TrainedAdapter]) -> None:
    """Refuse adapters whose configs differ (their weights do not line up)."""
    first = inputs[0]
    for other in inputs[1:]:
        if other.adapter_config != first.adapter_config or other.hidden_size != first.hidden_size:
            keys = sorted(k for k in set(first.adapter_config) | set(other.adapter_config)
                          if first.adapter_config.get(k) != other.adapter_config.get(k))
            what = ", ".join(keys) if keys else "hidden_size"
            raise AdaptertxError(f"adapters of different configs cannot be merged by weights: {first.run_dir} and "
                                 f"{other.run_dir} differ in {what} (use --method fusion)")


def normalise_weights(weights: list[float] | None, n: int) -> list[float]:
    """``n`` weights summing to 1: uniform for ``None``; given ones divided by their sum.

    Refuses an empty list of inputs, a count that does not match, non-finite weights and a sum
    that is not positive.
    """
    if n < 1:
        raise AdaptertxError("nothing to merge: give at least one run folder")
    if weights is None:
        return [1.0 / n] * n
    if isinstance(weights, str):
        raise AdaptertxError(f"weights are numbers, one per run folder, or 'dev' (chosen on English dev sets); "
                             f"got {weights!r}")
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise AdaptertxError(f"{len(weights)} weights for {n} adapters: give one weight per run folder")
    if not all(math.isfinite(w) for w in weights):
        raise AdaptertxError(f"weights must be finite numbers, got {weights}")
    total = sum(weights)
    if not total > 0:
        raise AdaptertxError(f"weights must sum to a positive number, got {weights} (sum {total:g})")
    return [w / total for w in weights]



def adapter_state(inp: TrainedAdapter, name: str = "merged") -> dict[str, torch.Tensor]:
    """The input's adapter tensors, keyed with its adapter name replaced by ``name``."""
    state = rundir.load_tensors(inp.adapter_dir / "adapter.safetensors")
    return {rename_key(k, inp.adapter_name, name): v for k, v in state.items()}


def check_keys(states: list[dict[str, torch.Tensor]], inputs: list[TrainedAdapter]) -> None:
    first = states[0]
    for s, inp in zip(states[1:], inputs[1:], strict=True):
        if s.keys() != first.keys():
            diff = sorted(set(s) ^ set(first))[:3]
            raise AdaptertxError(f"the adapter in {inp.run_dir} has other tensors than {inputs[0].run_dir} ({diff})")
        for k, v in s.items():
            if v.shape != first[k].shape:
                raise AdaptertxError(f"tensor {k} has shape {tuple(v.shape)} in {inp.run_dir} but "
                                     f"{tuple(first[k].shape)} in {inputs[0].run_dir}")


def average_state(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i]`` per tensor (fp32 accumulation, each tensor's dtype out).

    One state with weight 1 returns its tensors unchanged.
    """
    if len(states) == 1 and weights == [1.0]:
        return {k: v.clone() for k, v in states[0].items()}
    out = {}
    for key, first in states[0].items():
        acc = torch.zeros_like(first, dtype=torch.float32)
        for s, w in zip(states, weights, strict=True):
            acc.add_(s[key].float(), alpha=w)
        out[key] = acc.to(first.dtype)
    return out


def task_arithmetic_state(init: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]],
                          weights: list[float], scale: float) -> dict[str, torch.Tensor]:
    """``init + scale * sum_i (N weights[i]) (states[i] - init)`` (Ilharco et al., 2023)."""
    n = len(states)
    return {k: (init[k].float() + scale * sum(n * w * (s[k].float() - init[k].float())
                                              for s, w in zip(states, weights, strict=True))
                ).to(init[k].dtype) for k in init}


def ties_state(init: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]], weights: list[float],
               density: float, scale: float) -> dict[str, torch.Tensor]:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean, relative to ``init``.

    Trimming keeps, per task vector, the ``density`` fraction of its entries (over all its
    tensors) largest in magnitude. ``weights`` (normalised) multiply the task vectors as
    ``N weights[i]``. Returns ``init + scale * merged``.
    """
    if not 0 < density <= 1:
        raise AdaptertxError(f"density is the kept fraction of each task vector, in (0, 1]; got {density}")
    n = len(states)
    keys = list(init)
    taus = []
    for s, w in zip(states, weights, strict=True):
        flat = torch.cat([(s[k].float() - init[k].float()).reshape(-1) for k in keys])
        keep = max(1, int(round(density * flat.numel())))
        if keep < flat.numel():
            threshold = flat.abs().kthvalue(flat.numel() - keep + 1).values
            flat = torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))
        taus.append(flat * (n * w))
    stacked = torch.stack(taus)                       # (n, params)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(0).clamp(min=1)
    merged = (stacked * agree).sum(0) / count
    out, offset = {}, 0
    for k in keys:
        size = init[k].numel()
        out[k] = (init[k].float() + scale * merged[offset:offset + size].view_as(init[k])).to(init[k].dtype)
        offset += size
    return out


def initial_adapter_state(inp: TrainedAdapter, name: str = "merged") -> dict[str, torch.Tensor]:
    """The adapter weights ``train`` started from: the base's architecture, the adapter config
    and the run's ``adapter_seed`` (keys with the adapter named ``name``)."""
    if inp.adapter_seed is None:
        raise AdaptertxError(f"{inp.run_dir} records no adapter_seed; its initialisation cannot be re-created")
    try:
        model = AutoAdapterModel.from_config(AutoConfig.from_pretrained(resolve(inp.model)))
    except (OSError, ValueError) as e:
        raise AdaptertxError(f"could not load the configuration of base {inp.model!r}: "
                             f"{str(e).splitlines()[0]}") from None
    torch.manual_seed(inp.adapter_seed)
    model.add_adapter(inp.adapter_name, config=AdapterConfig.load(inp.adapter_config))
    saved = rundir.load_tensors(inp.adapter_dir / "adapter.safetensors")
    params = dict(model.named_parameters())
    state = {}
    for key in saved:
        if key not in params:
            raise AdaptertxError(f"re-creating the initialisation of {inp.run_dir} gave no tensor {key}")
        state[rename_key(key, inp.adapter_name, name)] = params[key].detach().clone()
    return state
