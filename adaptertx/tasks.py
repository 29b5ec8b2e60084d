"""The task registry: every intermediate and target task adaptertx knows, declared once.

A :class:`Task` says what a task is (family, labels, metric, languages) and where its data
comes from: the Hugging Face Hub dataset for the full data (used where the Hub is reachable)
and the dataset bundled with adaptertx (used offline, see :mod:`adaptertx.data`). Which of a
task's languages count as low-resource follows one rule for every task,
:func:`adaptertx.languages.is_low_resource` (under 5 GiB of XLM-R pretraining text).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adaptertx.errors import AdaptertxError
from adaptertx.languages import is_low_resource, normalize
from adaptertx.registry import add_unique

FAMILIES = ("classification", "multiple_choice", "extractive_qa", "tagging", "retrieval")
#: The families a prediction head trains on (retrieval is scored by encoding alone).
TRAINABLE_FAMILIES = FAMILIES[:4]
ROLES = ("intermediate", "target")

NLI_LABELS = ("entailment", "neutral", "contradiction")
PARAPHRASE_LABELS = ("0", "1")
UPOS_LABELS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
               "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X")
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
CONLL_LABELS = NER_LABELS + ("B-MISC", "I-MISC")
MASAKHANER_LABELS = NER_LABELS + ("B-DATE", "I-DATE")


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face Hub.

    Attributes:
        dataset: the Hub dataset id.
        config: the config name; ``{lang}`` is replaced by the language code.
        note: anything a user must know (e.g. a licence that keeps it off the Hub).
    """

    dataset: str | None
    config: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
        name: registry key (lowercase).
        family: one of :data:`FAMILIES`.
        role: ``"intermediate"`` (an English task adapters are trained on) or ``"target"``
            (evaluated zero-shot across languages).
        metric: the standard metric, as the task's reference scores it: ``accuracy``, ``f1_em``
            (SQuAD F1/EM), ``entity_f1`` (span-level F1, seqeval), ``tag_f1`` (XTREME's UD-POS F1:
            seqeval over the POS tag sequences, word accuracy beside it), ``retrieval_accuracy``
            (Tatoeba, both directions, en→x first), ``bucc_f1``, ``map@20``
            (see :mod:`adaptertx.metrics`).
        languages: the task's languages in the public release (adaptertx codes).
        hub: where the full data lives on the Hub.
        bundled: the key of the bundled dataset in :mod:`adaptertx.data`, or ``None``.
        labels: the label set (classification and tagging); ``None`` where there is none.
        num_choices: answer options per item (multiple choice; 0 = varies).
        english_train: for targets, the task whose English ``train`` split trains the target
            adapter before zero-shot evaluation (chosen so no test item's translation is seen
            in training, see DESIGN.md §4); ``None`` for retrieval (no target training).
        description: one line for listings.
    """

    name: str
    family: str
    role: str
    metric: str
    languages: tuple[str, ...]
    hub: HubSource
    bundled: str | None = None
    labels: tuple[str, ...] | None = None
    num_choices: int = 0
    english_train: str | None = None
    description: str = ""
    low_resource: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"task {self.name}: family {self.family!r} not in {FAMILIES}")
        if self.role not in ROLES:
            raise ValueError(f"task {self.name}: role {self.role!r} not in {ROLES}")
        langs = tuple(normalize(code) for code in self.languages)
        object.__setattr__(self, "languages", langs)
        object.__setattr__(self, "low_resource", tuple(c for c in langs if is_low_resource(c)))

    def check_language(self, lang: str) -> str:
        """Normalise ``lang`` and check it is one of the task's languages."""
        code = normalize(lang)
        if code not in self.languages:
            raise AdaptertxError(f"task {self.name!r} has no language {lang!r}; its languages are "
                                 f"{', '.join(self.languages)}")
        return code


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS`; a name may be registered once."""
    return add_unique(TASKS, task.name, task, "task")


def get_task(name: str) -> Task:
    """The task called ``name``, or a clear error listing the known tasks."""
    try:
        return TASKS[name.lower()]
    except KeyError:
        raise AdaptertxError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def tasks(family: str | None = None, role: str | None = None) -> list[Task]:
    """Registered tasks, optionally filtered by family and role, in registration order."""
    if family is not None and family not in FAMILIES:
        raise AdaptertxError(f"unknown task family {family!r}; families: {', '.join(FAMILIES)}")
    return [t for t in TASKS.values() if family in (None, t.family) and role in (None, t.role)]


EN = ("en",)

# --- English intermediate tasks: the nine of Phang et al. (2020), then the bundled extras ---
register(Task("anli", "classification", "intermediate", "accuracy", EN,
              HubSource("facebook/anli"), bundled="anli", labels=NLI_LABELS,
              description="Adversarial NLI, rounds 1-3 (the paper's ANLI+ adds MNLI/SNLI/FEVER-NLI)"))
register(Task("mnli", "classification", "intermediate", "accuracy", EN,
              HubSource("nyu-mll/glue", "mnli"), labels=NLI_LABELS,
              description="MultiNLI"))
register(Task("qqp", "classification", "intermediate", "accuracy", EN,
              HubSource("nyu-mll/glue", "qqp"), labels=PARAPHRASE_LABELS,
              description="Quora Question Pairs"))
register(Task("squad", "extractive_qa", "intermediate", "f1_em", EN,
              HubSource("rajpurkar/squad"), description="SQuAD 1.1"))
register(Task("squad_v2", "extractive_qa", "intermediate", "f1_em", EN,
              HubSource("rajpurkar/squad_v2"), description="SQuAD 2.0 (with unanswerable questions)"))
register(Task("hellaswag", "multiple_choice", "intermediate", "accuracy", EN,
              HubSource("Rowan/hellaswag"), bundled="hellaswag", num_choices=4,
              description="HellaSwag sentence completion"))
register(Task("cosmosqa", "multiple_choice", "intermediate", "accuracy", EN,
              HubSource("allenai/cosmos_qa"), bundled="cosmosqa", num_choices=4,
              description="Cosmos QA commonsense reading comprehension"))
register(Task("commonsenseqa", "multiple_choice", "intermediate", "accuracy", EN,
              HubSource("tau/commonsense_qa"), bundled="commonsenseqa", num_choices=5,
              description="CommonsenseQA"))
register(Task("ccg", "tagging", "intermediate", "accuracy", EN,
              HubSource(None, note="CCGbank is LDC-licensed and not on the Hub: supply it as CoNLL "
                                   "columns with --data-file"),
              description="CCG supertagging (CCGbank)"))
register(Task("siqa", "multiple_choice", "intermediate", "accuracy", EN,
              HubSource("allenai/social_i_qa"), bundled="siqa", num_choices=3,
              description="Social IQa"))
register(Task("mrpc", "classification", "intermediate", "accuracy", EN,
              HubSource("nyu-mll/glue", "mrpc"), bundled="mrpc", labels=PARAPHRASE_LABELS,
              description="Microsoft Research Paraphrase Corpus"))
register(Task("copa", "multiple_choice", "intermediate", "accuracy", EN,
              HubSource("aps/super_glue", "copa"), bundled="copa", num_choices=2,
              description="English COPA (the source of XCOPA)"))
register(Task("conll03", "tagging", "intermediate", "entity_f1", EN,
              HubSource("eriktks/conll2003"), bundled="conll03", labels=CONLL_LABELS,
              description="CoNLL-2003 English NER (English source for the NER targets)"))

# --- XTREME-R targets (Ruder et al., 2021), then BUCC, MasakhaNER and PAWS-X ---
register(Task("xnli", "classification", "target", "accuracy",
              ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
              HubSource("facebook/xnli", "{lang}"), bundled="xnli", labels=NLI_LABELS,
              english_train="anli", description="Cross-lingual NLI"))
register(Task("xcopa", "multiple_choice", "target", "accuracy",
              ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh"),
              HubSource("cambridgeltl/xcopa", "{lang}"), bundled="xcopa", num_choices=2,
              english_train="copa", description="Cross-lingual choice of plausible alternatives"))
register(Task("udpos", "tagging", "target", "tag_f1",
              ("af", "ar", "bg", "de", "el", "en", "es", "et", "eu", "fa", "fi", "fr", "he", "hi", "hu",
               "id", "it", "ja", "kk", "ko", "lt", "mr", "nl", "pl", "pt", "ro", "ru", "ta", "te", "th",
               "tl", "tr", "uk", "ur", "vi", "wo", "yo", "zh"),
              HubSource("google/xtreme", "udpos.{lang}"), bundled="udpos", labels=UPOS_LABELS,
              english_train="udpos", description="Universal Dependencies part-of-speech tagging"))
register(Task("panx", "tagging", "target", "entity_f1",
              ("af", "am", "ar", "bg", "bn", "de", "el", "en", "es", "et", "eu", "fa", "fi", "fr", "he",
               "hi", "hu", "id", "ig", "it", "ja", "jv", "ka", "kk", "ko", "ml", "mr", "ms", "my", "nl",
               "pt", "ru", "rw", "sw", "ta", "te", "th", "tl", "tr", "ur", "vi", "yo", "zh"),
              HubSource("google/xtreme", "PAN-X.{lang}"), bundled="panx", labels=NER_LABELS,
              english_train="conll03", description="WikiANN / PAN-X named entities"))
register(Task("xquad", "extractive_qa", "target", "f1_em",
              ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"),
              HubSource("google/xquad", "xquad.{lang}"), bundled="xquad",
              english_train="mlqa", description="Cross-lingual QA (SQuAD 1.1 dev, translated)"))
register(Task("mlqa", "extractive_qa", "target", "f1_em",
              ("ar", "de", "en", "es", "hi", "vi", "zh"),
              HubSource("facebook/mlqa", "mlqa.{lang}.{lang}"), bundled="mlqa",
              english_train="tydiqa", description="Multilingual QA"))
register(Task("tydiqa", "extractive_qa", "target", "f1_em",
              ("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te"),
              HubSource("google-research-datasets/tydiqa", "secondary_task"), bundled="tydiqa",
              english_train="tydiqa", description="TyDi QA gold passage"))
register(Task("tatoeba", "retrieval", "target", "retrieval_accuracy",
              ("af", "am", "ang", "ar", "arq", "arz", "ast", "awa", "az", "be", "bn", "ber", "bs", "br",
               "bg", "ca", "cbk", "ceb", "cs", "ch", "zh", "kw", "csb", "cy", "da", "de", "dsb", "dtp",
               "el", "eo", "et", "eu", "fo", "fi", "fr", "fy", "gd", "ga", "gl", "gsw", "he", "hi", "hr",
               "hsb", "hu", "hy", "io", "ie", "ia", "id", "is", "it", "jv", "ja", "kab", "ka", "kk",
               "km", "ko", "ku", "kzj", "la", "lfn", "lt", "lv", "ml", "mr", "max", "mhr", "mk", "mn",
               "nds", "nl", "nn", "nb", "nov", "oc", "orv", "pam", "fa", "pms", "pl", "pt", "ro", "ru",
               "sk", "sl", "es", "sq", "sr", "sv", "swg", "sw", "ta", "tt", "te", "tl", "th", "tk", "tr",
               "tzl", "ug", "uk", "ur", "uz", "vi", "war", "wuu", "xh", "yi", "yue", "ms"),
              HubSource("google/xtreme", "tatoeba.{lang}", note="the Hub config uses ISO 639-3 codes"),
              bundled="tatoeba", description="Tatoeba sentence retrieval, en->x and x->en (LASER test pairs)"))
register(Task("lareqa", "retrieval", "target", "map@20",
              ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"),
              HubSource("google-research-datasets/xquad_r", "{lang}"),
              description="Language-agnostic answer retrieval (XQuAD-R)"))
register(Task("mewsli_x", "retrieval", "target", "map@20",
              ("ar", "de", "en", "es", "fa", "ja", "pl", "ro", "ta", "tr", "uk"),
              HubSource(None, note="Mewsli-X is built by XTREME-R's download script from Wikinews; "
                                   "point --data-dir at its output"),
              description="Mewsli-X entity retrieval"))
register(Task("bucc", "retrieval", "target", "bucc_f1", ("de", "fr", "ru", "zh"),
              HubSource("google/xtreme", "bucc18.{lang}"), bundled="bucc",
              description="BUCC 2018 bitext mining x-en (bundled: zh-en dev)"))
register(Task("masakhaner", "tagging", "target", "entity_f1",
              ("am", "ha", "ig", "rw", "lg", "luo", "pcm", "sw", "wo", "yo"),
              HubSource("masakhane/masakhaner", "{lang}", note="the Hub config uses ISO 639-3 codes"),
              bundled="masakhaner", labels=MASAKHANER_LABELS, english_train="conll03",
              description="MasakhaNER 1.0, African-language NER"))
register(Task("pawsx", "classification", "target", "accuracy",
              ("de", "en", "es", "fr", "ja", "ko", "zh"),
              HubSource("google-research-datasets/paws-x", "{lang}"), bundled="pawsx",
              labels=PARAPHRASE_LABELS, english_train="pawsx",
              description="PAWS-X adversarial paraphrase (XTREME; not in XTREME-R)"))
