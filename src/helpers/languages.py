"""Language metadata, in one place: every language of the four corpora (Bible, XNLI, PAWS-X, MARC).

``family`` is the branch the analyses compare (Germanic, Romance, Slavic, ...), ``script`` the writing system. The
charts print ``name``; the zero-shot chapter groups by ``family`` and ``script``; :mod:`helpers.config` accepts these
codes (ISO 639-1) for ``fine_tune_languages`` and ``zero_shot_languages``, and checks that the chosen corpus has
them (:func:`helpers.corpora.get`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1
    name: str
    script: str
    family: str  # the branch (Indo-European languages) or the family


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in [
        Language("en", "English", "Latin", "Germanic"),
        Language("de", "German", "Latin", "Germanic"),
        Language("fr", "French", "Latin", "Romance"),
        Language("es", "Spanish", "Latin", "Romance"),
        Language("it", "Italian", "Latin", "Romance"),
        Language("pt", "Portuguese", "Latin", "Romance"),
        Language("ro", "Romanian", "Latin", "Romance"),
        Language("ru", "Russian", "Cyrillic", "Slavic"),
        Language("bg", "Bulgarian", "Cyrillic", "Slavic"),
        Language("el", "Greek", "Greek", "Hellenic"),
        Language("hi", "Hindi", "Devanagari", "Indo-Aryan"),
        Language("ur", "Urdu", "Arabic", "Indo-Aryan"),
        Language("fa", "Persian", "Arabic", "Iranian"),
        Language("ar", "Arabic", "Arabic", "Semitic"),
        Language("tr", "Turkish", "Latin", "Turkic"),
        Language("sw", "Swahili", "Latin", "Bantu"),
        Language("vi", "Vietnamese", "Latin", "Austroasiatic"),
        Language("th", "Thai", "Thai", "Kra-Dai"),
        Language("zh", "Chinese", "Han", "Sinitic"),
        Language("ja", "Japanese", "Kanji and kana", "Japonic"),
        Language("ko", "Korean", "Hangul", "Koreanic"),
    ]
}


def name(code: str) -> str:
    """The language's English name (the code itself if unknown, so a chart never fails on a label)."""
    return LANGUAGES[code].name if code in LANGUAGES else code
