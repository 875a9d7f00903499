"""Decision-tree statistics (Kaldi's ``acc-tree-stats``): per context window and HMM state, the count, sum and
sum of squares of the frames an alignment gives it, and the Gaussian log-likelihood the tree's splits maximise."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

__all__ = ["TreeStats", "accumulate_tree_stats", "phone_windows", "gauss_objf", "VAR_FLOOR"]

# acc-tree-stats' default: keeps a leaf whose frames are (nearly) constant in one dimension from an infinite gain
VAR_FLOOR = 0.01


@dataclass
class TreeStats:
    """One row per event: the phones of a context window (0 at an utterance edge), the HMM state's pdf-class, and
    the zeroth, first and second order statistics of the frames seen in it."""

    windows: np.ndarray  # (E, N) int: phone at each context position
    pdf_classes: np.ndarray  # (E,) int
    counts: np.ndarray  # (E,)
    sums: np.ndarray  # (E, D)
    sumsqs: np.ndarray  # (E, D)

    @property
    def context_width(self) -> int:
        return self.windows.shape[1]

    @property
    def dim(self) -> int:
        return self.sums.shape[1]

    def key_values(self, key: int) -> np.ndarray:
        """The events' values for a tree key: -1 is the pdf-class, 0..N-1 a context position (Kaldi's keys)."""
        return self.pdf_classes if key == -1 else self.windows[:, key]

    def subset(self, rows: np.ndarray) -> "TreeStats":
        return TreeStats(self.windows[rows], self.pdf_classes[rows], self.counts[rows], self.sums[rows],
                         self.sumsqs[rows])


def gauss_objf(counts: np.ndarray, sums: np.ndarray, sumsqs: np.ndarray, var_floor: float = VAR_FLOOR) -> np.ndarray:
    """Log-likelihood of data under its own maximum-likelihood diagonal Gaussian (Kaldi's GaussClusterable::Objf),
    for stacked statistics: counts (...,), sums / sumsqs (..., D).  Zero for empty statistics."""
    counts = np.asarray(counts, dtype=np.float64)
    safe = np.maximum(counts, 1e-10)[..., None]
    mean = sums / safe
    var = np.maximum(sumsqs / safe - mean ** 2, var_floor)
    dim = sums.shape[-1]
    objf = -0.5 * counts * (np.log(var).sum(-1) + dim * (1.0 + np.log(2 * np.pi)))
    return np.where(counts > 0, objf, 0.0)


def phone_windows(phones: np.ndarray, starts: np.ndarray, context_width: int = 3, central: int = 1) -> np.ndarray:
    """Each frame's context window of phone instances: ``phones[t]`` is frame t's phone and ``starts[t]`` whether a
    new phone instance begins at t.  Positions beyond the utterance are phone 0, as in Kaldi."""
    inst = np.cumsum(starts) - 1  # instance index of every frame
    inst_phone = phones[starts]
    padded = np.concatenate([np.zeros(central, np.int64), inst_phone, np.zeros(context_width - central - 1, np.int64)])
    return np.stack([padded[inst + j] for j in range(context_width)], axis=1)


def accumulate_tree_stats(frame_phones: Mapping[str, np.ndarray], frame_states: Mapping[str, np.ndarray],
                          phone_starts: Mapping[str, np.ndarray], feats: Mapping[str, np.ndarray],
                          context_width: int = 3, central: int = 1) -> TreeStats:
    """Sum the frames of every utterance into (context window, pdf-class) events.

    ``frame_phones`` / ``frame_states`` / ``phone_starts``: per utterance and frame, the aligned phone, its pdf-class
    and whether a phone instance starts there (:meth:`StateInventory.frame_phones` gives all three)."""
    keys, xs = [], []
    for utt in frame_phones:
        f = feats[utt]
        if len(f) != len(frame_phones[utt]):
            raise ValueError(f"utterance {utt}: {len(f)} feature frames but an alignment of "
                             f"{len(frame_phones[utt])}")
        win = phone_windows(frame_phones[utt], phone_starts[utt], context_width, central)
        keys.append(np.concatenate([win, frame_states[utt][:, None]], axis=1))
        xs.append(f)
    keys_all = np.concatenate(keys).astype(np.int64)
    x = np.concatenate(xs).astype(np.float64)
    uniq, inverse = np.unique(keys_all, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)  # every event has at least one frame
    sums = np.add.reduceat(x[order], starts, axis=0)
    sumsqs = np.add.reduceat(x[order] ** 2, starts, axis=0)
    return TreeStats(uniq[:, :context_width], uniq[:, context_width], counts, sums, sumsqs)
