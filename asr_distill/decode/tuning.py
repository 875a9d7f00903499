"""The acoustic scale and word insertion penalty, chosen on DEV by decoding it on a grid."""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from ..utils import Pathlike
from .backend import DecodingConfig, decode_loglikes
from .scoring import compute_wer, words_of

__all__ = ["tune_acoustic_scale"]

log = logging.getLogger(__name__)


def tune_acoustic_scale(hclg_path: Pathlike, tid2pdf: np.ndarray, dev_loglikes: Mapping[str, np.ndarray],
                        dev_refs: Mapping[str, Sequence[str]], id2word: Mapping[int, str],
                        scales: Sequence[float], config: DecodingConfig, jobs: int = 1,
                        penalties: Sequence[float] = (0.0,)) -> Tuple[DecodingConfig, Dict[str, float]]:
    """Decode the DEV set at each (acoustic scale, word penalty) and return the best config (ties -> the larger
    scale, which decodes faster, and the smaller penalty) and every setting's dev WER.  The test set is never
    looked at here."""
    wers: Dict[Tuple[float, float], float] = {}
    for penalty in penalties:
        for scale in scales:
            cfg = config.with_(acoustic_scale=scale, word_penalty=penalty)
            hyps = decode_loglikes(hclg_path, tid2pdf, dev_loglikes, cfg, jobs)
            wers[(scale, penalty)] = compute_wer(dev_refs, {u: words_of(h, id2word) for u, h in hyps.items()},
                                                 bootstrap_replications=0).wer
            log.debug("  dev acoustic scale %.4f, word penalty %.2f: WER %.2f%%", scale, penalty,
                      wers[(scale, penalty)])
    scale, penalty = min(wers, key=lambda k: (round(wers[k], 6), -k[0], k[1]))
    log.info("  dev: best acoustic scale %.4f, word penalty %.2f: WER %.2f%% (%d settings tried)", scale, penalty,
             wers[(scale, penalty)], len(wers))
    best = config.with_(acoustic_scale=scale, word_penalty=penalty)
    return best, {f"{k[0]:g}/{k[1]:g}": v for k, v in wers.items()}
