"""n-gram language models: interpolated Witten-Bell estimation of any order in ARPA back-off form, ARPA files read
as Kaldi reads them (plain or gzipped, any order), and G from an ARPA file (kaldilm's arpa2fst)."""
from __future__ import annotations

import gzip
import math
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import kaldifst

from ..utils import Pathlike, atomic_path
from .errors import LexiconError

__all__ = ["estimate_arpa", "estimate_bigram_arpa", "ArpaLm", "read_arpa_header", "copy_arpa", "make_g",
           "arpa_vocabulary", "read_sentences"]

BOS, EOS = "<s>", "</s>"
NGram = Tuple[str, ...]


def _count_ngrams(sentences: Iterable[Sequence[str]], vocab: set, order: int, strict: bool,
                  counts: List[Counter]) -> None:
    """Add the 1..order-grams of ``sentences`` to ``counts[k]``.  An n-gram holding a word outside ``vocab`` is
    skipped (``strict``: an error instead)."""
    for words in sentences:
        seq = (BOS, *words, EOS)
        if strict:
            unknown = [w for w in words if w not in vocab]
            if unknown:
                raise LexiconError("training transcripts use words missing from the lexicon: "
                                   f"{sorted(set(unknown))[:20]}")
        known = [w in vocab for w in seq]
        known[0] = True
        for i in range(1, len(seq)):
            for k in range(1, min(order, i + 1) + 1):
                if not known[i - k + 1]:
                    break  # a longer n-gram ending here would contain the same unknown word
                counts[k][seq[i - k + 1:i + 1]] += 1


def estimate_arpa(sentences: Iterable[Sequence[str]], vocab: Iterable[str], order: int = 2,
                  extra_sentences: Iterable[Sequence[str]] = (), min_count: int = 1) -> str:
    """Interpolated Witten-Bell n-gram of ``order`` in ARPA back-off form.

    ``sentences`` (the training transcripts) must use only ``vocab``; ``extra_sentences`` (e.g. ``--lm-text``) may
    hold other words, whose n-grams are skipped.  The unigram interpolates the maximum-likelihood estimate with a
    uniform distribution over ``vocab`` (plus ``</s>``), so words never seen keep a little probability; each higher
    order interpolates with the one below: p(w|h) = l(h) c(hw)/c(h) + (1 - l(h)) p(w|h'), l(h) = c(h) / (c(h) + t(h))
    with t(h) the number of distinct words seen after h.  Witten-Bell needs no count-of-counts, so it behaves on a
    corpus as small as AN4's.  ``min_count`` drops rarer n-grams of order 2 and up (a count cut-off, as SRILM's
    ``-gtNmin``), which keeps G small for large texts.
    """
    if order < 1:
        raise ValueError(f"the n-gram order must be at least 1, not {order}")
    vocab_set = set(vocab) | {EOS}
    vocab_set.discard(BOS)
    counts: List[Counter] = [Counter() for _ in range(order + 1)]
    _count_ngrams(sentences, vocab_set, order, True, counts)
    _count_ngrams(extra_sentences, vocab_set, order, False, counts)
    if min_count > 1:
        for k in range(2, order + 1):
            counts[k] = Counter({g: c for g, c in counts[k].items() if c >= min_count})

    # order 1
    total, types = sum(counts[1].values()), len(counts[1])
    lam = total / (total + types) if total else 0.0
    prob: Dict[NGram, float] = {(w,): lam * counts[1][(w,)] / max(total, 1) + (1 - lam) / len(vocab_set)
                                for w in vocab_set}
    backoff: Dict[NGram, float] = {}

    def lower(w: str, hist: NGram) -> float:
        """p(w | hist) of the back-off model built so far."""
        weight = 1.0
        while hist:
            p = prob.get(hist + (w,))
            if p is not None:
                return weight * p
            weight *= backoff.get(hist, 1.0)
            hist = hist[1:]
        return weight * prob[(w,)]

    for k in range(2, order + 1):
        followers: Dict[NGram, Dict[str, int]] = defaultdict(dict)
        for g, c in counts[k].items():
            followers[g[:-1]][g[-1]] = c
        # the back-off weights of the order below must exist before this order's probabilities use them
        level: Dict[NGram, float] = {}
        for h, nexts in followers.items():
            c_h, t_h = sum(nexts.values()), len(nexts)
            lam_h = c_h / (c_h + t_h)
            for w, c in nexts.items():
                level[h + (w,)] = lam_h * c / c_h + (1 - lam_h) * lower(w, h[1:])
        for h, nexts in followers.items():
            seen_mass = sum(level[h + (w,)] for w in nexts)
            seen_lower = sum(lower(w, h[1:]) for w in nexts)
            # a history followed by every word of a tiny vocabulary (yesno) leaves nothing to back off to
            unseen_lower = 1.0 - seen_lower
            backoff[h] = max(1e-10, 1.0 - seen_mass) / unseen_lower if unseen_lower > 1e-9 else 1.0
        prob.update(level)
    return _write_arpa(prob, backoff, order)


def estimate_bigram_arpa(sentences: Iterable[Sequence[str]], vocab: Iterable[str]) -> str:
    """:func:`estimate_arpa` of order 2 (the recipes' default LM)."""
    return estimate_arpa(sentences, vocab, order=2)


def _write_arpa(prob: Dict[NGram, float], backoff: Dict[NGram, float], order: int) -> str:
    lg = math.log10
    by_order: List[List[NGram]] = [[] for _ in range(order + 1)]
    for g in prob:
        by_order[len(g)].append(g)
    unigrams = sorted(g for g in by_order[1] if g != (EOS,)) + [(EOS,)]
    by_order[1] = [(BOS,)] + unigrams
    lines = ["\\data\\"] + [f"ngram {k}={len(by_order[k])}" for k in range(1, order + 1)] + [""]
    for k in range(1, order + 1):
        lines.append(f"\\{k}-grams:")
        for g in (by_order[k] if k == 1 else sorted(by_order[k])):
            p = -99.0 if g == (BOS,) else lg(prob[g])
            bo = f"\t{lg(backoff[g]):.6f}" if g in backoff and k < order else ""
            lines.append(f"{p:.6f}\t{' '.join(g)}{bo}")
        lines.append("")
    lines += ["\\end\\", ""]
    return "\n".join(lines)


def _open_text(path: Pathlike):
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")


def read_arpa_header(path: Pathlike) -> Dict[int, int]:
    """``{order: number of n-grams}`` from an ARPA file's ``\\data\\`` section (plain or gzipped); a clear error
    naming the file when it is not ARPA."""
    counts: Dict[int, int] = {}
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not counts and not line.startswith("ngram "):
                    if line == "\\data\\" or not line:
                        continue
                    if lineno > 1000:
                        break
                    continue
                m = re.fullmatch(r"ngram\s+(\d+)\s*=\s*(\d+)", line)
                if not m:
                    break
                counts[int(m.group(1))] = int(m.group(2))
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise LexiconError(f"{path}: cannot read it as an ARPA language model ({e})") from None
    if not counts or sorted(counts) != list(range(1, max(counts) + 1)):
        raise LexiconError(f"{path}: not an ARPA language model (no '\\data\\' section with 'ngram 1=N' lines)")
    return counts


def copy_arpa(src: Pathlike, dst: Pathlike) -> Dict[int, int]:
    """Copy an ARPA LM (plain or gzipped) to ``dst`` as plain text, written under a temporary name; returns its
    header counts."""
    header = read_arpa_header(src)
    with _open_text(src) as fin, atomic_path(dst) as tmp, open(tmp, "w", encoding="utf-8") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return header


class ArpaLm:
    """An ARPA back-off model in memory, for scoring: ``logprob(word, history)`` (natural log) and perplexity.
    Meant for checks and dev perplexities of the models this project builds, not for multi-gigabyte LMs."""

    def __init__(self, prob: Dict[NGram, float], backoff: Dict[NGram, float], order: int) -> None:
        self.prob, self.backoff, self.order = prob, backoff, order

    @classmethod
    def read(cls, path: Pathlike) -> "ArpaLm":
        return cls.from_text(_open_text(path).read())

    @classmethod
    def from_text(cls, text: str) -> "ArpaLm":
        prob: Dict[NGram, float] = {}
        backoff: Dict[NGram, float] = {}
        order, k = 0, 0
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            m = re.fullmatch(r"\\(\d+)-grams:", line)
            if m:
                k = int(m.group(1))
                order = max(order, k)
                continue
            if line.startswith("\\"):
                k = 0
                continue
            if k:
                parts = line.split()
                g = tuple(parts[1:1 + k])
                prob[g] = float(parts[0]) * math.log(10)
                if len(parts) > k + 1:
                    backoff[g] = float(parts[k + 1]) * math.log(10)
        return cls(prob, backoff, order)

    def logprob(self, word: str, history: Sequence[str] = ()) -> float:
        hist = tuple(history)[-(self.order - 1):] if self.order > 1 else ()
        weight = 0.0
        while True:
            p = self.prob.get(hist + (word,))
            if p is not None:
                return weight + p
            if not hist:
                return -math.inf
            weight += self.backoff.get(hist, 0.0)
            hist = hist[1:]

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> Tuple[float, int, int]:
        """(perplexity over in-vocabulary words and ``</s>``, words scored, OOV words skipped), as SRILM's
        ``ngram -ppl`` counts them: an OOV word is skipped and the next word is scored with a fresh history."""
        total, scored, oov = 0.0, 0, 0
        for words in sentences:
            hist: List[str] = [BOS]
            for w in [*words, EOS]:
                lp = self.logprob(w, hist)
                if lp == -math.inf:
                    oov += 1
                    hist = []
                    continue
                total += lp
                scored += 1
                hist.append(w)
        return (math.exp(-total / scored) if scored else math.inf), scored, oov


def read_sentences(path: Pathlike) -> List[List[str]]:
    """One sentence per line of a text file (plain or gzipped), words split on any whitespace; empty lines skipped."""
    try:
        with _open_text(path) as f:
            return [line.split() for line in f if line.strip()]
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise LexiconError(f"{path}: cannot read it as UTF-8 LM text ({e})") from None


def make_g(arpa_path: Pathlike, words_txt: Pathlike):
    """G from an ARPA file with kaldilm's arpa2fst (``#0`` on back-off arcs, ``<s>``/``</s>`` as epsilon).  As
    Kaldi's arpa2fst with ``--read-symbol-table``, n-grams holding a word missing from ``words_txt`` are skipped.

    kaldilm runs in a child process: importing it into a process that also imports kaldi_hmm_gmm deadlocks in a
    static initializer (seen with kaldilm 1.15.5 + kaldi-hmm-gmm 1.1.4, in either import order).
    """
    code = ("import sys, kaldilm; sys.stdout.write(kaldilm.arpa2fst(input_arpa=sys.argv[1], disambig_symbol='#0', "
            "read_symbol_table=sys.argv[2], max_arpa_warnings=0))")
    proc = subprocess.run([sys.executable, "-c", code, str(arpa_path), str(words_txt)], capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise LexiconError(f"kaldilm could not convert {arpa_path} to G:\n{proc.stderr[-2000:]}")
    G = kaldifst.compile(proc.stdout, acceptor=False)
    kaldifst.arcsort(G, sort_type="ilabel")
    return G


def arpa_vocabulary(arpa_path: Pathlike) -> set:
    """The words of an ARPA LM's 1-grams (sentence markers and ``<unk>`` left out): what a decoder over its G can
    output, when words.txt holds them all."""
    words, inside = set(), False
    with _open_text(arpa_path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if inside:
                    break
                inside = line == "\\1-grams:"
                continue
            parts = line.split()
            if inside and len(parts) >= 2 and parts[1] not in (BOS, EOS, "<unk>", "<UNK>"):
                words.add(parts[1])
    return words

