"""Corpus readers on small fixtures in each source's real format, and language-code normalisation."""

import pytest

from neuronxa.corpus import read_corpus, read_flores, read_jsonl, read_tatoeba, read_tsv, read_udhr
from neuronxa.errors import NeuronXAError
from neuronxa.languages import detect_script, flores_code

from conftest import FIXTURES, UDHR


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
