"""LDA + MLLT feature transforms as Kaldi's ``steps/train_lda_mllt.sh``, in float64 numpy.

The recipe: frames are spliced with their neighbours (``splice-feats``), projected by LDA over pdf classes
(``acc-lda`` + ``est-lda``), and, a few times during training, rotated by MLLT, i.e. Gales' semi-tied covariance
(``gmm-acc-mllt`` + ``est-mllt``).  After each MLLT estimate Kaldi moves the model into the new space
(``gmm-transform-means``: means only, variances unchanged) and composes the transforms
(``compose-transforms``: ``new_full = A @ old_full``); features are then ``spliced @ full.T``.

Written from Kaldi's published algorithms (``transform/lda-estimate.cc``, ``transform/mllt.cc``), without the
randomised pruning of posteriors Kaldi uses to save time (every statistic here is exact).
"""
from __future__ import annotations

import logging

import numpy as np
from scipy import sparse
from scipy.linalg import solve_triangular

from .model import GmmModel
from .posteriors import _as_feats, _as_labels, _as_weights, gaussian_posteriors

__all__ = ["splice_frames", "gaussian_posteriors", "LdaStats", "estimate_lda", "MlltStats", "estimate_mllt",
           "transform_means"]

log = logging.getLogger(__name__)

# Kaldi's est-lda smoothing when the within-class covariance is not positive definite: this fraction of its mean
# eigenvalue is added to the diagonal.
_WITHIN_CLASS_FLOOR = 1.0e-3
# Below this ratio of smallest to largest eigenvalue the within-class covariance counts as singular: a Cholesky
# factor would still exist in floating point, but the LDA rows built from it would be dominated by round-off.
_MIN_RCOND = 1.0e-10
# Kaldi's MlltAccs::Update: fewer frames than this per dimension is too little data (a warning), and a row update
# may lose at most this fraction of the objective to round-off before it counts as a bug.
_MLLT_MIN_FRAMES_PER_DIM = 10
_MLLT_ROUNDOFF = 1.0e-5


def splice_frames(feats: np.ndarray, context: int = 3) -> np.ndarray:
    """Stack each frame with ``context`` frames either side, as Kaldi's ``splice-feats``.

    Row ``t`` of the output is ``[x[t - context], ..., x[t], ..., x[t + context]]``; indices beyond the edges
    repeat the first / last frame.  The dtype of ``feats`` is kept (splicing only copies)."""
    x = np.asarray(feats)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D (frames, dim) array, got shape {x.shape}")
    if context < 0:
        raise ValueError(f"splice context must be non-negative, got {context}")
    num_frames, dim = x.shape
    if num_frames == 0:
        return np.zeros((0, dim * (2 * context + 1)), dtype=x.dtype)
    idx = np.clip(np.arange(num_frames)[:, None] + np.arange(-context, context + 1)[None, :], 0, num_frames - 1)
    return x[idx].reshape(num_frames, -1)


# ----------------------------------------------------------------------------------------------------------------
# LDA (acc-lda + est-lda).

class LdaStats:
    """LDA accumulators over pdf classes (Kaldi's ``LdaEstimate``): per-class weighted counts and sums, and the
    total weighted scatter ``sum_t w_t x_t x_t^T``.

    Classes are pdf-ids.  The class table starts with ``num_classes`` entries (Kaldi's ``acc-lda`` sizes it to the
    model's pdfs) and grows to cover every label passed, zero-weighted frames included."""

    def __init__(self, dim: int, num_classes: int = 0):
        if dim < 1:
            raise ValueError(f"LDA statistics need a positive feature dimension, got {dim}")
        self.dim = int(dim)
        self.counts = np.zeros(max(0, int(num_classes)))  # (C,) zeroth order, per class
        self.sums = np.zeros((len(self.counts), self.dim))  # (C, D) first order, per class
        self.scatter = np.zeros((self.dim, self.dim))  # (D, D) second order, all classes together

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def count(self) -> float:
        return float(self.counts.sum())

    def _grow(self, num_classes: int) -> None:
        extra = num_classes - self.num_classes
        if extra > 0:
            self.counts = np.concatenate([self.counts, np.zeros(extra)])
            self.sums = np.concatenate([self.sums, np.zeros((extra, self.dim))])

    def accumulate(self, feats: np.ndarray, pdf_ids: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add frames ``feats`` (frames, dim) labelled ``pdf_ids``; ``weights`` (frames,) scale each frame
        (a zero weight drops it, which is how ``weight-silence-post`` removes silence)."""
        x = _as_feats(feats, self.dim)
        ids = _as_labels(pdf_ids, len(x))
        w = _as_weights(weights, len(x))
        if len(ids):
            self._grow(int(ids.max()) + 1)
        keep = w > 0
        x, ids, w = x[keep], ids[keep], w[keep]
        if len(x) == 0:
            return
        onehot = sparse.csr_array((w, (ids, np.arange(len(ids)))), shape=(self.num_classes, len(ids)))
        self.counts += np.bincount(ids, weights=w, minlength=self.num_classes)
        self.sums += onehot @ x
        self.scatter += (x * w[:, None]).T @ x

    def add(self, other: LdaStats) -> None:
        """Merge the statistics of ``other`` (e.g. another job's) into these."""
        if other.dim != self.dim:
            raise ValueError(f"cannot add LDA statistics of dimension {other.dim} to ones of dimension {self.dim}")
        self._grow(other.num_classes)
        self.counts[:other.num_classes] += other.counts
        self.sums[:other.num_classes] += other.sums
        self.scatter += other.scatter

    def __iadd__(self, other: LdaStats) -> LdaStats:
        self.add(other)
        return self


def _lda_covariances(stats: LdaStats) -> tuple[np.ndarray, np.ndarray]:
    """(within-class, between-class) covariances, each class weighted by its count."""
    seen = stats.counts > 0
    n_c, sums = stats.counts[seen], stats.sums[seen]
    total = n_c.sum()
    mean = sums.sum(0) / total
    class_means = sums / n_c[:, None]
    centred = class_means - mean
    between = (centred * (n_c / total)[:, None]).T @ centred
    # Within = E[x x^T] - sum_c P(c) m_c m_c^T: the class means, not the global mean, are removed.
    within = (stats.scatter - (class_means * n_c[:, None]).T @ class_means) / total
    return 0.5 * (within + within.T), 0.5 * (between + between.T)


def _within_class_cholesky(within: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of the within-class covariance, floored as Kaldi's est-lda when singular."""
    dim = len(within)
    trace = float(np.trace(within))
    if not trace > 0:
        raise ValueError("within-class covariance is zero: every frame equals its class mean")
    eig = np.linalg.eigvalsh(within)
    if eig[0] <= _MIN_RCOND * eig[-1]:
        # Rank deficient (e.g. a constant feature dimension): Kaldi adds a fraction of the mean variance to the
        # diagonal rather than fail, so LDA still separates the classes in the remaining directions.
        floor = _WITHIN_CLASS_FLOOR * trace / dim
        log.warning("within-class covariance is singular (eigenvalues %.3g..%.3g); adding %.3g to its diagonal",
                    eig[0], eig[-1], floor)
        within = within + floor * np.eye(dim)
    return np.linalg.cholesky(within)


def estimate_lda(stats: LdaStats, dim: int = 40, *, allow_large_dim: bool = False) -> np.ndarray:
    """The (dim, D) LDA projection, as Kaldi's ``est-lda`` with its defaults (no offset column).

    With ``W = L L^T`` the within-class and ``B`` the between-class covariance, the rows are the eigenvectors of
    ``L^{-1} B L^{-T}`` (decreasing eigenvalue, i.e. between-class variance) mapped back through ``L^{-1}``: the
    projected within-class covariance is the identity and the projected between-class one is diagonal.
    A singular (or near-singular) ``W`` is floored by adding a small multiple of its mean eigenvalue to its
    diagonal (Kaldi's fallback when its Cholesky fails), with a logged warning.

    As ``est-lda``, ``dim`` must be smaller than the size of the class table unless ``allow_large_dim``.  The
    between-class covariance has rank at most (classes with data - 1): rows beyond that are directions of
    (numerically) zero between-class variance, kept with a logged warning."""
    if not 1 <= dim <= stats.dim:
        raise ValueError(f"LDA output dimension {dim} must be between 1 and the input dimension {stats.dim}")
    num_seen = int((stats.counts > 0).sum())
    if num_seen < 2:
        raise ValueError(f"LDA needs frames of at least two classes, got {num_seen} class(es) with data")
    if dim >= stats.num_classes and not allow_large_dim:
        raise ValueError(f"LDA output dimension {dim} is not below the number of classes ({stats.num_classes}); "
                         "pass allow_large_dim=True to allow it")
    if dim >= num_seen:
        log.warning("LDA: %d output dimensions from only %d classes with data: the last %d rows carry no "
                    "between-class variance", dim, num_seen, dim - num_seen + 1)
    within, between = _lda_covariances(stats)
    inv_chol = solve_triangular(_within_class_cholesky(within), np.eye(stats.dim), lower=True)
    whitened_between = inv_chol @ between @ inv_chol.T
    eigval, eigvec = np.linalg.eigh(0.5 * (whitened_between + whitened_between.T))
    order = np.argsort(eigval)[::-1]
    log.info("LDA: %.1f frames, %d classes; %.4g of %.4g between-class variance kept", stats.count, num_seen,
             eigval[order[:dim]].sum(), eigval.sum())
    return eigvec[:, order[:dim]].T @ inv_chol


# ----------------------------------------------------------------------------------------------------------------
# MLLT / semi-tied covariance (gmm-acc-mllt + est-mllt + gmm-transform-means).

class MlltStats:
    """MLLT accumulators (Kaldi's ``MlltAccs``): for each dimension ``i``,
    ``G[i] = sum_t sum_m gamma_tm / var_mi (x_t - mu_m)(x_t - mu_m)^T``, and ``beta = sum_t sum_m gamma_tm``.
    ``gamma_tm`` are posteriors over the Gaussians of frame ``t``'s aligned pdf, times the frame weight."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"MLLT statistics need a positive feature dimension, got {dim}")
        self.dim = int(dim)
        self.G = np.zeros((self.dim, self.dim, self.dim))
        self.beta = 0.0

    def accumulate(self, gmm: GmmModel, feats: np.ndarray, pdf_ids: np.ndarray,
                   weights: np.ndarray | None = None) -> float:
        """Add frames ``feats`` (already in the current transformed space, the space of ``gmm``) aligned to
        ``pdf_ids``; ``weights`` (frames,) scale each frame (a zero weight drops it).  Returns the weighted total
        log-likelihood of the frames under their aligned pdfs.

        The statistics do not depend on utterance boundaries, and each call costs a term proportional to the
        number of Gaussians its frames touch: pass many utterances at once (concatenated) rather than one."""
        if gmm.means.shape[1] != self.dim:
            raise ValueError(f"model dimension {gmm.means.shape[1]} does not match the MLLT statistics' {self.dim}")
        x = _as_feats(feats, self.dim)
        ids = _as_labels(pdf_ids, len(x))
        w = _as_weights(weights, len(x))
        keep = w > 0
        x, ids, w = x[keep], ids[keep], w[keep]
        if len(x) == 0:
            return 0.0
        post, loglike = gaussian_posteriors(gmm, x, ids)
        post.data *= np.repeat(w, np.diff(post.indptr))
        self._add_posteriors(gmm, x, post)
        return float(w @ loglike)

    def _add_posteriors(self, gmm: GmmModel, x: np.ndarray, post: sparse.csr_array) -> None:
        # Expanding (x - mu)(x - mu)^T turns the sum over (frame, Gaussian) pairs into matrix products:
        #   G_i = sum_t a_ti x_t x_t^T - sum_m (s_m mu_m^T + mu_m s_m^T) / var_mi + sum_m n_m mu_m mu_m^T / var_mi
        # with a_ti = sum_m gamma_tm / var_mi, s_m = sum_t gamma_tm x_t and n_m = sum_t gamma_tm.
        inv_var = 1.0 / gmm.variances
        used = np.unique(post.indices)  # only the Gaussians of pdfs seen here contribute
        n = np.bincount(post.indices, weights=post.data, minlength=len(inv_var))[used]
        s = (post.T @ x)[used]
        mu, iv = gmm.means[used], inv_var[used]
        a = post @ inv_var  # (T, D)
        for i in range(self.dim):
            cross = (s * iv[:, i:i + 1]).T @ mu
            self.G[i] += ((x * a[:, i:i + 1]).T @ x - cross - cross.T
                          + (mu * (n * iv[:, i])[:, None]).T @ mu)
        self.beta += float(post.data.sum())

    def add(self, other: MlltStats) -> None:
        """Merge the statistics of ``other`` (e.g. another job's) into these."""
        if other.dim != self.dim:
            raise ValueError(f"cannot add MLLT statistics of dimension {other.dim} to ones of dimension {self.dim}")
        self.G += other.G
        self.beta += other.beta

    def __iadd__(self, other: MlltStats) -> MlltStats:
        self.add(other)
        return self


def _mllt_row_objf(row: np.ndarray, cofactor: np.ndarray, G_i: np.ndarray, beta: float) -> float:
    # The part of beta log|det A| - 0.5 sum_i a_i^T G_i a_i that depends on row i (det A = a_i . cofactor_i).
    return beta * np.log(abs(row @ cofactor)) - 0.5 * row @ G_i @ row


def estimate_mllt(stats: MlltStats, num_iters: int = 100) -> tuple[np.ndarray, float]:
    """The (D, D) MLLT matrix ``A`` and the objective improvement per frame, as Kaldi's ``est-mllt``.

    Maximises ``beta log|det A| - 0.5 sum_i a_i^T G_i a_i`` (``a_i`` the rows of ``A``) starting from the identity,
    by Gales' row-by-row update: with ``c_i`` row ``i`` of ``A^{-T}`` (the cofactors up to the factor ``det A``),
    ``a_i = G_i^{-1} c_i sqrt(beta / (c_i^T G_i^{-1} c_i))``, the exact maximiser over row ``i``; ``num_iters``
    sweeps over all rows.  Apply it as Kaldi does: features ``A x``, model via :func:`transform_means`, total
    transform ``A @ previous_transform``."""
    dim, beta = stats.dim, float(stats.beta)
    if not beta > 0:
        raise ValueError("no MLLT statistics were accumulated (zero count)")
    if num_iters < 0:
        raise ValueError(f"num_iters must be non-negative, got {num_iters}")
    if beta < _MLLT_MIN_FRAMES_PER_DIM * dim:
        log.warning("MLLT: only %.1f frames of statistics for dimension %d; the estimate will be poor", beta, dim)
    G = 0.5 * (stats.G + stats.G.transpose(0, 2, 1))
    try:
        np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        raise ValueError("MLLT statistics are singular (some G_i is not positive definite): too little data, "
                         "or a feature dimension that is constant") from None
    G_inv = np.linalg.inv(G)
    A = np.eye(dim)
    total_impr = 0.0
    for _ in range(num_iters):
        for i in range(dim):
            cofactor = np.linalg.solve(A, np.eye(dim)[:, i])  # column i of A^{-1} = row i of A^{-T}
            before = _mllt_row_objf(A[i], cofactor, G[i], beta)
            row = G_inv[i] @ cofactor * np.sqrt(beta / (cofactor @ G_inv[i] @ cofactor))
            after = _mllt_row_objf(row, cofactor, G[i], beta)
            if after < before - abs(before) * _MLLT_ROUNDOFF:  # the row optimum is exact: only a bug gets here
                raise RuntimeError(f"MLLT objective decreased on row {i} ({before} -> {after})")
            A[i] = row
            total_impr += after - before
    log.info("MLLT: objective improvement %.5f per frame over %.1f frames", total_impr / beta, beta)
    return A, total_impr / beta


def transform_means(gmm: GmmModel, A: np.ndarray) -> GmmModel:
    """A new model with every mean mapped by ``A`` (D, D), ``mu <- A mu``, or by an affine ``A`` (D, D+1),
    ``mu <- A[:, :D] mu + A[:, D]``; weights and (diagonal) variances unchanged, as ``gmm-transform-means``."""
    dim = gmm.means.shape[1]
    mat = np.asarray(A, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != dim or mat.shape[1] not in (dim, dim + 1):
        raise ValueError(f"transform of shape {mat.shape} does not fit a model of dimension {dim}: "
                         f"expected ({dim}, {dim}) or ({dim}, {dim + 1})")
    means = gmm.means @ mat[:, :dim].T
    if mat.shape[1] == dim + 1:
        means = means + mat[:, dim]
    return GmmModel(pdf_of_gauss=np.array(gmm.pdf_of_gauss, copy=True), weights=np.array(gmm.weights, copy=True),
                    means=means, variances=np.array(gmm.variances, copy=True))
