"""Corpus readers: FLORES-200 / FLORES+ folders, Tatoeba pairs, plain TSV / JSONL, and ``read_corpus``, which
reads any of them (and the UDHR) by name."""

from __future__ import annotations

import csv
import difflib
import json
from collections import Counter
from pathlib import Path

from neuronxa.data.corpus import ParallelCorpus
from neuronxa.data.languages import normalised_code
from neuronxa.data.udhr import read_udhr
from neuronxa.errors import NeuronXAError, check_whole

# --- FLORES-200 / FLORES+ -----------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (a leading byte-order mark dropped), with the file and line named when a line
    is not valid UTF-8."""
    lines = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise NeuronXAError(f"{path}, line {number}: not valid UTF-8 (save the file as UTF-8)") from None
            lines.append(line.removeprefix("\ufeff") if number == 1 else line)  # a byte-order mark is no text
    return lines


def _flores_files(folder: Path, split: str) -> dict[str, Path]:
    """Language code -> file, for ``{split}/{code}.{split}`` (FLORES-200) or ``{split}/{split}.{code}`` (FLORES+)."""
    split_folder = folder / split if (folder / split).is_dir() else folder
    found = {}
    for file in sorted(split_folder.iterdir()):
        if file.suffix == f".{split}":
            found[file.stem] = file
        elif file.name.startswith(f"{split}."):
            found[file.name[len(split) + 1 :]] = file
    if not found:
        raise NeuronXAError(
            f"no FLORES files for split {split!r} in {split_folder} "
            f"(expected {split}/eng_Latn.{split} or {split}/{split}.eng_Latn)"
        )
    return found


def _check_lengths(lengths: dict[Path, int]) -> None:
    """All files of a parallel corpus must have the same number of units."""
    if len(set(lengths.values())) > 1:
        (first, n_first), (other, n_other) = sorted(lengths.items(), key=lambda item: item[1])[:: len(lengths) - 1]
        raise NeuronXAError(f"files differ in length: {first} has {n_first} units, {other} has {n_other}")


def read_flores(path: str | Path, languages: list[str] | None = None, split: str = "devtest") -> ParallelCorpus:
    """FLORES-200 or FLORES+ text files, one per language, line-aligned; unit ids are line numbers."""
    folder = Path(path)
    if not folder.is_dir():
        raise NeuronXAError(f"FLORES folder {folder} does not exist: pass the folder of the FLORES-200 or FLORES+ "
                            "files")
    files_by_code = _flores_files(folder, split)
    lookup = ParallelCorpus("flores", {code: {} for code in files_by_code})
    chosen = [lookup.resolve(code) for code in languages] if languages else list(files_by_code)
    texts = {code: _read_lines(files_by_code[code]) for code in chosen}
    _check_lengths({files_by_code[code]: len(lines) for code, lines in texts.items()})
    units = {code: {str(i): line for i, line in enumerate(lines, 1)} for code, lines in texts.items()}
    corpus = ParallelCorpus(f"flores-{split}", units, {code: code for code in chosen})
    corpus.validate()
    return corpus


# --- Tatoeba (LASER's tatoeba.{xx}-eng.{xx|eng} pairs) -------------------------------------------------------


def read_tatoeba(path: str | Path, languages: list[str] | None = None, pivot: str = "eng") -> ParallelCorpus:
    """Tatoeba pairs: each target's units are its pair's lines, English holds every pair's English side.

    Unit ids are ``{code}:{line}`` so that each pair's units stay aligned with their own English side.
    """
    folder = Path(path)
    pairs = sorted(folder.glob(f"tatoeba.*-{pivot}.*")) if folder.is_dir() else []
    codes = sorted({p.name.split(".")[1].split("-")[0] for p in pairs})
    if not codes:
        raise NeuronXAError(f"no Tatoeba files (tatoeba.xx-{pivot}.xx) in {folder}")
    requested = [code for code in (languages or codes) if code.split("_")[0] != pivot]
    missing = [code for code in requested if code.split("_")[0] not in codes]
    if missing:
        close = difflib.get_close_matches(missing[0].split("_")[0], codes, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise NeuronXAError(f"no Tatoeba pair for {', '.join(missing)} in {folder}.{hint}")
    units: dict[str, dict[str, str]] = {}
    sources: dict[str, str] = {}
    english: dict[str, str] = {}
    for code in (c.split("_")[0] for c in requested):
        target_file = folder / f"tatoeba.{code}-{pivot}.{code}"
        pivot_file = folder / f"tatoeba.{code}-{pivot}.{pivot}"
        target, source = _read_lines(target_file), _read_lines(pivot_file)
        _check_lengths({target_file: len(target), pivot_file: len(source)})
        language = normalised_code(code, code, " ".join(target[:20]))
        units[language] = {f"{code}:{i}": line for i, line in enumerate(target, 1)}
        english.update({f"{code}:{i}": line for i, line in enumerate(source, 1)})
        sources[language] = code
    pivot_code = normalised_code(pivot, pivot, " ".join(list(english.values())[:20]))
    corpus = ParallelCorpus("tatoeba", {pivot_code: english, **units}, {pivot_code: pivot, **sources})
    corpus.validate(pivot_code)
    return corpus


# --- plain TSV / JSONL --------------------------------------------------------------------------------------


def _from_rows(name: str, rows: list[dict[str, str]], where: str, languages: list[str] | None) -> ParallelCorpus:
    """A corpus from wide rows: an optional ``id`` column and one column per language code."""
    if not rows:
        raise NeuronXAError(f"{where}: no units")
    columns = [column for column in rows[0] if column != "id"]
    ids = [str(row.get("id") or i) for i, row in enumerate(rows, 1)]
    repeated = [unit for unit, count in Counter(ids).items() if count > 1]
    if repeated:
        raise NeuronXAError(f"{where}: duplicate unit id {repeated[0]!r}")
    units = {column: {unit: str(row.get(column) or "") for unit, row in zip(ids, rows)} for column in columns}
    corpus = ParallelCorpus(name, units, {column: column for column in columns})
    if languages:
        corpus = corpus.subset(languages)
    corpus.validate()
    return corpus


def read_tsv(path: str | Path, languages: list[str] | None = None) -> ParallelCorpus:
    """A TSV file whose header names the languages (and optionally ``id``); one unit per row."""
    file = Path(path)
    if not file.is_file():
        raise NeuronXAError(f"TSV file {file} does not exist")
    lines = _read_lines(file)
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = []
    for number, row in enumerate(reader, 2):
        if None in row or None in row.values():
            raise NeuronXAError(f"{file}, line {number}: expected {len(reader.fieldnames)} tab-separated fields")
        rows.append(row)
    return _from_rows(file.stem, rows, str(file), languages)


def read_jsonl(path: str | Path, languages: list[str] | None = None) -> ParallelCorpus:
    """A JSONL file with one object per unit: ``{"id": ..., "eng_Latn": ..., "fra_Latn": ...}``."""
    file = Path(path)
    if not file.is_file():
        raise NeuronXAError(f"JSONL file {file} does not exist")
    rows = []
    for number, line in enumerate(_read_lines(file), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise NeuronXAError(f"{file}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict) or (rows and set(row) != set(rows[0])):
            raise NeuronXAError(f"{file}, line {number}: expected an object with the same keys as line 1")
        wrong = next((key for key, value in row.items()
                      if not isinstance(value, (str, int)) or isinstance(value, bool)), None)
        if wrong is not None:
            raise NeuronXAError(f"{file}, line {number}: {wrong!r} holds {type(row[wrong]).__name__} "
                                f"{json.dumps(row[wrong])[:40]}, expected text")
        rows.append(row)
    return _from_rows(file.stem, rows, str(file), languages)


READERS = {"udhr": read_udhr, "flores": read_flores, "tatoeba": read_tatoeba, "tsv": read_tsv, "jsonl": read_jsonl}


def read_corpus(
    kind: str, path: str | Path, languages: list[str] | None = None, max_units: int | None = None, **options
) -> ParallelCorpus:
    """Read a corpus with the reader named ``kind`` and keep ``languages`` and ``max_units``."""
    if kind not in READERS:
        raise NeuronXAError(f"unknown dataset {kind!r}: choose one of {', '.join(READERS)}")
    if max_units is not None:
        check_whole(max_units, "max_units", 1, " (or None for every unit)")
    if path is None:
        raise NeuronXAError(f"a {kind!r} corpus needs its path: pass the file or folder to read")
    corpus = READERS[kind](path, languages, **options)
    return corpus.subset(languages, max_units) if (languages or max_units) else corpus
