"""Posteriors of each frame over the Gaussians of its aligned pdf (what Kaldi's ``gmm-acc-mllt`` and
``gmm-est-fmllr`` use given an alignment), and the input checks the transform estimators share."""
from __future__ import annotations

import numpy as np
from scipy import sparse

from .model import GmmModel

__all__ = ["gaussian_posteriors"]

# Entries (frame, Gaussian) scored per chunk in gaussian_posteriors, divided by the feature dimension: bounds the
# gathered (entries, dim) temporaries to a few MB.
_CHUNK_ELEMENTS = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# Input checks shared by every entry point.

def _as_feats(feats: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D (frames, dim) array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"features have dimension {x.shape[1]} but {dim} was expected")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x


def _as_labels(pdf_ids: np.ndarray, num_frames: int) -> np.ndarray:
    ids = np.asarray(pdf_ids)
    if ids.ndim != 1 or len(ids) != num_frames:
        raise ValueError(f"expected one pdf-id per frame ({num_frames} frames), got labels of shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"pdf-ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"pdf-ids must be non-negative, got {ids.min()}")
    return ids


def _as_weights(weights: np.ndarray | None, num_frames: int) -> np.ndarray:
    if weights is None:
        return np.ones(num_frames)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (num_frames,):
        raise ValueError(f"expected one weight per frame ({num_frames} frames), got weights of shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("frame weights must be finite and non-negative")
    return w


# ----------------------------------------------------------------------------------------------------------------
# Splicing and per-frame Gaussian posteriors.

def _gauss_by_pdf(gmm: GmmModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Gaussian indices sorted by pdf, first position of each pdf in that order, Gaussians per pdf)."""
    pdfs = np.asarray(gmm.pdf_of_gauss, dtype=np.int64)
    order = np.argsort(pdfs, kind="stable")  # stable: a pdf's Gaussians stay in increasing index order
    counts = np.bincount(pdfs, minlength=gmm.num_pdfs)
    return order, np.cumsum(counts) - counts, counts


def _entry_loglikes(gmm: GmmModel, x: np.ndarray, frame: np.ndarray, gauss: np.ndarray) -> np.ndarray:
    """log(w_m N(x_t; mu_m, diag var_m)) for each (frame t, Gaussian m) pair, in bounded-memory chunks."""
    inv_var = 1.0 / gmm.variances
    with np.errstate(divide="ignore"):  # a zero-weight Gaussian just gets posterior zero
        gconst = np.log(gmm.weights) - 0.5 * np.log(2.0 * np.pi * gmm.variances).sum(1)
    out = np.empty(len(frame))
    step = max(1, _CHUNK_ELEMENTS // max(1, x.shape[1]))
    for lo in range(0, len(frame), step):
        f, g = frame[lo:lo + step], gauss[lo:lo + step]
        d = x[f] - gmm.means[g]  # the difference form, not the expanded quadratic: no cancellation
        out[lo:lo + step] = gconst[g] - 0.5 * np.einsum("nd,nd->n", d * d, inv_var[g])
    return out


def gaussian_posteriors(gmm: GmmModel, feats: np.ndarray, pdf_ids: np.ndarray
                        ) -> tuple[sparse.csr_array, np.ndarray]:
    """Posteriors of each frame over the Gaussians of its aligned pdf only, as Kaldi's ``gmm-acc-mllt`` and
    ``gmm-est-fmllr`` use them given an alignment.

    Returns ``(post, loglike)``:

    - ``post``: ``scipy.sparse.csr_array`` of shape (frames, num_gauss).  Row ``t`` holds the posteriors of the
      Gaussians of pdf ``pdf_ids[t]`` (summing to one) and nothing else: ``post.indptr`` delimits each frame's
      entries, ``post.indices`` are Gaussian indices (increasing within a row), ``post.data`` the posteriors.
      ``post.tocoo()`` gives the (frame, gauss, posterior) triplets; ``post.T @ feats`` the first-order stats.
    - ``loglike``: (frames,) float64, ``log p(x_t | pdf_t)`` (what ``GmmModel.loglikes`` gives at the aligned pdf).
    """
    x = _as_feats(feats, gmm.means.shape[1])
    ids = _as_labels(pdf_ids, len(x))
    num_gauss = len(gmm.weights)
    order, starts, counts = _gauss_by_pdf(gmm)
    if ids.size and ids.max() >= len(counts):
        raise ValueError(f"pdf-id {ids.max()} is out of range: the model has {len(counts)} pdfs")
    per_frame = counts[ids]
    if (per_frame == 0).any():
        raise ValueError(f"pdf {ids[per_frame == 0][0]} has no Gaussians in the model")
    indptr = np.concatenate([[0], np.cumsum(per_frame)])
    if len(x) == 0:
        return sparse.csr_array((np.zeros(0), np.zeros(0, np.int64), indptr), shape=(0, num_gauss)), np.zeros(0)
    # Each frame gets a contiguous run of entries, one per Gaussian of its pdf (offset k within the pdf).
    frame = np.repeat(np.arange(len(x)), per_frame)
    gauss = order[np.repeat(starts[ids] - indptr[:-1], per_frame) + np.arange(indptr[-1])]
    ll = _entry_loglikes(gmm, x, frame, gauss)
    # Log-sum-exp over each frame's run.
    peak = np.maximum.reduceat(ll, indptr[:-1])
    expd = np.exp(ll - np.repeat(peak, per_frame))
    total = np.add.reduceat(expd, indptr[:-1])
    post = expd / np.repeat(total, per_frame)
    return sparse.csr_array((post, gauss, indptr), shape=(len(x), num_gauss)), peak + np.log(total)
