"""ARPAbet pronunciations guessed from spelling: the lexicon's last resort for words no dictionary has.

Why rules in ARPAbet rather than letters as extra units, or sentencepiece pieces: the fallback words are few (names,
rare words) and their frames must train *existing* phone models; letter units would each get a handful of frames
and a model of their own.  A rough phone guess is what Kaldi's ``g2p`` step gives too, minus the training.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from .errors import LexiconError

__all__ = ["grapheme_pronunciation"]


# Longest match first.  Vowel rules are deliberately plain: a wrong vowel costs less than a dropped utterance.
_RULES: Sequence[Tuple[str, Sequence[str]]] = sorted([
    ("tion", ["SH", "AH", "N"]), ("sion", ["ZH", "AH", "N"]), ("ough", ["AO"]), ("augh", ["AO"]), ("igh", ["AY"]),
    ("tch", ["CH"]), ("dge", ["JH"]), ("sch", ["S", "K"]), ("eau", ["OW"]), ("qu", ["K", "W"]),
    ("ch", ["CH"]), ("sh", ["SH"]), ("th", ["TH"]), ("ph", ["F"]), ("wh", ["W"]), ("ck", ["K"]), ("ng", ["NG"]),
    ("gh", ["G"]), ("kn", ["N"]), ("wr", ["R"]), ("ee", ["IY"]), ("ea", ["IY"]), ("ie", ["IY"]), ("oo", ["UW"]),
    ("ou", ["AW"]), ("ow", ["OW"]), ("oa", ["OW"]), ("oi", ["OY"]), ("oy", ["OY"]), ("ai", ["EY"]),
    ("ay", ["EY"]), ("ey", ["EY"]), ("ei", ["EY"]), ("au", ["AO"]), ("aw", ["AO"]), ("ew", ["UW"]),
    ("ue", ["UW"]), ("ar", ["AA", "R"]), ("er", ["ER"]), ("ir", ["ER"]), ("ur", ["ER"]), ("or", ["AO", "R"]),
    ("a", ["AE"]), ("b", ["B"]), ("c", ["K"]), ("d", ["D"]), ("e", ["EH"]), ("f", ["F"]), ("g", ["G"]),
    ("h", ["HH"]), ("i", ["IH"]), ("j", ["JH"]), ("k", ["K"]), ("l", ["L"]), ("m", ["M"]), ("n", ["N"]),
    ("o", ["AA"]), ("p", ["P"]), ("q", ["K"]), ("r", ["R"]), ("s", ["S"]), ("t", ["T"]), ("u", ["AH"]),
    ("v", ["V"]), ("w", ["W"]), ("x", ["K", "S"]), ("y", ["IY"]), ("z", ["Z"]),
], key=lambda r: -len(r[0]))


_DIGITS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]


_DIGIT_PRONS = {  # CMUdict's first pronunciations, stress removed (no CMUdict needed to spell digits)
    "ZERO": "Z IY R OW", "ONE": "W AH N", "TWO": "T UW", "THREE": "TH R IY", "FOUR": "F AO R", "FIVE": "F AY V",
    "SIX": "S IH K S", "SEVEN": "S EH V AH N", "EIGHT": "EY T", "NINE": "N AY N",
}


def grapheme_pronunciation(word: str) -> List[str]:
    """ARPAbet guess for ``word`` from its spelling (see the module docstring); raises if nothing is pronounceable."""
    phones: List[str] = []
    letters = word.lower()
    # A final silent "e" after a consonant ("grape", "drake") lengthens the vowel but is not said itself.
    if len(letters) > 3 and letters.endswith("e") and letters[-2] not in "aeiouy":
        letters = letters[:-1]
    i = 0
    while i < len(letters):
        ch = letters[i]
        if ch.isdigit():
            phones += _DIGIT_PRONS[_DIGITS[int(ch)]].split()
            i += 1
            continue
        if not ch.isalpha():  # apostrophes, hyphens, dots: not said
            i += 1
            continue
        if i > 0 and ch == letters[i - 1] and ch not in "eo":  # "ll", "ss", "tt": one phone
            i += 1
            continue
        for graph, out in _RULES:
            if letters.startswith(graph, i):
                phones += out
                i += len(graph)
                break
        else:  # a letter outside a-z (accents): drop it
            i += 1
    if word[:1].lower() == "y" and phones[:1] == ["IY"]:  # "yes", "young": a consonant at the start
        phones[0] = "Y"
    if not phones:
        raise LexiconError(f"word {word!r}: no letters or digits to guess a pronunciation from")
    return phones
