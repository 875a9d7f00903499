"""Diagonal-covariance GMMs stored as plain arrays (no pickle), with frame log-likelihoods computed in numpy, so
the GMM decodes through exactly the same hybrid path as the DNNs (:mod:`asr_distill.decode`)."""
from __future__ import annotations

from dataclasses import dataclass

import kaldi_hmm_gmm as khg
import numpy as np
import torch

from ..utils import Pathlike, atomic_path

__all__ = ["GmmModel"]


@dataclass
class GmmModel:
    """Diagonal-covariance GMMs, one per pdf, as flat arrays over all Gaussians."""

    pdf_of_gauss: np.ndarray  # (G,) int
    weights: np.ndarray  # (G,)
    means: np.ndarray  # (G, D)
    variances: np.ndarray  # (G, D)

    @classmethod
    def from_am(cls, am) -> "GmmModel":
        pdfs, ws, ms, vs = [], [], [], []
        for j in range(am.num_pdfs):
            g = am.get_pdf(j)
            ws.append(np.asarray(g.weights, dtype=np.float64))
            ms.append(np.asarray(g.means, dtype=np.float64))
            vs.append(1.0 / np.asarray(g.inv_vars, dtype=np.float64))
            pdfs.append(np.full(len(ws[-1]), j))
        return cls(np.concatenate(pdfs), np.concatenate(ws), np.concatenate(ms), np.concatenate(vs))

    def to_am(self):
        am = khg.AmDiagGmm()
        for j in range(int(self.pdf_of_gauss.max()) + 1):
            sel = self.pdf_of_gauss == j
            g = khg.DiagGmm(nmix=int(sel.sum()), dim=self.means.shape[1])
            g.set_weights(torch.from_numpy(self.weights[sel].astype(np.float32)))
            g.set_means(torch.from_numpy(self.means[sel].astype(np.float32)))
            g.set_invvars(torch.from_numpy((1.0 / self.variances[sel]).astype(np.float32)))
            g.compute_gconsts()
            am.add_pdf(g)
        return am

    @property
    def num_pdfs(self) -> int:
        return int(self.pdf_of_gauss.max()) + 1

    def loglikes(self, feats: np.ndarray) -> np.ndarray:
        """(frames, num_pdfs) log p(x | pdf), each pdf's mixture summed with log-sum-exp."""
        x = feats.astype(np.float64)
        inv = 1.0 / self.variances
        const = (np.log(self.weights) - 0.5 * (np.log(2 * np.pi * self.variances).sum(1)
                                               + (self.means ** 2 * inv).sum(1)))
        comp = x @ (self.means * inv).T - 0.5 * (x ** 2) @ inv.T + const  # (T, G)
        order = np.argsort(self.pdf_of_gauss, kind="stable")
        comp, pdfs = comp[:, order], self.pdf_of_gauss[order]
        starts = np.flatnonzero(np.r_[True, pdfs[1:] != pdfs[:-1]])
        peak = np.maximum.reduceat(comp, starts, axis=1)
        summed = np.add.reduceat(np.exp(comp - np.repeat(peak, np.diff(np.r_[starts, len(pdfs)]), axis=1)),
                                 starts, axis=1)
        return (peak + np.log(summed)).astype(np.float32)

    def save(self, path: Pathlike) -> None:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, pdf_of_gauss=self.pdf_of_gauss, weights=self.weights, means=self.means,
                     variances=self.variances)

    @classmethod
    def load(cls, path: Pathlike) -> "GmmModel":
        z = np.load(path, allow_pickle=False)
        return cls(z["pdf_of_gauss"], z["weights"], z["means"], z["variances"])
