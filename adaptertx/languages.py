"""Language codes: one code per language everywhere in adaptertx.

The code is ISO 639-1 where the language has one, else ISO 639-3 (the convention XTREME
uses for its Tatoeba subset). Dataset-specific codes (Tatoeba's ``cmn``/``pes``/``swh``,
MasakhaNER's ``swa``/``yor``) are normalised with :func:`normalize`. Names come from the
ISO 639 tables shipped by ``pycountry``.
"""

from __future__ import annotations

from functools import lru_cache

import pycountry

from adaptertx.errors import AdaptertxError

# Individual-language codes that XTREME and common usage write with the macrolanguage's
# two-letter code, plus codes missing from ISO 639-3 tables (retired or collective).
_OVERRIDES = {
    "cmn": "zh", "pes": "fa", "swh": "sw", "zsm": "ms", "lvs": "lv", "ekk": "et",
    "arb": "ar", "nob": "nb", "nno": "nn", "ydd": "yi", "uzn": "uz", "azj": "az",
}
_EXTRA_NAMES = {"kzj": "Coastal Kadazan", "ber": "Berber languages"}


@lru_cache(maxsize=None)
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


def name(code: str) -> str:
    """English name of a language code, e.g. ``name("sw") == "Swahili"``."""
    norm = normalize(code)
    if norm in _EXTRA_NAMES:
        return _EXTRA_NAMES[norm]
    lang = pycountry.languages.get(alpha_2=norm) if len(norm) == 2 else pycountry.languages.get(alpha_3=norm)
    return lang.name.split(" (")[0]
