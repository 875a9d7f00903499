"""The n-gram language model: an interpolated Witten-Bell bigram in ARPA form, and G from it (kaldilm)."""
from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter, defaultdict
from typing import Dict, Iterable, Sequence, Tuple

import kaldifst

from ..utils import Pathlike
from .errors import LexiconError

__all__ = ["estimate_bigram_arpa", "make_g", "arpa_vocabulary"]


def estimate_bigram_arpa(sentences: Iterable[Sequence[str]], vocab: Iterable[str]) -> str:
    """Interpolated Witten-Bell bigram in ARPA back-off form.

    The unigram interpolates the maximum-likelihood estimate with a uniform distribution over the whole ``vocab``
    (plus ``</s>``), so lexicon words unseen in training keep a little probability; bigrams interpolate with that
    unigram.  Witten-Bell needs no count-of-counts, so it behaves on a corpus as small as AN4's 948 sentences.
    """
    uni, bi = Counter(), Counter()
    for words in sentences:
        seq = ["<s>", *words, "</s>"]
        uni.update(seq[1:])
        bi.update(zip(seq[:-1], seq[1:]))
    vocab_set = set(vocab) | {"</s>"}
    unknown = set(uni) - vocab_set
    if unknown:
        raise LexiconError(f"training transcripts use words missing from the lexicon: {sorted(unknown)[:20]}")
    total, types = sum(uni.values()), len(uni)
    lam = total / (total + types)
    p_uni = {w: lam * uni[w] / total + (1 - lam) / len(vocab_set) for w in vocab_set}
    followers: Dict[str, Dict[str, int]] = defaultdict(dict)
    for (h, w), c in bi.items():
        followers[h][w] = c
    p_bi: Dict[Tuple[str, str], float] = {}
    backoff: Dict[str, float] = {}
    for h, nexts in followers.items():
        c_h, t_h = sum(nexts.values()), len(nexts)
        lam_h = c_h / (c_h + t_h)
        seen_mass, seen_uni = 0.0, 0.0
        for w, c in nexts.items():
            p = lam_h * c / c_h + (1 - lam_h) * p_uni[w]
            p_bi[(h, w)] = p
            seen_mass += p
            seen_uni += p_uni[w]
        # back-off weight makes the unseen continuations sum to what the interpolation left them
        # (a history followed by every word of a tiny vocabulary, as in yesno, leaves nothing to back off to)
        unseen_uni = 1.0 - seen_uni
        backoff[h] = max(1e-10, 1.0 - seen_mass) / unseen_uni if unseen_uni > 1e-9 else 1.0
    lg = math.log10
    words_sorted = sorted(vocab_set - {"</s>"}) + ["</s>"]
    lines = ["\\data\\", f"ngram 1={len(words_sorted) + 1}", f"ngram 2={len(p_bi)}", "", "\\1-grams:"]
    lines.append(f"-99\t<s>\t{lg(backoff['<s>']):.6f}")
    for w in words_sorted:
        bo = f"\t{lg(backoff[w]):.6f}" if w in backoff and w != "</s>" else ""
        lines.append(f"{lg(p_uni[w]):.6f}\t{w}{bo}")
    lines += ["", "\\2-grams:"]
    for (h, w), p in sorted(p_bi.items()):
        lines.append(f"{lg(p):.6f}\t{h} {w}")
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def make_g(arpa_path: Pathlike, words_txt: Pathlike):
    """G from an ARPA file with kaldilm's arpa2fst (``#0`` on back-off arcs, ``<s>``/``</s>`` as epsilon).

    kaldilm runs in a child process: importing it into a process that also imports kaldi_hmm_gmm deadlocks in a
    static initializer (seen with kaldilm 1.15.5 + kaldi-hmm-gmm 1.1.4, in either import order).
    """
    code = ("import sys, kaldilm; sys.stdout.write(kaldilm.arpa2fst(input_arpa=sys.argv[1], disambig_symbol='#0', "
            "read_symbol_table=sys.argv[2], max_arpa_warnings=0))")
    proc = subprocess.run([sys.executable, "-c", code, str(arpa_path), str(words_txt)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise LexiconError(f"kaldilm could not convert {arpa_path} to G:\n{proc.stderr[-2000:]}")
    G = kaldifst.compile(proc.stdout, acceptor=False)
    kaldifst.arcsort(G, sort_type="ilabel")
    return G


def arpa_vocabulary(arpa_path: Pathlike) -> set:
    """The words of an ARPA LM's 1-grams (sentence markers and ``<unk>`` left out): what a decoder over its G can
    output."""
    words, inside = set(), False
    with open(arpa_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if inside:
                    break
                inside = line == "\\1-grams:"
                continue
            parts = line.split()
            if inside and len(parts) >= 2 and parts[1] not in ("<s>", "</s>", "<unk>", "<UNK>"):
                words.add(parts[1])
    return words
