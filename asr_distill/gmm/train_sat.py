"""Speaker-adaptive training as Kaldi's ``steps/train_sat.sh``: per-speaker fMLLR transforms, first estimated with
the speaker-independent system on its own alignment, a tree and triphone GMM on the adapted features, and the
transforms re-estimated with the model being trained on a few early iterations.  Test speakers get theirs from a
first, speaker-independent decoding pass (:func:`estimate_speaker_fmllr` on that pass's alignment)."""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..lang import Lang
from .features import GmmFeatures, adapt
from .fmllr import FmllrStats, estimate_fmllr
from .inventory import StateInventory
from .model import GmmModel
from .train_lda_mllt import silence_weights
from .train_tri import TriphoneConfig, train_triphone

__all__ = ["train_sat", "estimate_speaker_fmllr", "compose_affine", "FMLLR_ITERS"]

log = logging.getLogger(__name__)

FMLLR_ITERS = (2, 4, 6, 12)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """[A b] of ``outer(inner(x))`` (Kaldi's compose-transforms --b-is-affine)."""
    A = outer[:, :-1] @ inner[:, :-1]
    return np.concatenate([A, (outer[:, :-1] @ inner[:, -1] + outer[:, -1])[:, None]], axis=1)


def estimate_speaker_fmllr(gmm: GmmModel, inventory: StateInventory, feats: Mapping[str, np.ndarray],
                           alis: Mapping[str, Sequence[int]], speakers: Mapping[str, str],
                           silence_phones: Sequence[int], silence_weight: float,
                           previous: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """One fMLLR transform per speaker from the aligned frames of all their utterances (gmm-est-fmllr with
    ``--spk2utt``).  With ``previous`` transforms, the statistics are gathered on the features they adapt and the
    new transform is composed onto them, as train_sat.sh does: the Gaussian posteriors of a mixture are only
    right on features already close to the model's space.  A speaker with too little data keeps what they had
    (estimate_fmllr's minimum count gives the identity)."""
    previous = previous or {}
    current = adapt(feats, speakers, previous) if previous else feats
    by_speaker: Dict[str, List[str]] = {}
    for u in alis:
        by_speaker.setdefault(speakers[u], []).append(u)
    transforms, gains = {}, []
    for spk, utts in by_speaker.items():
        st = FmllrStats(current[utts[0]].shape[1])
        st.accumulate(gmm, np.concatenate([current[u] for u in utts]),
                      np.concatenate([inventory.tids_to_pdfs(alis[u]) for u in utts]),
                      np.concatenate([silence_weights(inventory, alis[u], silence_phones, silence_weight)
                                      for u in utts]))
        W, impr = estimate_fmllr(st, gmm)
        transforms[spk] = compose_affine(W, previous[spk]) if spk in previous else W
        gains.append(impr)
    for spk in set(previous) - set(transforms):
        transforms[spk] = previous[spk]
    log.info("fMLLR for %d speakers, mean objective improvement %.3f per frame", len(gains),
             float(np.mean(gains)) if gains else 0.0)
    return transforms


def train_sat(lang: Lang, prev: StateInventory, prev_gmm: GmmModel, prev_features: GmmFeatures,
              prev_alis: Mapping[str, Sequence[int]], mfcc: Mapping[str, np.ndarray], speakers: Mapping[str, str],
              texts: Mapping[str, str], config: TriphoneConfig, fmllr_iters: Sequence[int] = FMLLR_ITERS,
              silence_weight: float = 0.0, progress: bool = True
              ) -> Tuple[StateInventory, GmmModel, Dict[str, List[int]], GmmFeatures]:
    if prev_features.speaker_adapted:
        raise ValueError("speaker-adaptive training starts from a speaker-independent system")
    base = prev_features.speaker_independent({u: mfcc[u] for u in prev_alis})
    state = {"transforms": estimate_speaker_fmllr(prev_gmm, prev, base, prev_alis, speakers, lang.silence_phones,
                                                  silence_weight)}

    def fmllr_update(it: int, gmm: GmmModel, inv: StateInventory, alis: Dict[str, List[int]]):
        if it not in fmllr_iters:
            return None
        state["transforms"] = estimate_speaker_fmllr(gmm, inv, base, alis, speakers, lang.silence_phones,
                                                     silence_weight, previous=state["transforms"])
        return adapt(base, speakers, state["transforms"]), gmm

    inventory, gmm, alis, _ = train_triphone(lang, prev, prev_alis, adapt(base, speakers, state["transforms"]),
                                             texts, config, feature_update=fmllr_update, name="tri3 (SAT)",
                                             progress=progress)
    features = GmmFeatures(prev_features.kind, prev_features.splice, prev_features.lda_mllt,
                           {"train": state["transforms"]})
    return inventory, gmm, alis, features
