"""Peer CPU encoders for ``bench_encode.py``: ONNX Runtime and OpenVINO, as their users run them.

Each peer is exported from the very model the benchmark loaded (the layers above the pooled
one removed, so every path stops at the same layer), then fed length-sorted, padded batches
of the same tokenizer's ids; the last exported hidden states are mean-pooled over the
attention mask (special tokens included) and L2-normalised, in input order.

- ``ort fp32``: ``torch.onnx.export`` (TorchScript exporter, eager attention), then ONNX
  Runtime's transformer optimiser (``onnxruntime.transformers.optimizer.optimize_model``,
  model type ``bert``: fused Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNorm),
  run by the CPU execution provider with every graph optimisation on.
- ``ort int8``: that optimised graph through ``onnxruntime.quantization.quantize_dynamic``
  (int8 weights, activations quantised per call: ONNX Runtime's recipe for BERT on CPU).
- ``openvino bf16``: ``openvino.convert_model`` of the PyTorch model, compiled for the CPU with
  ``INFERENCE_PRECISION_HINT=bf16`` where the CPU has bf16 (else its default, f32).
- ``openvino int8``: NNCF post-training quantisation of that model (``nncf.quantize``,
  ``ModelType.TRANSFORMER``: int8 matmuls, calibrated on sentences the benchmark does not time).

These are benchmark-only packages (``pip install 'adaptertx[bench]'``); :func:`missing` names
the ones absent so that the caller can skip the peer columns with one line.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

PEER_MODULES = {"onnxruntime": "onnxruntime", "onnx": "onnx", "openvino": "openvino", "nncf": "nncf"}
INSTALL_HINT = "pip install 'adaptertx[bench]'"


def missing() -> list[str]:
    """Peer packages that are not installed (empty when every peer can run)."""
    return [pkg for pkg, mod in PEER_MODULES.items() if importlib.util.find_spec(mod) is None]


def versions() -> dict[str, str]:
    out = {}
    for pkg in PEER_MODULES:
        try:
            from importlib.metadata import version

            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a version string is informative only
            out[pkg] = "absent"
    return out


class _Hidden(torch.nn.Module):
    """(input_ids, attention_mask) -> the last hidden states of a (truncated) encoder."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def truncated_fp32(model: torch.nn.Module, layer: int, attn: str = "eager") -> torch.nn.Module:
    """A float32 copy of ``model`` with the layers above ``layer`` removed."""
    m = copy.deepcopy(model).float()
    m.encoder.layer = torch.nn.ModuleList(list(m.encoder.layer)[:layer])
    m.config.num_hidden_layers = layer
    m.config._attn_implementation = attn
    return m.eval()


class Padded:
    """Length-sorted padded batches through ``run(ids, mask) -> hidden (batch, seq, dim)``."""

    def __init__(self, tokenizer, prefix: str, run: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 batch_size: int) -> None:
        self.tokenizer, self.prefix, self.run, self.batch_size = tokenizer, prefix, run, batch_size

    def batches(self, sentences: list[str]):
        texts = [self.prefix + s for s in sentences]
        ids = self.tokenizer(texts, truncation=True, max_length=512)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            longest = max(len(ids[i]) for i in idx)
            input_ids = np.full((len(idx), longest), pad, dtype=np.int64)
            mask = np.zeros((len(idx), longest), dtype=np.int64)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            yield idx, input_ids, mask

    def __call__(self, sentences: list[str]) -> torch.Tensor:
        out = None
        for idx, input_ids, mask in self.batches(sentences):
            hidden = np.asarray(self.run(input_ids, mask), dtype=np.float32)
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(1) / m.sum(1)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            if out is None:
                out = torch.empty(len(sentences), pooled.shape[1])
            out[torch.tensor(idx)] = torch.from_numpy(pooled)
        return out


def _example(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(["an example sentence", "and a longer example sentence for the export"], padding=True,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def onnx_runtime(model: torch.nn.Module, tokenizer, layer: int, workdir: Path, threads: int) -> dict[str, Callable]:
    """``{"ort fp32": run, "ort int8": run}`` for :class:`Padded`, exported into ``workdir``."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    workdir.mkdir(parents=True, exist_ok=True)
    raw, opt, q8 = workdir / "model.onnx", workdir / "model-opt.onnx", workdir / "model-int8.onnx"
    m = truncated_fp32(model, layer)
    ids, mask = _example(tokenizer)
    axes = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(_Hidden(m), (ids, mask), str(raw), input_names=["input_ids", "attention_mask"],
                          output_names=["hidden"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes})
    cfg = m.config
    optimized = optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                               hidden_size=cfg.hidden_size)
    optimized.save_model_to_file(str(opt))
    # DefaultTensorType: the fused contrib ops have no ONNX shape inference, so the quantiser
    # is told their outputs are float (ONNX Runtime's own advice in that error).
    quantize_dynamic(str(opt), str(q8), weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": 1})

    def session(path: Path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda i, a: sess.run(None, {"input_ids": i, "attention_mask": a})[0]

    return {"ort fp32": session(opt), "ort int8": session(q8)}


def openvino(model: torch.nn.Module, tokenizer, layer: int, threads: int,
             calibration: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, Callable], str]:
    """``{"openvino bf16": run, "openvino int8": run}`` and the precision the bf16 one ran in."""
    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.ERROR)
    os.environ.setdefault("NNCF_LOG_LEVEL", "ERROR")
    m = truncated_fp32(model, layer, attn="sdpa")
    ids, mask = _example(tokenizer)
    with torch.no_grad():
        ov_model = ov.convert_model(_Hidden(m), example_input=(ids, mask))
    for i, name in enumerate(("input_ids", "attention_mask")):
        ov_model.inputs[i].get_tensor().set_names({name})
    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    precision = "bf16" if "BF16" in caps else "f32"
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    dataset = nncf.Dataset(calibration, lambda b: {"input_ids": b[0], "attention_mask": b[1]})
    q_model = nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))

    def compiled(model_):
        c = core.compile_model(model_, "CPU", config)
        req = c.create_infer_request()
        return lambda i, a: req.infer({"input_ids": i, "attention_mask": a})[0]

    return {"openvino bf16": compiled(ov_model), "openvino int8": compiled(q_model)}, precision
