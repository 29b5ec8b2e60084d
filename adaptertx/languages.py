"""Language codes: one code per language everywhere in adaptertx.

The code is ISO 639-1 where the language has one, else ISO 639-3 (the convention XTREME
uses for its Tatoeba subset). Dataset-specific codes (Tatoeba's ``cmn``/``pes``/``swh``,
MasakhaNER's ``swa``/``yor``) are normalised with :func:`normalize`. Names come from the
ISO 639 tables shipped by ``pycountry``.
"""

from __future__ import annotations

from functools import cache

import pycountry

from adaptertx.errors import AdaptertxError

# Individual-language codes that XTREME and common usage write with the macrolanguage's
# two-letter code, plus codes missing from ISO 639-3 tables (retired or collective).
_OVERRIDES = {
    "cmn": "zh", "pes": "fa", "swh": "sw", "zsm": "ms", "lvs": "lv", "ekk": "et",
    "arb": "ar", "nob": "nb", "nno": "nn", "ydd": "yi", "uzn": "uz", "azj": "az",
}
_EXTRA_NAMES = {"kzj": "Coastal Kadazan", "ber": "Berber languages"}


@cache
def normalize(code: str) -> str:
    """Return the adaptertx code for ``code`` (ISO 639-1 if it exists, else ISO 639-3).

    >>> normalize("deu"), normalize("cmn"), normalize("kab"), normalize("sw")
    ('de', 'zh', 'kab', 'sw')
    """
    raw = code.strip().lower().replace("_", "-").split("-")[0]
    if raw in _OVERRIDES:
        return _OVERRIDES[raw]
    if raw in _EXTRA_NAMES:
        return raw
    lang = None
    if len(raw) == 2:
        lang = pycountry.languages.get(alpha_2=raw)
    elif len(raw) == 3:
        lang = pycountry.languages.get(alpha_3=raw) or pycountry.languages.get(bibliographic=raw)
    if lang is None:
        raise AdaptertxError(f"unknown language code {code!r}: expected an ISO 639-1 or 639-3 code")
    return getattr(lang, "alpha_2", None) or lang.alpha_3


def normalize_or_none(code: str) -> str | None:
    """:func:`normalize` of ``code``, or ``None`` when no standard knows it.

    >>> normalize_or_none("deu"), normalize_or_none("qhe")
    ('de', None)
    """
    try:
        return normalize(code)
    except AdaptertxError:
        return None


def normalize_or_keep(code: str) -> str:
    """:func:`normalize` of ``code``, or ``code`` lowercased when no standard knows it (a
    language of the user's own files).

    >>> normalize_or_keep("deu"), normalize_or_keep("XX")
    ('de', 'xx')
    """
    return normalize_or_none(code) or code.strip().lower()


def name(code: str) -> str:
    """English name of a language code, e.g. ``name("sw") == "Swahili"``."""
    norm = normalize(code)
    if norm in _EXTRA_NAMES:
        return _EXTRA_NAMES[norm]
    lang = pycountry.languages.get(alpha_2=norm) if len(norm) == 2 else pycountry.languages.get(alpha_3=norm)
    return lang.name.split(" (")[0]


# Size in GiB of each language's text in CC-100, XLM-R's pretraining corpus (Conneau et al.,
# 2020, "Unsupervised Cross-lingual Representation Learning at Scale", ACL, Appendix A,
# Table 6). Chinese and Burmese sum the paper's two rows each; Norwegian covers nb and nn.
CC100_GIB: dict[str, float] = {
    "en": 300.8, "vi": 137.3, "ru": 278.0, "id": 148.3, "fa": 111.6, "sv": 85.0, "ro": 61.4,
    "de": 66.6, "fr": 56.8, "es": 53.3, "no": 49.0, "nb": 49.0, "nn": 49.0, "pt": 49.1, "da": 45.6,
    "hu": 58.4, "uk": 84.6, "fi": 54.3, "pl": 44.6, "ko": 54.2, "bg": 57.5, "nl": 29.3, "it": 30.2,
    "el": 46.9, "sk": 23.2, "he": 31.6, "hr": 20.5, "ar": 28.0, "tr": 20.9, "cs": 16.3, "lt": 13.7,
    "th": 71.7, "ca": 10.1, "hi": 20.2, "sl": 10.3, "ms": 8.5, "lv": 8.8, "sq": 5.4, "et": 6.1,
    "sr": 9.1, "az": 6.5, "ur": 5.7, "ta": 12.2, "tl": 3.1, "ja": 69.3, "bn": 8.4, "is": 3.2,
    "gl": 2.9, "kk": 6.4, "ka": 9.1, "mk": 4.8, "hy": 5.5, "la": 2.5, "be": 4.3, "ml": 7.6,
    "sw": 1.6, "eu": 2.0, "zh": 63.5, "te": 4.7, "mn": 3.0, "si": 3.6, "af": 1.3, "ne": 3.8,
    "mr": 2.8, "kn": 3.3, "eo": 0.9, "cy": 0.8, "gu": 1.9, "ps": 0.7, "ky": 1.2, "uz": 0.7,
    "ga": 0.5, "am": 0.8, "pa": 0.8, "ku": 0.4, "so": 0.4, "ha": 0.3, "my": 2.0, "sd": 0.4,
    "km": 1.5, "or": 0.6, "yi": 0.3, "fy": 0.2, "ug": 0.4, "mg": 0.2, "jv": 0.2, "gd": 0.1,
    "lo": 0.6, "sa": 0.3, "br": 0.1, "bs": 0.1, "xh": 0.1, "su": 0.1, "om": 0.1, "as": 0.1,
}

# The rule: a language is low-resource for XLM-R-family encoders when CC-100 holds less than
# this much of its text, or none at all (it was not among XLM-R's 100 pretraining languages).
LOW_RESOURCE_GIB = 5.0


def pretraining_gib(code: str) -> float:
    """GiB of ``code``'s text in CC-100 (0.0 if XLM-R was not pretrained on it)."""
    return CC100_GIB.get(normalize(code), 0.0)


def is_low_resource(code: str) -> bool:
    """Whether ``code`` counts as low-resource: under :data:`LOW_RESOURCE_GIB` GiB of CC-100 text.

    >>> is_low_resource("sw"), is_low_resource("de"), is_low_resource("yo")
    (True, False, True)
    """
    return pretraining_gib(code) < LOW_RESOURCE_GIB
