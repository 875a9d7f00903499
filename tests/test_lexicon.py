"""OOV-proof lexicons: corpus dictionary, then CMUdict, then grapheme rules (asr_distill.lang.lexicon)."""
from __future__ import annotations

import pytest

from asr_distill.lang import LexiconError
from asr_distill.lang import build_lexicon, grapheme_pronunciation, load_cmudict
from conftest import SLICE


@pytest.mark.parametrize("word, phones", [
    ("YES", "Y EH S"),            # initial y is a consonant
    ("THOUGHT", "TH AO T"),       # "ough" before single letters
    ("PHONE", "F AA N"),          # "ph", silent final e
    ("NATION", "N AE SH AH N"),   # "tion"
    ("BALL", "B AE L"),           # a double letter is one phone
    ("B52", "B F AY V T UW"),     # digits spelled as number words
    ("O'NEILL", "AA N EY L"),     # apostrophe not said
])
def test_grapheme_rules(word, phones):
    assert grapheme_pronunciation(word) == phones.split()


def test_grapheme_rules_refuse_a_word_without_letters():
    with pytest.raises(LexiconError, match="'--'"):
        grapheme_pronunciation("--")


def test_cmudict_is_upper_case_without_stress():
    cmu = load_cmudict()
    assert cmu["YES"] == [["Y", "EH", "S"]]
    assert ["Z", "IH", "R", "OW"] in cmu["ZERO"]
    assert all(not p[-1].isdigit() for prons in list(cmu.values())[:2000] for pron in prons for p in pron)


def test_sources_in_order_corpus_dict_cmudict_then_graphemes(tmp_path):
    corpus_dict = tmp_path / "corpus.dic"
    corpus_dict.write_text("YES Y EH S S\nTASKWORD T AE S K\n")  # the corpus's own (odd) YES must win
    words = ["YES", "NO", "ZQXWORP", "TASKWORD"]
    lexicon, report = build_lexicon(words, corpus_dict, keep_corpus_dict=False)
    assert lexicon.pronunciations("YES") == [["Y", "EH", "S", "S"]]
    assert lexicon.pronunciations("NO") == load_cmudict()["NO"]
    assert lexicon.pronunciations("ZQXWORP") == [grapheme_pronunciation("ZQXWORP")]
    assert report.sources == {"YES": "corpus", "TASKWORD": "corpus", "NO": "cmudict", "ZQXWORP": "grapheme"}
    assert set(lexicon.words) == set(words)
    report.write_fallback(tmp_path / "oov.txt")
    assert (tmp_path / "oov.txt").read_text().startswith("ZQXWORP ")


def test_no_fallback_names_the_missing_words():
    with pytest.raises(LexiconError, match="ZQXWORP"):
        build_lexicon(["YES", "ZQXWORP"], fallback="error")


def test_an4_dictionary_covers_its_vocabulary_alone():
    from asr_distill.lang import read_cmu_dict

    an4 = read_cmu_dict(SLICE / "etc" / "an4.dic")
    lexicon, report = build_lexicon(an4.words, SLICE / "etc" / "an4.dic")
    assert set(report.sources.values()) == {"corpus"}
    assert lexicon.entries == an4.entries  # AN4 results stay what they were
