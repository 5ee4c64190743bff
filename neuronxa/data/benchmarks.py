"""Downstream results per language: a CSV or lm-evaluation-harness result files (the offline stand-in, which
runs the model, is ``neuronxa.stage_one.standin``).

Each gives one table with the columns ``model, benchmark, language, value`` (higher is better), with
languages as FLORES codes where a mapping is known.

The stand-in, for machines with no network, is computed from the model itself: its per-language negative
bits per byte on held-out units of the corpus (units not scored). It is a language-modelling measure, not
one of the paper's benchmarks, and is labelled ``standin:neg_bits_per_byte`` wherever it appears.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from neuronxa.data.languages import is_flores_code
from neuronxa.errors import NeuronXAError

COLUMNS = ["model", "benchmark", "language", "value"]

# ISO 639-1 codes used by XNLI, m-ARC, m-MMLU, m-HellaSwag (Okapi) -> the FLORES-200 code of that language.
ISO639_1_TO_FLORES = {
    "ar": "arb_Arab", "bg": "bul_Cyrl", "bn": "ben_Beng", "ca": "cat_Latn", "cs": "ces_Latn", "da": "dan_Latn",
    "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn", "es": "spa_Latn", "et": "est_Latn", "eu": "eus_Latn",
    "fa": "pes_Arab", "fi": "fin_Latn", "fr": "fra_Latn", "gu": "guj_Gujr", "he": "heb_Hebr", "hi": "hin_Deva",
    "hr": "hrv_Latn", "ht": "hat_Latn", "hu": "hun_Latn", "hy": "hye_Armn", "id": "ind_Latn", "is": "isl_Latn",
    "it": "ita_Latn", "ja": "jpn_Jpan", "kn": "kan_Knda", "ko": "kor_Hang", "ml": "mal_Mlym", "mr": "mar_Deva",
    "my": "mya_Mymr", "nb": "nob_Latn", "ne": "npi_Deva", "nl": "nld_Latn", "no": "nob_Latn", "pl": "pol_Latn",
    "pt": "por_Latn", "qu": "quy_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl", "sk": "slk_Latn", "sr": "srp_Cyrl",
    "sv": "swe_Latn", "sw": "swh_Latn", "ta": "tam_Taml", "te": "tel_Telu", "th": "tha_Thai", "tr": "tur_Latn",
    "uk": "ukr_Cyrl", "ur": "urd_Arab", "vi": "vie_Latn", "yo": "yor_Latn", "zh": "zho_Hans",
}
# lm-evaluation-harness task names -> (benchmark, language code in the task name)
_TASK_PATTERNS = [
    (re.compile(r"^belebele_([a-z]{3}_[A-Z][a-z]{3})$"), "belebele"),
    (re.compile(r"^xnli_([a-z]{2})$"), "xnli"),
    (re.compile(r"^arc_([a-z]{2})$"), "m_arc"),
    (re.compile(r"^m_mmlu_([a-z]{2})$"), "m_mmlu"),
    (re.compile(r"^hellaswag_([a-z]{2})$"), "m_hellaswag"),
    (re.compile(r"^xcopa_([a-z]{2})$"), "xcopa"),
    (re.compile(r"^xstorycloze_([a-z]{2})$"), "xstorycloze"),
]


def flores_language(code: str) -> str:
    """The FLORES code of a benchmark's language code, where one is known; else the code unchanged."""
    return code if is_flores_code(code) else ISO639_1_TO_FLORES.get(code, code)


def read_csv(path: str | Path) -> pd.DataFrame:
    """A CSV with the columns model, benchmark, language, value; a bad value names its file and row."""
    file = Path(path)
    if not file.is_file():
        raise NeuronXAError(f"benchmark file {file} does not exist")
    with open(file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise NeuronXAError(f"{file}: missing column(s) {', '.join(sorted(missing))} (need {', '.join(COLUMNS)})")
        rows = []
        for number, row in enumerate(reader, 2):
            try:
                value = float(row["value"])
            except (TypeError, ValueError):
                raise NeuronXAError(f"{file}, row {number}: value {row['value']!r} is not a number") from None
            if not math.isfinite(value):
                raise NeuronXAError(f"{file}, row {number}: value {row['value']!r} is not finite")
            rows.append((row["model"], row["benchmark"], flores_language(row["language"]), value))
    return pd.DataFrame(rows, columns=COLUMNS)


def read_lm_eval(paths: list[str | Path], model: str | None = None, metric_key: str = "acc,none") -> pd.DataFrame:
    """lm-evaluation-harness ``results*.json`` files (or folders of them): one row per per-language task."""
    files = []
    for path in map(Path, paths):
        files += sorted(path.rglob("results*.json")) if path.is_dir() else [path]
    if not files:
        raise NeuronXAError(f"no lm-evaluation-harness results*.json under {', '.join(map(str, paths))}")
    rows = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise NeuronXAError(f"{file}: not an lm-evaluation-harness result file ({error})") from None
        if not isinstance(data, dict):
            raise NeuronXAError(f"{file}: not an lm-evaluation-harness result file (expected a JSON object)")
        name = model or data.get("model_name") or str(data.get("config", {}).get("model_args", file.parent.name))
        for task, results in data.get("results", {}).items():
            for pattern, benchmark in _TASK_PATTERNS:
                match = pattern.match(task)
                if match and isinstance(results.get(metric_key), (int, float)):
                    rows.append((name, benchmark, flores_language(match.group(1)), float(results[metric_key])))
    if not rows:
        raise NeuronXAError(f"no per-language task with a {metric_key!r} value in {', '.join(map(str, files[:3]))} "
                            "(expected tasks such as xnli_fr or belebele_fra_Latn; metric_key names the value)")
    return pd.DataFrame(rows, columns=COLUMNS)




def for_model(results: pd.DataFrame, model: str, aliases: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rows of one model (by its config name, hub id or an alias); a clear error when there are none."""
    names = {model, *aliases}
    rows = results[results.model.isin(names)]
    if rows.empty:
        known = ", ".join(sorted(results.model.unique())[:10])
        raise NeuronXAError(f"no benchmark results for model {model!r} (the file has: {known})")
    return rows.assign(value=rows.value.astype(np.float64))
