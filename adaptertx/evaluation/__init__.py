"""Zero-shot cross-lingual evaluation: fine-tune a target adapter on English over an intermediate
configuration and score every language (:mod:`.zero_shot`), or encode and score retrieval
targets directly (:mod:`.retrieval_targets`: Tatoeba, BUCC, LAReQA, Mewsli-X).

- :mod:`.intermediate` — the intermediate configurations read from run and merged folders;
- :mod:`.common` — :class:`EvalConfig`, the results, their bookkeeping.
"""

from adaptertx.evaluation.common import (
    ALL_LANGUAGES,
    FILE_NAMES,
    FORMATS,
    EvalConfig,
    EvalResult,
    LanguageResult,
    data_dir_files,
    file_language,
)
from adaptertx.evaluation.intermediate import NONE, Intermediate, fusion_of, load_intermediate
from adaptertx.evaluation.retrieval_targets import (
                                                    BuccScore,
                                                    TatoebaScore,
                                                    evaluate_bucc,
                                                    evaluate_tatoeba,
                                                    tatoeba_files,
)
from adaptertx.evaluation.zero_shot import build_target_model, eval_sets, evaluate

__all__ = ["ALL_LANGUAGES", "FILE_NAMES", "FORMATS", "NONE", "BuccScore", "EvalConfig", "EvalResult", "Intermediate",
           "LanguageResult", "TatoebaScore", "build_target_model", "data_dir_files", "eval_sets", "evaluate",
           "evaluate_bucc", "evaluate_tatoeba", "file_language", "fusion_of", "load_intermediate", "tatoeba_files"]
