"""Sentence retrieval: the encoder (:mod:`.encoder`), the packed fast path (:mod:`.packed`) and
nearest-neighbour search and bitext mining (:mod:`.mine`).

:func:`encode` runs the packed fast encoder (length-sorted, padding-free batches, stopping at
the pooled layer) by default, or with ``backend="hf"`` the plain Hugging Face pipeline, the
reference the packed encoder is held to. Both L2-normalise the mean of one layer's hidden
states, special tokens included (XTREME's retrieval protocol).
"""

from adaptertx.environment import default_dtype
from adaptertx.retrieval.encoder import (
                                         BACKENDS,
                                         TASK_KINDS,
                                         SentenceEncoder,
                                         encode,
                                         load_encoder,
                                         resolve_layer_prefix,
                                         retrieval_accuracy,
                                         retrieval_hits,
                                         retrieval_prefixes,
                                         tokens_per_batch_for,
)
from adaptertx.retrieval.mine import MineResult, ThresholdResult, knn, mine, optimize_threshold

__all__ = ["BACKENDS", "TASK_KINDS", "MineResult", "SentenceEncoder", "ThresholdResult", "default_dtype", "encode",
           "knn", "load_encoder", "mine", "optimize_threshold", "resolve_layer_prefix", "retrieval_accuracy",
           "retrieval_hits", "retrieval_prefixes", "tokens_per_batch_for"]
