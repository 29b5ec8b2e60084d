"""Training: one loop (:mod:`.loop`) for every adapter, head and Fusion layer adaptertx trains.

- :mod:`.single` — one task's adapter and head (``adaptertx train``);
- :mod:`.multitask` — one adapter on several tasks at once, one head each;
- :mod:`.sampling` — how a multi-task run draws its batches;
- :mod:`.data` — the English splits and encoded features (their floors: :mod:`adaptertx.floors`);
- :mod:`.scoring` — predictions and scores on encoded examples.
"""

from adaptertx.training.multitask import MultitaskConfig, MultitaskResult, train_mixture, train_multitask
from adaptertx.training.single import RunResult, TrainConfig, train, train_one_task

__all__ = ["MultitaskConfig", "MultitaskResult", "RunResult", "TrainConfig", "train", "train_mixture",
           "train_multitask", "train_one_task"]
