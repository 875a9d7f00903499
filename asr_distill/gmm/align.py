"""Viterbi forced alignment of utterances against their transcripts (Kaldi's ``compile-train-graphs`` +
``gmm-align-compiled``)."""
from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
import torch

from ..lang import Lang
from .inventory import StateInventory

__all__ = ["TrainingGraphs", "align_utterances", "AlignmentError"]


class AlignmentError(RuntimeError):
    pass


class TrainingGraphs:
    """Per-utterance training graphs (H C L over the transcript), compiled once and reused every realignment.

    Compiled WITHOUT transition probabilities, as Kaldi's ``compile-train-graphs`` does: the aligner adds the
    current model's (:func:`align_utterances`), which change at every re-estimation.  Graphs compiled with them
    would carry the compiling model's transition costs into every later alignment on top of the current ones."""

    def __init__(self, lang: Lang, inventory: StateInventory, texts: Mapping[str, str]):
        L = lang.lexicon_fst(disambig=False)
        kaldifst.arcsort(L, sort_type="olabel")
        opts = khg.TrainingGraphCompilerOptions()
        opts.transition_scale, opts.self_loop_scale = 0.0, 0.0
        self.compiler = khg.TrainingGraphCompiler(trans_model=inventory.transition_model, ctx_dep=inventory.tree,
                                                  lex_fst=L, disambig_syms=lang.disambig_phones, opts=opts)
        self.graphs = {utt: self.compiler.compile_graph_from_text(lang.word_ids(text, utt))
                       for utt, text in texts.items()}


def _gmm_decodable(am, inventory: StateInventory, feats: np.ndarray, scale: float):
    return khg.DecodableAmDiagGmmScaled(am=am, tm=inventory.transition_model,
                                        feats=torch.from_numpy(np.ascontiguousarray(feats)), scale=scale)


def align_utterances(am, inventory: StateInventory, graphs: TrainingGraphs, feats: Mapping[str, np.ndarray],
                     beam: float = 10.0, retry_beam: float = 40.0, acoustic_scale: float = 0.1,
                     self_loop_scale: float = 0.1) -> Tuple[Dict[str, List[int]], List[str], float]:
    """Viterbi forced alignment (Kaldi's ``gmm-align-compiled``); returns (utt -> transition-ids, failed utts,
    average log-likelihood per frame)."""

    cfg = khg.AlignConfig()
    cfg.beam, cfg.retry_beam, cfg.careful = beam, retry_beam, False
    alis, failed = {}, []
    tot_like, frames = 0.0, 0
    for utt, f in feats.items():
        fst = graphs.graphs[utt].copy()
        khg.add_transition_probs(trans_model=inventory.transition_model, transition_scale=1.0,
                                 self_loop_scale=self_loop_scale, fst=fst)
        res = khg.align_utterance_wrapper(config=cfg, utt=utt, acoustic_scale=acoustic_scale, fst=fst,
                                          decodable=_gmm_decodable(am, inventory, f, acoustic_scale),
                                          num_done=0, num_error=0, num_retried=0, tot_like=0.0, frame_count=0)
        num_done, _, _, like, count, ali, _ = res
        if num_done != 1 or len(ali) != len(f):
            failed.append(utt)
            continue
        alis[utt] = list(ali)
        tot_like += like
        frames += count
    return alis, failed, tot_like / max(1, frames)
