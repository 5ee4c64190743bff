"""Corpus readers on small fixtures in each source's real format, and language-code normalisation."""

import os

import pytest

from helpers import FIXTURES, UDHR
from neuronxa.data.corpus import ParallelCorpus, held_out_texts
from neuronxa.data.languages import detect_script, flores_code
from neuronxa.data.readers import read_corpus, read_flores, read_jsonl, read_tatoeba, read_tsv
from neuronxa.data.udhr import read_udhr
from neuronxa.errors import NeuronXAError


def test_udhr_articles_with_normalised_codes():
    corpus = read_udhr(FIXTURES / "udhr")
    assert set(corpus.languages) == {"eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans"}  # ita lacks article 3
    assert corpus.source_codes["deu_Latn"] == "deu_1996" and corpus.source_codes["zho_Hans"] == "cmn_hans"
    assert corpus.ids("eng_Latn") == ["1", "2", "3"]
    assert corpus.units["eng_Latn"]["2"] == ("Everyone is entitled to all the rights and freedoms set forth in "
                                            "this Declaration. Furthermore, no distinction shall be made.")


def test_udhr_paragraphs_include_the_preamble():
    corpus = read_udhr(FIXTURES / "udhr", ["eng_Latn", "fra_Latn"], unit="paragraph")
    assert corpus.ids("fra_Latn") == ["preamble.1", "1.1", "2.1", "2.2", "3.1"]
    assert corpus.units["fra_Latn"]["2.2"] == "De plus, il ne sera fait aucune distinction."


def test_udhr_languages_by_any_code_and_a_chosen_variant():
    corpus = read_udhr(FIXTURES / "udhr", ["eng", "deu_1901", "cmn_hans"])
    assert corpus.languages == ["eng_Latn", "deu_Latn", "zho_Hans"]
    assert corpus.source_codes["deu_Latn"] == "deu_1901"


def test_udhr_drops_units_a_chosen_language_lacks():
    with pytest.warns(UserWarning, match="dropped 1 unit"):
        corpus = read_udhr(FIXTURES / "udhr", ["eng_Latn", "ita"])
    assert corpus.ids("ita_Latn") == ["1", "2"]


def test_unknown_language_suggests_close_codes():
    with pytest.raises(NeuronXAError, match="Did you mean fra_Latn"):
        read_udhr(FIXTURES / "udhr", ["fra_Latm"])


def test_flores_200_and_flores_plus_layouts():
    corpus = read_flores(FIXTURES / "flores200", ["eng_Latn", "fra_Latn"], split="devtest")
    assert corpus.ids("fra_Latn") == ["1", "2", "3"] and corpus.units["fra_Latn"]["1"] == "Le chat dort."
    plus = read_flores(FIXTURES / "floresplus", split="dev")
    assert plus.languages == ["eng_Latn", "fra_Latn"] and plus.name == "flores-dev"


def test_flores_files_of_different_lengths_are_named(tmp_path):
    (tmp_path / "devtest").mkdir()
    (tmp_path / "devtest" / "eng_Latn.devtest").write_text("a\nb\nc\n")
    (tmp_path / "devtest" / "fra_Latn.devtest").write_text("a\nb\n")
    with pytest.raises(NeuronXAError, match=r"fra_Latn.devtest has 2 units.*eng_Latn.devtest has 3"):
        read_flores(tmp_path)


def test_tatoeba_pairs_keep_their_own_english_side():
    corpus = read_tatoeba(FIXTURES / "tatoeba")
    assert set(corpus.languages) == {"eng_Latn", "fra_Latn", "deu_Latn"}
    assert corpus.shared_ids("eng_Latn", "deu_Latn") == ["deu:1", "deu:2"]
    assert corpus.units["eng_Latn"]["deu:2"] == "Where is the station?"
    assert corpus.units["eng_Latn"]["fra:2"] == "Thank you very much."


def test_max_units_applies_per_tatoeba_pair():
    corpus = read_corpus("tatoeba", FIXTURES / "tatoeba", max_units=1)
    assert corpus.ids("eng_Latn") == ["deu:1", "fra:1"]


def test_tsv_and_jsonl():
    tsv = read_tsv(FIXTURES / "toy.tsv")
    assert tsv.languages == ["eng_Latn", "fra_Latn"] and tsv.ids("eng_Latn") == ["s1", "s2", "s3"]
    jsonl = read_jsonl(FIXTURES / "toy.jsonl", ["deu_Latn"])
    assert jsonl.units["deu_Latn"]["s1"] == "Die Katze schläft."


def test_fingerprint_changes_with_the_text():
    corpus = read_tsv(FIXTURES / "toy.tsv")
    changed = read_tsv(FIXTURES / "toy.tsv")
    changed.units["fra_Latn"]["s1"] = "Le chien dort."
    assert corpus.fingerprint("fra_Latn") != changed.fingerprint("fra_Latn")
    assert corpus.fingerprint("eng_Latn") == changed.fingerprint("eng_Latn")


@pytest.mark.parametrize("text, hint, script", [
    ("Tous les êtres humains", "", "Latn"), ("Все люди рождаются", "", "Cyrl"), ("人人生而自由", "", "Hans"),
    ("人人生而自由", "cmn_hant", "Hant"), ("すべての人間は自由", "", "Jpan"), ("모든 인간은", "", "Hang"),
    ("يولد جميع الناس", "", "Arab"), ("सभी मनुष्यों", "", "Deva"), ("የሰው ልጅ", "", "Ethi"), ("123 !", "", None),
])
def test_detect_script(text, hint, script):
    assert detect_script(text, hint) == script


def test_flores_code_uses_the_macrolanguage_flores_uses():
    assert flores_code("cmn", "人人生而自由") == "zho_Hans"
    assert flores_code("fra", "Bonjour") == "fra_Latn"
    assert flores_code("french", "Bonjour") is None


@pytest.mark.integration
@pytest.mark.skipif(not UDHR.is_dir(), reason="the udhr package is fetched by `make install`")
def test_real_udhr_package():
    corpus = read_udhr(UDHR, unit="article")
    assert len(corpus.languages) > 400 and len(corpus.ids("eng_Latn")) == 30
    paragraphs = read_udhr(UDHR, unit="paragraph")
    assert len(paragraphs.ids("eng_Latn")) == 60 and 90 < len(paragraphs.languages) < 130
    assert paragraphs.units["eng_Latn"]["1.1"].startswith("All human beings are born free")


def write_tsv(tmp_path, text: str, name: str = "c.tsv"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize("cell", ["", "   "])
def test_empty_or_whitespace_units_are_named(tmp_path, cell):
    path = write_tsv(tmp_path, f"id\teng_Latn\tfra_Latn\na\tHello\tBonjour\nb\tThanks\t{cell}\n")
    with pytest.raises(NeuronXAError, match="fra_Latn: 1 empty unit.*'b'"):
        read_tsv(path)


def test_invalid_utf8_names_file_and_line(tmp_path):
    (tmp_path / "devtest").mkdir()
    (tmp_path / "devtest" / "eng_Latn.devtest").write_text("a\nb\n")
    (tmp_path / "devtest" / "fra_Latn.devtest").write_bytes(b"un\n\xff\xfe deux\n")
    with pytest.raises(NeuronXAError, match=r"fra_Latn.devtest, line 2: not valid UTF-8"):
        read_flores(tmp_path)
    page = (FIXTURES / "udhr" / "declaration" / "fra.html").read_bytes().replace(b"Tous", b"\xc3(ous")
    (tmp_path / "declaration").mkdir()
    (tmp_path / "declaration" / "eng.html").write_bytes((FIXTURES / "udhr" / "declaration" / "eng.html").read_bytes())
    (tmp_path / "declaration" / "fra.html").write_bytes(page)
    with pytest.raises(NeuronXAError, match=r"fra.html, line 1\d: not valid UTF-8"):
        read_udhr(tmp_path)


def test_duplicate_ids_and_too_few_units(tmp_path):
    with pytest.raises(NeuronXAError, match="duplicate unit id 'a'"):
        read_tsv(write_tsv(tmp_path, "id\teng_Latn\tfra_Latn\na\tx\ty\na\tz\tw\n"))
    with pytest.raises(NeuronXAError, match="fewer than two units"):
        read_tsv(write_tsv(tmp_path, "id\teng_Latn\tfra_Latn\na\tx\ty\n"))


def test_missing_pivot_and_empty_folders(tmp_path):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    with pytest.raises(NeuronXAError, match="pivot language 'deu_Latn'"):
        corpus.validate("deu_Latn")
    (tmp_path / "devtest").mkdir()
    with pytest.raises(NeuronXAError, match="no FLORES files for split 'devtest'"):
        read_flores(tmp_path)
    with pytest.raises(NeuronXAError, match="no Tatoeba files"):
        read_tatoeba(tmp_path)
    with pytest.raises(NeuronXAError, match="is not the udhr package"):
        read_udhr(tmp_path)


def test_ragged_tsv_and_bad_jsonl_name_the_line(tmp_path):
    with pytest.raises(NeuronXAError, match="line 3: expected 3 tab-separated fields"):
        read_tsv(write_tsv(tmp_path, "id\teng_Latn\tfra_Latn\na\tx\ty\nb\tz\n"))
    path = tmp_path / "c.jsonl"
    path.write_text('{"eng_Latn": "a", "fra_Latn": "b"}\n{"eng_Latn": "c", \n')
    with pytest.raises(NeuronXAError, match="line 2: not valid JSON"):
        read_jsonl(path)


def test_an_edited_declaration_is_parsed_again(tmp_path):
    folder = tmp_path / "declaration"
    folder.mkdir()
    for name in ("eng.html", "fra.html"):
        (folder / name).write_bytes((FIXTURES / "udhr" / "declaration" / name).read_bytes())
    assert read_udhr(tmp_path).units["fra_Latn"]["1"].startswith("Tous")
    page = folder / "fra.html"
    page.write_text(page.read_text().replace("Tous les", "Chacun des"))
    os.utime(page, ns=(page.stat().st_atime_ns, page.stat().st_mtime_ns + 10**9))
    assert read_udhr(tmp_path).units["fra_Latn"]["1"].startswith("Chacun des")


def same_corpus(a: ParallelCorpus, b: ParallelCorpus) -> bool:
    """Same name, languages, source codes, units and texts, in the same order."""
    return (a.name == b.name and list(a.units) == list(b.units) and a.source_codes == b.source_codes
            and all(list(a.units[code].items()) == list(b.units[code].items()) for code in a.units))


@pytest.mark.parametrize(("languages", "unit"), [(None, "article"), (["eng", "deu_1901", "cmn_hans"], "article"),
                                                 (["eng_Latn", "fra_Latn"], "paragraph")])
def test_parsed_declarations_kept_in_the_cache_give_the_same_corpus(tmp_path, monkeypatch, languages, unit):
    parsed = read_udhr(FIXTURES / "udhr", languages, unit)
    assert same_corpus(read_udhr(FIXTURES / "udhr", languages, unit, cache_dir=str(tmp_path)), parsed)
    assert len(list((tmp_path / "udhr").glob(f"{unit}-*.json"))) == 1
    monkeypatch.setattr("neuronxa.data.udhr._parse_file", lambda *_: pytest.fail("parsed again"))
    assert same_corpus(read_udhr(FIXTURES / "udhr", languages, unit, cache_dir=str(tmp_path)), parsed)


def test_an_edited_or_garbled_parse_is_parsed_again(tmp_path):
    folder, cache = tmp_path / "udhr" / "declaration", tmp_path / "cache"
    folder.mkdir(parents=True)
    for name in ("eng.html", "fra.html"):
        (folder / name).write_bytes((FIXTURES / "udhr" / "declaration" / name).read_bytes())
    assert read_udhr(folder, cache_dir=str(cache)).units["fra_Latn"]["1"].startswith("Tous")
    page = folder / "fra.html"
    page.write_text(page.read_text().replace("Tous les", "Chacun des"))
    os.utime(page, ns=(page.stat().st_atime_ns, page.stat().st_mtime_ns + 10**9))
    assert read_udhr(folder, cache_dir=str(cache)).units["fra_Latn"]["1"].startswith("Chacun des")
    for kept in (cache / "udhr").glob("*.json"):
        kept.write_text("[[")
    assert read_udhr(folder, cache_dir=str(cache)).units["fra_Latn"]["1"].startswith("Chacun des")


@pytest.mark.skipif(not UDHR.is_dir(), reason="the udhr package is fetched by `make install`")
def test_real_udhr_package_read_back_from_the_cache(tmp_path):
    for _ in range(2):
        cached = read_udhr(UDHR, cache_dir=str(tmp_path))
    assert same_corpus(cached, read_udhr(UDHR))


def test_split_holds_out_the_units_after_max_units():
    full = read_tsv(FIXTURES / "toy.tsv")
    scored, rest = full.split(2)
    assert scored == full.subset(max_units=2)
    held = {"eng_Latn": ["She reads a book every week."], "fra_Latn": ["Elle lit un livre chaque semaine."]}
    assert held_out_texts(scored, rest) == held
    with pytest.raises(NeuronXAError, match="no held-out units in eng_Latn, fra_Latn"):
        held_out_texts(*full.split(None))


def test_split_is_per_language_and_per_id_group():
    """Each language holds out its own units after its first max_units of each id group (Tatoeba pairs)."""
    full = ParallelCorpus("toy", {"eng": {"a": "1", "b": "2", "c": "3"}, "fra": {"b": "x", "c": "y"},
                                  "deu": {"p:1": "u", "q:1": "v", "p:2": "w", "q:2": "z"}})
    scored, rest = full.split(1)
    assert {language: list(units) for language, units in scored.units.items()} == {
        "eng": ["a"], "fra": ["b"], "deu": ["p:1", "q:1"]}
    assert {language: list(units) for language, units in rest.units.items()} == {
        "eng": ["b", "c"], "fra": ["c"], "deu": ["p:2", "q:2"]}
    assert held_out_texts(scored, rest, limit=1) == {"eng": ["2"], "fra": ["y"], "deu": ["w"]}
