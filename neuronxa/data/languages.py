"""Language codes: FLORES-style ``xxx_Script`` codes from ISO 639-3 codes and the script of a text."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

# First word of a character's Unicode name -> ISO 15924 script code.
_SCRIPT_OF_NAME = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "GREEK": "Grek", "ARMENIAN": "Armn", "GEORGIAN": "Geor",
    "HEBREW": "Hebr", "ARABIC": "Arab", "SYRIAC": "Syrc", "THAANA": "Thaa", "NKO": "Nkoo",
    "DEVANAGARI": "Deva", "BENGALI": "Beng", "GURMUKHI": "Guru", "GUJARATI": "Gujr", "ORIYA": "Orya",
    "TAMIL": "Taml", "TELUGU": "Telu", "KANNADA": "Knda", "MALAYALAM": "Mlym", "SINHALA": "Sinh",
    "THAI": "Thai", "LAO": "Laoo", "TIBETAN": "Tibt", "MYANMAR": "Mymr", "KHMER": "Khmr",
    "HANGUL": "Hang", "HIRAGANA": "Jpan", "KATAKANA": "Jpan", "CJK": "Hani", "ETHIOPIC": "Ethi",
    "CHEROKEE": "Cher", "CANADIAN": "Cans", "TIFINAGH": "Tfng", "VAI": "Vaii", "MONGOLIAN": "Mong",
    "YI": "Yiii", "OL": "Olck", "ADLAM": "Adlm", "BALINESE": "Bali", "JAVANESE": "Java",
}

# ISO 639-3 individual codes that FLORES-200 files under their macrolanguage code.
_FLORES_LANGUAGE = {"cmn": "zho"}

_FLORES_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")


def is_flores_code(code: str) -> bool:
    """True for codes such as ``eng_Latn``."""
    return bool(_FLORES_CODE.match(code))


def detect_script(text: str, hint: str = "") -> str | None:
    """The ISO 15924 code of the most frequent script among the letters of ``text``.

    Han text is ``Hant`` when ``hint`` (e.g. a source code such as ``cmn_hant``) says traditional, else
    ``Hans``; Han mixed with kana is ``Jpan``, as FLORES writes Japanese.
    """
    counts: Counter[str] = Counter()
    for char in text:
        if not char.isalpha():
            continue
        script = _SCRIPT_OF_NAME.get(unicodedata.name(char, "?").split(" ")[0])
        if script:
            counts[script] += 1
    if not counts:
        return None
    script = counts.most_common(1)[0][0]
    if script in ("Hani", "Jpan") and counts["Jpan"]:
        return "Jpan"
    if script == "Hani":
        return "Hant" if "hant" in hint.lower() else "Hans"
    return script


def flores_code(iso639_3: str, text: str, hint: str = "") -> str | None:
    """``xxx_Script`` for an ISO 639-3 code and a sample of its text; None when no script is found."""
    language = iso639_3.lower()
    if not re.fullmatch(r"[a-z]{3}", language):
        return None
    script = detect_script(text, hint or iso639_3)
    if script is None:
        return None
    return f"{_FLORES_LANGUAGE.get(language, language)}_{script}"


@lru_cache(maxsize=4096)
def normalised_code(code: str, iso639_3: str, text: str) -> str:
    """A source's language code as a FLORES-style code where one can be made (from ``iso639_3`` and the script of
    ``text``), else the code as given."""
    if is_flores_code(code):
        return code
    return flores_code(iso639_3, text, hint=code) or code
