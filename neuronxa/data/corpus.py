"""Parallel corpora: languages mapped to units (sentences, paragraphs, articles) aligned by unit id.

Two languages are compared over the unit ids they share: every id for UDHR and FLORES; for Tatoeba, where
each pair has its own English side, English holds the union of all pairs and each target its own pair. The
readers are in ``neuronxa.data.readers`` (and the UDHR's in ``neuronxa.data.udhr``).
"""

from __future__ import annotations

import difflib
import hashlib
from collections import Counter
from dataclasses import dataclass, field

from neuronxa.errors import NeuronXAError


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
            raise NeuronXAError(f"languages listed twice: {', '.join(duplicates)}")
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
                                "second language (add one to the corpus or to the languages read)")
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
            f"no held-out units in {', '.join(empty)}: score fewer units (max_units) than the corpus has "
            f"({len(scored.ids(empty[0]))} units, all scored; the units after max_units are held out)"
        )
    return held_out
