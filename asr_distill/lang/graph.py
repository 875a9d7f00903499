"""Decoding graphs as Kaldi's ``prepare_lang.sh`` + ``mkgraph.sh`` build them: L with optional silence and
disambiguation symbols, then ``HCLG = min(rmeps(det(H o min(det(C o min(det(L o G)))))))`` with self-loops added
last.  The context-dependency (C, H) comes from a state inventory (:class:`asr_distill.gmm.StateInventory`)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import kaldi_hmm_gmm as khg
import kaldifst

from ..fst import map_ilabels_to_epsilon

if TYPE_CHECKING:  # only for annotations: lang_dir imports this module
    from .lang_dir import Lang

__all__ = ["make_lexicon_fst", "make_hclg", "SILENCE"]

SILENCE = "SIL"


def make_lexicon_fst(entries: Sequence[Tuple[str, List[str]]], phones: Dict[str, int], words: Dict[str, int],
                     sil_prob: float = 0.5, word_disambig_loop: bool = False,
                     probs: Optional[Sequence[float]] = None):
    """L as an OpenFst transducer (phones -> words) with optional silence after every word, as Kaldi's
    ``make_lexicon_fst.py --sil-prob``: states 0 (start), 1 (between words), 2 (after silence).  ``probs``:
    pronunciation probabilities (``lexiconp.txt``), -log(prob) on each pronunciation's first arc."""
    no_sil, sil = -math.log(1 - sil_prob), -math.log(sil_prob)
    probs = probs if probs is not None else [1.0] * len(entries)
    # silence is emitted on the 2 -> 1 arc, so both the sentence start and every word end can reach it
    arcs = [f"0 1 0 0 {no_sil}", f"0 2 0 0 {sil}", f"2 1 {phones[SILENCE]} 0 0"]
    next_state = 3
    for (word, prons), prob in zip(entries, probs):
        src = 1
        for i, p in enumerate(prons):
            olabel = words[word] if i == 0 else 0
            pron_cost = -math.log(prob) if i == 0 else 0.0
            if i == len(prons) - 1:
                arcs.append(f"{src} 1 {phones[p]} {olabel} {no_sil + pron_cost}")
                arcs.append(f"{src} 2 {phones[p]} {olabel} {sil + pron_cost}")
            else:
                arcs.append(f"{src} {next_state} {phones[p]} {olabel} {pron_cost}")
                src = next_state
                next_state += 1
    if word_disambig_loop:
        # G's back-off arcs carry #0 on their input; let it pass through L between words.
        arcs.append(f"1 1 {phones['#0']} {words['#0']} 0")
    arcs.append("1 0")
    fst = kaldifst.compile("\n".join(arcs) + "\n", acceptor=False)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def make_hclg(lang: Lang, inventory, self_loop_scale: float = 0.1, transition_scale: float = 1.0):
    """Build HCLG for ``inventory`` (an :class:`asr_distill.gmm.StateInventory`) as Kaldi's ``mkgraph.sh``."""
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
    HCLG = map_ilabels_to_epsilon(HCLG, disambig_tids)
    kaldifst.rmepsilon(HCLG)
    kaldifst.minimize_encoded(HCLG)
    HCLG = khg.add_self_loops(self_loop_scale=self_loop_scale, disambig_syms=[], reorder=True,
                              trans_model=inventory.transition_model, ifst=HCLG)
    kaldifst.arcsort(HCLG, sort_type="ilabel")
    return HCLG
