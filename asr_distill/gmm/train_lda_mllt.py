"""LDA+MLLT triphones as Kaldi's ``steps/train_lda_mllt.sh``: MFCC frames spliced +-3, an LDA to ``dim`` dimensions
estimated on the previous system's alignment (silence frames left out), a tree and triphone GMM in that space, and
on a few early iterations an MLLT (semi-tied covariance) transform estimated, composed onto the LDA and applied to
the model's means."""
from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from ..lang import Lang
from .features import GmmFeatures
from .inventory import StateInventory
from .lda_mllt import LdaStats, MlltStats, estimate_lda, estimate_mllt, splice_frames, transform_means
from .model import GmmModel
from .train_tri import TriphoneConfig, train_triphone

__all__ = ["train_lda_mllt", "silence_weights", "MLLT_ITERS"]

log = logging.getLogger(__name__)

MLLT_ITERS = (2, 4, 6, 12)


def silence_weights(inventory: StateInventory, tids: Sequence[int], silence_phones: Sequence[int],
                    weight: float) -> np.ndarray:
    """Per frame 1, or ``weight`` where the alignment is in a silence phone (Kaldi's weight-silence-post)."""
    phones, _, _ = inventory.frame_phones(tids)
    return np.where(np.isin(phones, silence_phones), weight, 1.0)


def _blocks(utts: Sequence[str], feats: Mapping[str, np.ndarray], frames: int = 500_000) -> Iterator[List[str]]:
    """``utts`` in consecutive groups of about ``frames`` frames."""
    block: List[str] = []
    count = 0
    for u in utts:
        block.append(u)
        count += len(feats[u])
        if count >= frames:
            yield block
            block, count = [], 0
    if block:
        yield block


def train_lda_mllt(lang: Lang, prev: StateInventory, prev_alis: Mapping[str, Sequence[int]],
                   mfcc: Mapping[str, np.ndarray], texts: Mapping[str, str], config: TriphoneConfig,
                   dim: int = 40, splice: int = 3, mllt_iters: Sequence[int] = MLLT_ITERS, progress: bool = True
                   ) -> Tuple[StateInventory, GmmModel, Dict[str, List[int]], GmmFeatures]:
    # Statistics are accumulated over blocks of utterances and the spliced frames never exist for the whole corpus
    # at once (at 100 hours they would be ~13 GB): memory stays at the projected features plus one block.
    utts = list(prev_alis)
    lda_stats = LdaStats(mfcc[utts[0]].shape[1] * (2 * splice + 1), prev.num_pdfs)
    for block in _blocks(utts, mfcc):
        lda_stats.accumulate(np.concatenate([splice_frames(mfcc[u], splice) for u in block]),
                             np.concatenate([prev.tids_to_pdfs(prev_alis[u]) for u in block]),
                             np.concatenate([silence_weights(prev, prev_alis[u], lang.silence_phones, 0.0)
                                             for u in block]))
    state = {"matrix": estimate_lda(lda_stats, dim)}

    def project() -> Dict[str, np.ndarray]:
        m = state["matrix"].astype(np.float32)
        return {u: splice_frames(mfcc[u].astype(np.float32), splice) @ m.T for u in utts}

    feats = {"current": project()}

    def mllt_update(it: int, gmm: GmmModel, inv: StateInventory, alis: Dict[str, List[int]]):
        if it not in mllt_iters:
            return None
        # blocks of many utterances: the statistics do not depend on utterance boundaries, and every call pays
        # for each Gaussian it touches (silence weighted 0, as gmm-acc-mllt is fed in train_lda_mllt.sh)
        stats = MlltStats(dim)
        for block in _blocks(list(alis), feats["current"]):
            stats.accumulate(gmm, np.concatenate([feats["current"][u] for u in block]),
                             np.concatenate([inv.tids_to_pdfs(alis[u]) for u in block]),
                             np.concatenate([silence_weights(inv, alis[u], lang.silence_phones, 0.0)
                                             for u in block]))
        A, impr = estimate_mllt(stats)
        log.info("iteration %d: MLLT objective improvement %.4f per frame", it, impr)
        state["matrix"] = A @ state["matrix"]
        feats["current"] = project()
        return feats["current"], transform_means(gmm, A)

    inventory, gmm, alis, _ = train_triphone(lang, prev, prev_alis, feats["current"], texts, config,
                                             feature_update=mllt_update, name="tri2 (LDA+MLLT)", progress=progress)
    return inventory, gmm, alis, GmmFeatures("lda", splice, state["matrix"])
