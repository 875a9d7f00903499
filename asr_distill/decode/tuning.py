"""The acoustic scale and word insertion penalty, chosen on DEV: by decoding it at every point of a grid, or at
the points a descent over the same grid visits (a handful instead of dozens)."""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from ..utils import Pathlike
from .backend import DecodingConfig, decode_loglikes
from .scoring import compute_wer, words_of

__all__ = ["tune_acoustic_scale", "search_acoustic_scale", "dev_wer", "grid_rank", "as_table"]

GridPoint = Tuple[float, float]  # (acoustic scale, word penalty)


def dev_wer(hclg_path: Pathlike, tid2pdf: np.ndarray, dev_loglikes: Mapping[str, np.ndarray],
            dev_refs: Mapping[str, Sequence[str]], id2word: Mapping[int, str], config: DecodingConfig,
            jobs: int = 1) -> float:
    """Dev WER of one real decode with ``config``."""
    hyps = decode_loglikes(hclg_path, tid2pdf, dev_loglikes, config, jobs)
    wer = compute_wer(dev_refs, {u: words_of(h, id2word) for u, h in hyps.items()}, bootstrap_replications=0).wer
    log.debug("  dev acoustic scale %.4f, word penalty %.2f: WER %.2f%%", config.acoustic_scale,
              config.word_penalty, wer)
    return wer


def grid_rank(wers: Mapping[GridPoint, float]):
    """Sort key of grid points: the lower WER; ties -> the larger scale (decodes faster), then the smaller penalty."""
    return lambda k: (round(wers[k], 6), -k[0], k[1])


def as_table(wers: Mapping[GridPoint, float]) -> Dict[str, float]:
    """``{"scale/penalty": WER}``, as results and wer.json keep the grid."""
    return {f"{k[0]:g}/{k[1]:g}": v for k, v in wers.items()}

log = logging.getLogger(__name__)


def tune_acoustic_scale(hclg_path: Pathlike, tid2pdf: np.ndarray, dev_loglikes: Mapping[str, np.ndarray],
                        dev_refs: Mapping[str, Sequence[str]], id2word: Mapping[int, str],
                        scales: Sequence[float], config: DecodingConfig, jobs: int = 1,
                        penalties: Sequence[float] = (0.0,)) -> Tuple[DecodingConfig, Dict[str, float]]:
    """Decode the DEV set at each (acoustic scale, word penalty) and return the best config (ties -> the larger
    scale, which decodes faster, and the smaller penalty) and every setting's dev WER.  The test set is never
    looked at here."""
    wers = {(scale, penalty): dev_wer(hclg_path, tid2pdf, dev_loglikes, dev_refs, id2word,
                                      config.with_(acoustic_scale=scale, word_penalty=penalty), jobs)
            for penalty in penalties for scale in scales}
    scale, penalty = min(wers, key=grid_rank(wers))
    log.info("  dev: best acoustic scale %.4f, word penalty %.2f: WER %.2f%% (%d settings tried)", scale, penalty,
             wers[(scale, penalty)], len(wers))
    return config.with_(acoustic_scale=scale, word_penalty=penalty), as_table(wers)


def search_acoustic_scale(hclg_path: Pathlike, tid2pdf: np.ndarray, dev_loglikes: Mapping[str, np.ndarray],
                          dev_refs: Mapping[str, Sequence[str]], id2word: Mapping[int, str],
                          scales: Sequence[float], config: DecodingConfig, jobs: int = 1,
                          penalties: Sequence[float] = (0.0,)) -> Tuple[DecodingConfig, Dict[str, float]]:
    """:func:`tune_acoustic_scale` by descent: start at the grid's middle point, decode its neighbours (one step in
    scale and/or penalty), move to the best while it improves (same ranking and tie-breaking as the full grid).
    Dev WER over the grid is close to unimodal in the scale, so this lands on the grid's best or next to it with
    typically a quarter of the decodes.  Only the visited points are in the returned table."""
    S, P = sorted(scales), sorted(penalties)
    wers: Dict[GridPoint, float] = {}

    def visit(i: int, j: int) -> GridPoint:
        key = (S[i], P[j])
        if key not in wers:
            wers[key] = dev_wer(hclg_path, tid2pdf, dev_loglikes, dev_refs, id2word,
                                config.with_(acoustic_scale=key[0], word_penalty=key[1]), jobs)
        return key

    rank = grid_rank(wers)
    cur = (len(S) // 2, len(P) // 2)
    visit(*cur)
    while True:
        steps = [(cur[0] + di, cur[1] + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)
                 if (di or dj) and 0 <= cur[0] + di < len(S) and 0 <= cur[1] + dj < len(P)]
        best = min([cur, *steps], key=lambda ij: rank(visit(*ij)))
        if best == cur:
            break
        cur = best
    scale, penalty = S[cur[0]], P[cur[1]]
    log.info("  dev: best acoustic scale %.4f, word penalty %.2f: WER %.2f%% (%d of %d grid points decoded)", scale,
             penalty, wers[(scale, penalty)], len(wers), len(S) * len(P))
    return config.with_(acoustic_scale=scale, word_penalty=penalty), as_table(wers)
