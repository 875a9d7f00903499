"""Lexicon, phone/word symbol tables, HMM topology, n-gram LM and the decoding graph HCLG.

Everything is written in Kaldi's formats (``phones.txt``, ``words.txt``, ``lexicon.txt``, ``topo``, ``lm.arpa``,
``L_disambig.fst``, ``G.fst``, ``HCLG.fst`` as OpenFst binaries), so Kaldi and OpenFst tools can read them.

The graph follows Kaldi's ``prepare_lang.sh`` + ``mkgraph.sh``: L with optional silence (probability 0.5 between
words) and disambiguation symbols (``#1..#N`` on homophones and prefix pronunciations, ``#0`` for G's back-off
arcs), G from an interpolated Witten-Bell bigram estimated on the training transcripts only, then
``HCLG = min(rmeps(det(H o min(det(C o min(det(L o G)))))))`` with self-loops added last.
"""
from __future__ import annotations

import logging
import math
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .utils import Pathlike, atomic_path, read_json, write_json

__all__ = [
    "Lexicon", "Lang", "LexiconError", "read_cmu_dict", "make_topology", "prepare_lang", "estimate_bigram_arpa",
    "make_lexicon_fst", "make_g", "make_hclg", "map_arcs", "write_symbols", "read_symbols", "SILENCE",
]

log = logging.getLogger(__name__)

SILENCE = "SIL"
EPS = "<eps>"


class LexiconError(ValueError):
    """Bad lexicon or transcript words; the message names the file / word / utterance."""


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
        with atomic_path(path) as tmp:
            Path(tmp).write_text("".join(f"{w} {' '.join(p)}\n" for w, p in self.entries))

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


def write_symbols(symbols: Sequence[str], path: Pathlike) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)))


def read_symbols(path: Pathlike) -> Dict[str, int]:
    table = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            s, i = line.split()
            table[s] = int(i)
    return table


def make_topology(silence_ids: Sequence[int], nonsilence_ids: Sequence[int], num_states: int = 3,
                  num_sil_states: int = 5) -> str:
    """Kaldi HMM topology text: left-to-right ``num_states`` states per phone, and Kaldi's silence model whose first
    ``num_sil_states - 1`` states are fully connected (so silence can be short or long)."""
    lines = ["<Topology>", "<TopologyEntry>", "<ForPhones>", " ".join(map(str, nonsilence_ids)), "</ForPhones>"]
    for s in range(num_states):
        lines.append(f"<State> {s} <PdfClass> {s} <Transition> {s} 0.75 <Transition> {s + 1} 0.25 </State>")
    lines += [f"<State> {num_states} </State>", "</TopologyEntry>",
              "<TopologyEntry>", "<ForPhones>", " ".join(map(str, silence_ids)), "</ForPhones>"]
    last = num_sil_states - 1
    p = 1.0 / last
    lines.append("<State> 0 <PdfClass> 0 " + " ".join(f"<Transition> {t} {p:g}" for t in range(last)) + " </State>")
    for s in range(1, last):
        lines.append(f"<State> {s} <PdfClass> {s} "
                     + " ".join(f"<Transition> {t} {p:g}" for t in range(1, num_sil_states)) + " </State>")
    lines.append(f"<State> {last} <PdfClass> {last} <Transition> {last} 0.75 <Transition> {num_sil_states} 0.25 </State>")
    lines += [f"<State> {num_sil_states} </State>", "</TopologyEntry>", "</Topology>"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------------
# Language model

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


# ------------------------------------------------------------------------------------------------------------------
# Lang directory

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
        import kaldifst

        return kaldifst.StdVectorFst.read(str(self.dir / ("L_disambig.fst" if disambig else "L.fst")))


def make_lexicon_fst(entries: Sequence[Tuple[str, List[str]]], phones: Dict[str, int], words: Dict[str, int],
                     sil_prob: float = 0.5, word_disambig_loop: bool = False):
    """L as an OpenFst transducer (phones -> words) with optional silence after every word, as Kaldi's
    ``make_lexicon_fst.py --sil-prob``: states 0 (start), 1 (between words), 2 (after silence)."""
    import kaldifst

    no_sil, sil = -math.log(1 - sil_prob), -math.log(sil_prob)
    # silence is emitted on the 2 -> 1 arc, so both the sentence start and every word end can reach it
    arcs = [f"0 1 0 0 {no_sil}", f"0 2 0 0 {sil}", f"2 1 {phones[SILENCE]} 0 0"]
    next_state = 3
    for word, prons in entries:
        src = 1
        for i, p in enumerate(prons):
            olabel = words[word] if i == 0 else 0
            if i == len(prons) - 1:
                arcs.append(f"{src} 1 {phones[p]} {olabel} {no_sil}")
                arcs.append(f"{src} 2 {phones[p]} {olabel} {sil}")
            else:
                arcs.append(f"{src} {next_state} {phones[p]} {olabel} 0")
                src = next_state
                next_state += 1
    if word_disambig_loop:
        # G's back-off arcs carry #0 on their input; let it pass through L between words.
        arcs.append(f"1 1 {phones['#0']} {words['#0']} 0")
    arcs.append("1 0")
    fst = kaldifst.compile("\n".join(arcs) + "\n", acceptor=False)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def prepare_lang(lexicon: Lexicon, train_texts: Sequence[str], lang_dir: Pathlike, sil_prob: float = 0.5,
                 extra_words: Sequence[str] = (), lm_words: Optional[Sequence[str]] = None) -> Lang:
    """Write a complete lang directory: symbol tables, lexicon, topology, L, L_disambig, ARPA LM and G.fst.

    ``lm_words``: the LM's vocabulary (default: every lexicon word).  A lexicon may hold more words than the LM, e.g.
    dev/test words that only forced alignment needs: G gives them no path, so the decoder never outputs them."""
    lang_dir = Path(lang_dir)
    lang_dir.mkdir(parents=True, exist_ok=True)
    entries = [(w, p) for w, p in lexicon.entries if w not in ("<s>", "</s>", "<sil>")]
    if any(SILENCE in p for _, p in entries):
        raise LexiconError(f"the lexicon must not use the silence phone {SILENCE} inside words")
    lex = Lexicon(entries)
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
    disambig_ids = [phones[f"#{k}"] for k in range(max_k + 1)]
    nonsil = [phones[p] for p in lex.phones if p != SILENCE]
    (lang_dir / "topo").write_text(make_topology([phones[SILENCE]], nonsil))
    L = make_lexicon_fst(entries, phones, words, sil_prob)
    L.write(str(lang_dir / "L.fst"))
    L_disambig = make_lexicon_fst(disambig_entries, phones, words, sil_prob, word_disambig_loop=True)
    L_disambig.write(str(lang_dir / "L_disambig.fst"))
    vocab = list(lex.words) if lm_words is None else sorted(set(lm_words) & set(lex.words))
    arpa = estimate_bigram_arpa([t.split() for t in train_texts], vocab + list(extra_words))
    (lang_dir / "lm.arpa").write_text(arpa)
    G = make_g(lang_dir / "lm.arpa", lang_dir / "words.txt")
    G.write(str(lang_dir / "G.fst"))
    write_json({"silence_phones": [phones[SILENCE]], "disambig_phones": disambig_ids, "sil_prob": sil_prob,
                "lm": "interpolated Witten-Bell bigram"}, lang_dir / "lang.json")
    log.info("lang: %d words, %d phones (+%d disambig), G %d states", len(lex.words), len(nonsil) + 1,
             len(disambig_ids), G.num_states)
    return Lang.load(lang_dir)


def make_g(arpa_path: Pathlike, words_txt: Pathlike):
    """G from an ARPA file with kaldilm's arpa2fst (``#0`` on back-off arcs, ``<s>``/``</s>`` as epsilon).

    kaldilm runs in a child process: importing it into a process that also imports kaldi_hmm_gmm deadlocks in a
    static initializer (seen with kaldilm 1.15.5 + kaldi-hmm-gmm 1.1.4, in either import order).
    """
    import kaldifst

    code = ("import sys, kaldilm; sys.stdout.write(kaldilm.arpa2fst(input_arpa=sys.argv[1], disambig_symbol='#0', "
            "read_symbol_table=sys.argv[2], max_arpa_warnings=0))")
    proc = subprocess.run([sys.executable, "-c", code, str(arpa_path), str(words_txt)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise LexiconError(f"kaldilm could not convert {arpa_path} to G:\n{proc.stderr[-2000:]}")
    G = kaldifst.compile(proc.stdout, acceptor=False)
    kaldifst.arcsort(G, sort_type="ilabel")
    return G


def map_arcs(fst, fn):
    """Copy of ``fst`` with every arc replaced by ``fn(arc)`` (kaldifst has no mutable arc iterator in Python)."""
    import kaldifst

    out = kaldifst.StdVectorFst()
    for _ in range(fst.num_states):
        out.add_state()
    out.start = fst.start
    for s in range(fst.num_states):
        out.set_final(s, fst.final(s))
        it = kaldifst.ArcIterator(fst, s)
        while not it.done:
            out.add_arc(s, fn(it.value))
            it.next()
    return out


def _map_ilabels_to_epsilon(fst, labels: Iterable[int]):
    """Copy of ``fst`` with the given input labels replaced by epsilon (Kaldi's ``fstrmsymbols``)."""
    import kaldifst

    drop = set(labels)
    return map_arcs(fst, lambda a: kaldifst.StdArc(0 if a.ilabel in drop else a.ilabel, a.olabel, a.weight,
                                                   a.nextstate))


def make_hclg(lang: Lang, inventory, self_loop_scale: float = 0.1, transition_scale: float = 1.0):
    """Build HCLG for ``inventory`` (an :class:`asr_distill.align.StateInventory`) as Kaldi's ``mkgraph.sh``."""
    import kaldi_hmm_gmm as khg
    import kaldifst

    L = lang.lexicon_fst(disambig=True)
    G = kaldifst.StdVectorFst.read(str(lang.dir / "G.fst"))
    LG = kaldifst.compose(L, G)
    kaldifst.determinize_star(LG, use_log=True)
    kaldifst.minimize_encoded(LG)
    tree = inventory.tree
    CLG, ilabels = kaldifst.compose_context(disambig_syms=lang.disambig_phones, context_width=tree.context_width,
                                            central_position=tree.central_position, ifst=LG)
    kaldifst.arcsort(CLG, sort_type="ilabel")
    H, disambig_tids = khg.get_h_transducer(ilabel_info=ilabels, ctx_dep=tree, trans_model=inventory.transition_model,
                                            config=khg.HTransducerConfig(transition_scale=transition_scale))
    HCLG = kaldifst.compose(H, CLG)
    kaldifst.determinize_star(HCLG, use_log=True)
    HCLG = _map_ilabels_to_epsilon(HCLG, disambig_tids)
    kaldifst.rmepsilon(HCLG)
    kaldifst.minimize_encoded(HCLG)
    HCLG = khg.add_self_loops(self_loop_scale=self_loop_scale, disambig_syms=[], reorder=True,
                              trans_model=inventory.transition_model, ifst=HCLG)
    kaldifst.arcsort(HCLG, sort_type="ilabel")
    return HCLG
