"""The ``adapters`` library's own training path, as its documentation runs it, for ``bench_train.py``.

``AutoAdapterModel.from_pretrained`` (bf16 weights, or a bitsandbytes 8-bit base through
``BitsAndBytesConfig(load_in_8bit=True)``), ``add_adapter`` with the same config,
``add_classification_head``, ``train_adapter``, then ``adapters.AdapterTrainer`` (the Hugging
Face Trainer with the library's adapter hooks) with ``bf16=True`` (autocast) and AdamW. The
trainer is fed the benchmark's batch over and over in order (a sequential sampler), so every
step sees the same 16 x 128 tokens as the other modes; step times come from a
``TrainerCallback`` (``on_step_begin`` to ``on_step_end``: forward, backward, optimiser step,
zero-grad, the library's hooks), so the trainer's set-up is not counted.
"""

from __future__ import annotations

import logging
import tempfile
import time

import torch

LIB_MODES = ("lib bf16", "lib bnb int8")


def build(model_name: str, mode: str, config, num_labels: int, seed: int, device: str = "cpu"):
    """An adapters model for ``mode`` (one of :data:`LIB_MODES`) on ``device``, base frozen, adapter +
    head trainable."""
    from adapters import AutoAdapterModel

    from adaptertx.models import resolve

    kwargs = {"dtype": torch.bfloat16}
    if mode == "lib bnb int8":
        from transformers import BitsAndBytesConfig

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        if device != "cpu":
            kwargs["device_map"] = {"": device}
    model = AutoAdapterModel.from_pretrained(resolve(model_name), **kwargs)
    if device != "cpu" and mode != "lib bnb int8":
        model.to(device)
    torch.manual_seed(seed)
    model.add_adapter("bench", config=config)
    model.add_classification_head("bench", num_labels=num_labels)
    model.train_adapter("bench")
    # The library creates the new adapter and head in float32; its docs cast them to the base's
    # compute dtype when the base is not float32 (``adapter_to``), as a user would.
    model.adapter_to("bench", device=torch.device(device), dtype=torch.bfloat16)
    model.heads["bench"].to(device)
    for p in model.heads["bench"].parameters():
        p.requires_grad_(True)
    return model


class Runner:
    """Runs ``steps`` AdapterTrainer steps on one repeated batch and records each step's seconds."""

    def __init__(self, model, batch: dict[str, torch.Tensor], lr: float, device: str = "cpu") -> None:
        from adapters import AdapterTrainer
        from torch.utils.data import SequentialSampler
        from transformers import PrinterCallback, TrainerCallback, TrainingArguments, default_data_collator

        self.model, self.batch, self.times, self.device = model, batch, [], torch.device(device)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        self.tmp = tempfile.TemporaryDirectory()
        rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]
        self.rows = rows
        times = self.times

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                sync()
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync()
                times.append(time.perf_counter() - self.t0)

        class InOrder(AdapterTrainer):
            def _get_train_sampler(self, *args, **kwargs):
                return SequentialSampler(self.train_dataset)

        self.args = dict(output_dir=self.tmp.name, per_device_train_batch_size=len(rows), learning_rate=lr,
                         weight_decay=0.0, bf16=True, use_cpu=self.device.type == "cpu", report_to=[],
                         save_strategy="no",
                         logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
                         lr_scheduler_type="constant", optim="adamw_torch", remove_unused_columns=False)
        def make(steps):
            trainer = InOrder(model=model, args=TrainingArguments(max_steps=steps, **self.args),
                              train_dataset=rows * steps, data_collator=default_data_collator, callbacks=[Clock()])
            trainer.remove_callback(PrinterCallback)  # it prints the run's metrics on every train()
            return trainer

        self.make = make
        for name in ("transformers.trainer", "adapters"):
            logging.getLogger(name).setLevel(logging.ERROR)

    def run(self, steps: int) -> list[float]:
        """Train ``steps`` steps (one ``trainer.train()``); returns their seconds."""
        n = len(self.times)
        self.make(steps).train()
        return self.times[n:]

    def logits(self, eval_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self.model(**{k: v.to(self.device) for k, v in eval_batch.items()}).logits.float().cpu()
        self.model.train()
        return out
