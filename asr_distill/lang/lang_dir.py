"""A Kaldi-style lang directory: symbol tables, lexicon, topology, L, L_disambig, the ARPA LM and G.

Everything is written in Kaldi's formats (``phones.txt``, ``words.txt``, ``lexicon.txt``, ``topo``, ``lm.arpa``,
``L.fst``, ``L_disambig.fst``, ``G.fst`` as OpenFst binaries), so Kaldi and OpenFst tools can read them.  L has
optional silence (probability 0.5 between words) and disambiguation symbols (``#1..#N`` on homophones and prefix
pronunciations, ``#0`` for G's back-off arcs); G is a given ARPA LM or an interpolated Witten-Bell n-gram estimated
on the training transcripts (and optionally more text).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import kaldifst

from ..fst import read_symbols, write_symbols
from ..utils import Pathlike, atomic_write_text, read_json, write_json
from .errors import LexiconError
from .graph import SILENCE, make_lexicon_fst
from .lexicon import Lexicon
from .lm import arpa_vocabulary, copy_arpa, estimate_arpa, make_g, read_arpa_header
from .topo import make_topology

__all__ = ["Lang", "prepare_lang", "decoding_vocabulary", "EPS"]

log = logging.getLogger(__name__)

EPS = "<eps>"


@dataclass
class Lang:
    """A Kaldi-style lang directory and what the rest of the toolkit needs from it."""

    dir: Path
    phones: Dict[str, int]
    words: Dict[str, int]
    silence_phones: List[int]
    disambig_phones: List[int]

    @classmethod
    def load(cls, lang_dir: Pathlike) -> "Lang":
        lang_dir = Path(lang_dir)
        meta = read_json(lang_dir / "lang.json")
        return cls(lang_dir, read_symbols(lang_dir / "phones.txt"), read_symbols(lang_dir / "words.txt"),
                   meta["silence_phones"], meta["disambig_phones"])

    @property
    def topo_text(self) -> str:
        return (self.dir / "topo").read_text()

    @property
    def nonsilence_phones(self) -> List[int]:
        skip = set(self.silence_phones) | set(self.disambig_phones) | {0}
        return [i for i in self.phones.values() if i not in skip]

    def word_ids(self, text: str, utt_id: str = "?") -> List[int]:
        ids = []
        for w in text.split():
            if w not in self.words:
                raise LexiconError(f"utterance {utt_id}: word {w!r} is not in {self.dir / 'words.txt'}")
            ids.append(self.words[w])
        return ids

    def id2word(self) -> Dict[int, str]:
        return {i: w for w, i in self.words.items()}

    def lexicon_fst(self, disambig: bool = True):
        return kaldifst.StdVectorFst.read(str(self.dir / ("L_disambig.fst" if disambig else "L.fst")))


def prepare_lang(lexicon: Lexicon, train_texts: Sequence[str], lang_dir: Pathlike, sil_prob: float = 0.5,
                 extra_words: Sequence[str] = (), lm_words: Optional[Sequence[str]] = None,
                 lm_arpa: Optional[Pathlike] = None, lm_order: int = 2,
                 lm_sentences: Iterable[Sequence[str]] = (), lm_min_count: int = 1) -> Lang:
    """Write a complete lang directory: symbol tables, lexicon, topology, L, L_disambig, ARPA LM and G.fst.

    The LM is ``lm_arpa`` when given (any order, plain or gzipped; n-grams with words outside the lexicon are
    skipped, as Kaldi's arpa2fst does), otherwise an interpolated Witten-Bell n-gram of ``lm_order`` estimated on
    ``train_texts`` plus ``lm_sentences`` (:func:`~asr_distill.lang.lm.estimate_arpa`).
    ``lm_words``: the estimated LM's vocabulary (default: every lexicon word).  A lexicon may hold more words than
    the LM, e.g. dev/test words that only forced alignment needs: G gives them no path, so the decoder never outputs
    them."""
    lang_dir = Path(lang_dir)
    lang_dir.mkdir(parents=True, exist_ok=True)
    kept = [(e, q) for e, q in zip(lexicon.entries, lexicon.prob_list()) if e[0] not in ("<s>", "</s>", "<sil>")]
    entries = [e for e, _ in kept]
    if any(SILENCE in p for _, p in entries):
        bad = sorted({w for w, p in entries if SILENCE in p})
        raise LexiconError(f"the lexicon must not use the silence phone {SILENCE} inside words: {bad[:10]}")
    lex = Lexicon(entries, [q for _, q in kept] if lexicon.probs is not None else None)
    disambig_entries, max_k = lex.add_disambig()
    phone_list = [EPS, SILENCE] + [p for p in lex.phones if p != SILENCE] + [f"#{k}" for k in range(max_k + 1)]
    word_list = [EPS] + lex.words + ["#0", "<s>", "</s>"]
    phones = {p: i for i, p in enumerate(phone_list)}
    words = {w: i for i, w in enumerate(word_list)}
    # every transcript word must have a pronunciation: name the utterance-less word list, caller names utterances
    missing = sorted({w for t in train_texts for w in t.split()} - set(lex.words))
    if missing:
        raise LexiconError(f"{len(missing)} training word(s) have no pronunciation: {missing[:20]}")
    write_symbols(phone_list, lang_dir / "phones.txt")
    write_symbols(word_list, lang_dir / "words.txt")
    lex.write(lang_dir / "lexicon.txt")
    if lex.probs is not None:
        lex.write_with_probs(lang_dir / "lexiconp.txt")
    disambig_ids = [phones[f"#{k}"] for k in range(max_k + 1)]
    nonsil = [phones[p] for p in lex.phones if p != SILENCE]
    atomic_write_text(lang_dir / "topo", make_topology([phones[SILENCE]], nonsil))
    L = make_lexicon_fst(entries, phones, words, sil_prob, probs=lex.probs)
    L.write(str(lang_dir / "L.fst"))
    L_disambig = make_lexicon_fst(disambig_entries, phones, words, sil_prob, word_disambig_loop=True, probs=lex.probs)
    L_disambig.write(str(lang_dir / "L_disambig.fst"))
    if lm_arpa is not None:
        header = copy_arpa(lm_arpa, lang_dir / "lm.arpa")
        lm_desc = {"lm": f"given ARPA {lm_arpa}", "lm_order": max(header), "lm_ngrams": header}
    else:
        vocab = list(lex.words) if lm_words is None else sorted(set(lm_words) & set(lex.words))
        arpa = estimate_arpa([t.split() for t in train_texts], vocab + list(extra_words), order=lm_order,
                             extra_sentences=lm_sentences, min_count=lm_min_count)
        atomic_write_text(lang_dir / "lm.arpa", arpa)
        lm_desc = {"lm": f"interpolated Witten-Bell {lm_order}-gram", "lm_order": lm_order,
                   "lm_ngrams": read_arpa_header(lang_dir / "lm.arpa")}
    G = make_g(lang_dir / "lm.arpa", lang_dir / "words.txt")
    G.write(str(lang_dir / "G.fst"))
    write_json({"silence_phones": [phones[SILENCE]], "disambig_phones": disambig_ids, "sil_prob": sil_prob,
                **lm_desc}, lang_dir / "lang.json")
    log.info("lang: %d words, %d phones (+%d disambig), %s (%s n-grams), G %d states", len(lex.words),
             len(nonsil) + 1, len(disambig_ids), lm_desc["lm"],
             "/".join(str(v) for v in lm_desc["lm_ngrams"].values()), G.num_states)
    return Lang.load(lang_dir)


def decoding_vocabulary(lang_dir: Pathlike) -> Optional[set]:
    """The words a decoder over this lang directory's G can output: the LM's unigrams that words.txt holds (a given
    ARPA may have words without pronunciations, whose n-grams G skips).  None without an ``lm.arpa``."""
    lang_dir = Path(lang_dir)
    arpa = lang_dir / "lm.arpa"
    if not arpa.is_file():
        return None
    return arpa_vocabulary(arpa) & set(read_symbols(lang_dir / "words.txt"))
