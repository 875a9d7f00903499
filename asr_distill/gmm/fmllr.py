"""Feature-space MLLR (fMLLR, constrained MLLR) for speaker-adaptive training and decoding with a
diagonal-covariance GMM, as Kaldi's ``gmm-est-fmllr`` / ``gmm-est-fmllr-gpost`` (``transform/fmllr-diag-gmm.cc``,
after Gales, "Maximum likelihood linear transformations for HMM-based speech recognition").

One affine transform per speaker, ``W = [A b]``, maps that speaker's features into the model's space:
``x' = A x + b`` (:func:`apply_fmllr`).  It maximises the auxiliary function (:func:`fmllr_objective`)

    Q(W) = beta log|det A| + tr(W K^T) - (sum over rows i of w_i G_i w_i^T) / 2

whose statistics (:class:`FmllrStats`) sum, over frames t and the Gaussians m of each frame's aligned pdf with
posterior gamma, and with the extended frame x+ (x followed by a constant one):

    beta = sum gamma,   row i of K = sum gamma mu_mi / var_mi x+,   G_i = sum gamma / var_mi x+ x+^T.

With the posteriors held fixed, Q is the model log-likelihood of the transformed frames plus the Jacobian
``beta log|det A|``, up to a constant.  :func:`estimate_fmllr` raises it by Gales's row-by-row update, starting
from the identity: each row is set to its exact maximiser given the others, so Q never decreases.
"""
from __future__ import annotations

import logging

import numpy as np

from .model import GmmModel
from .posteriors import _as_feats, _as_labels, _as_weights, gaussian_posteriors

__all__ = ["FmllrStats", "apply_fmllr", "estimate_fmllr", "fmllr_objective"]

log = logging.getLogger(__name__)

DEFAULT_NUM_ITERS = 40  # Kaldi's FmllrOptions::num_iters
DEFAULT_MIN_COUNT = 500.0  # Kaldi's FmllrOptions::min_count: fewer frames than this and the transform stays [I 0]
# Bounds the (frames x packed outer products) block built per step of the G accumulation (float64 elements).
_CHUNK_ELEMENTS = 1 << 22
_ROUNDING = 1e-9  # relative size of an objective change that is float64 rounding, not a real decrease


def _gmm_dim(gmm: GmmModel) -> int:
    return int(np.shape(gmm.means)[1])


def _check_frames(gmm: GmmModel, dim: int, feats, pdf_ids, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float64 frames, int pdf-ids and per-frame weights (ValueError on any mismatch)."""
    if _gmm_dim(gmm) != dim:
        raise ValueError(f"the GMM has dimension {_gmm_dim(gmm)}, the fMLLR statistics {dim}")
    x = _as_feats(feats, dim)
    ids = _as_labels(pdf_ids, len(x))
    if len(ids) and ids.max() >= gmm.num_pdfs:
        raise ValueError(f"pdf-id {ids.max()} out of range: the GMM has pdfs 0..{gmm.num_pdfs - 1}")
    return x, ids, _as_weights(weights, len(x))


def _weighted_scatters(scales: np.ndarray, xp: np.ndarray) -> np.ndarray:
    """(D, D+1, D+1): for each dimension i, sum over frames of scales[t, i] xp_t xp_t^T.

    Only the upper triangles of the outer products are formed (packed), a chunk of frames at a time, so the sum is
    one matmul per chunk instead of a loop over frames."""
    n = xp.shape[1]
    iu, ju = np.triu_indices(n)
    packed = np.zeros((scales.shape[1], len(iu)))
    step = max(1, _CHUNK_ELEMENTS // len(iu))
    for s in range(0, len(xp), step):
        chunk = xp[s:s + step]
        packed += scales[s:s + step].T @ (chunk[:, iu] * chunk[:, ju])
    full = np.empty((scales.shape[1], n, n))
    full[:, iu, ju] = packed
    full[:, ju, iu] = packed
    return full


class FmllrStats:
    """fMLLR sufficient statistics of one speaker: ``count`` (beta), ``K`` (D, D+1), ``G`` (D, D+1, D+1).

    Accumulate every utterance of the speaker (:meth:`accumulate`), merge partial stats with :meth:`add`, then
    :func:`estimate_fmllr`."""

    def __init__(self, dim: int):
        if int(dim) <= 0:
            raise ValueError(f"dimension must be positive, got {dim}")
        self.dim = int(dim)
        self._beta = 0.0
        self.K = np.zeros((self.dim, self.dim + 1))
        self.G = np.zeros((self.dim, self.dim + 1, self.dim + 1))

    @property
    def count(self) -> float:
        """Total (weighted) posterior: the number of frames the transform is estimated from."""
        return self._beta

    def accumulate(self, gmm: GmmModel, feats: np.ndarray, pdf_ids: np.ndarray,
                   weights: np.ndarray | None = None, *, gpost_gmm: GmmModel | None = None) -> None:
        """Add one utterance: ``feats`` (frames, D) in the space the transform maps FROM (speaker-independent
        features), ``pdf_ids`` its frame alignment.

        ``weights`` scales each frame's posterior (Kaldi's ``weight-silence-post``: e.g. a small silence weight on
        a first-pass decode, zero to drop a frame).  ``gpost_gmm``, if given, supplies the Gaussian posteriors
        within each pdf instead of ``gmm`` (``gmm-est-fmllr-gpost``: posteriors from the alignment model, stats
        against the speaker-adapted one); it must have ``gmm``'s Gaussian layout."""
        x, ids, w = _check_frames(gmm, self.dim, feats, pdf_ids, weights)
        post_gmm = gmm if gpost_gmm is None else gpost_gmm
        if gpost_gmm is not None and (_gmm_dim(gpost_gmm) != self.dim
                                      or not np.array_equal(gpost_gmm.pdf_of_gauss, gmm.pdf_of_gauss)):
            raise ValueError("gpost_gmm must have the same dimension and pdf-to-Gaussian layout as gmm")
        keep = w > 0  # zero-weight frames contribute nothing: skip their posteriors
        x, ids, w = x[keep], ids[keep], w[keep]
        if not len(x):
            return
        post, _ = gaussian_posteriors(post_gmm, x, ids)
        inv = 1.0 / gmm.variances
        # Per frame, the posterior-weighted mu/var (linear term) and 1/var (quadratic term) of its Gaussians.
        lin = w[:, None] * (post @ (gmm.means * inv))
        quad = w[:, None] * (post @ inv)
        xp = np.hstack([x, np.ones((len(x), 1))])
        self._beta += float(w.sum())  # each frame's posteriors sum to one before weighting
        self.K += lin.T @ xp
        self.G += _weighted_scatters(quad, xp)

    def add(self, other: FmllrStats) -> FmllrStats:
        """Merge ``other`` (e.g. another job's stats of the same speaker) into these; returns self."""
        if not isinstance(other, FmllrStats) or other.dim != self.dim:
            raise ValueError(f"can only add FmllrStats of dimension {self.dim}, got {other!r}")
        self._beta += other._beta
        self.K += other.K
        self.G += other.G
        return self

    def __repr__(self) -> str:
        return f"FmllrStats(dim={self.dim}, count={self._beta:.1f})"


def _check_transform(W: np.ndarray, dim: int) -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.shape != (dim, dim + 1):
        raise ValueError(f"fMLLR transform must be ({dim}, {dim + 1}) = [A b], got shape {W.shape}")
    return W


def fmllr_objective(stats: FmllrStats, W: np.ndarray) -> float:
    """The fMLLR auxiliary function of ``W = [A b]`` on ``stats``, log|det A| term included (-inf if singular)."""
    W = _check_transform(W, stats.dim)
    sign, logdet = np.linalg.slogdet(W[:, :-1])
    if sign == 0:
        return -np.inf
    quad = np.einsum("ij,ijk,ik->", W, stats.G, W)
    return float(stats.count * logdet + np.sum(W * stats.K) - 0.5 * quad)


def _update_row(W: np.ndarray, i: int, inv_g: np.ndarray, k: np.ndarray, beta: float) -> None:
    """Set row i of W to its exact maximiser given the other rows (in place).

    log|det A| = log|w_i . c| + const, c the extended cofactor row of A, so the optimum is w = (alpha c + k) G^-1
    where alpha solves e1 alpha^2 + e2 alpha - beta = 0, with e1 = c G^-1 c and e2 = c G^-1 k."""
    dim = W.shape[0]
    c = np.zeros(dim + 1)
    # Row i of inv(A)^T: the cofactor row up to the factor det(A), which alpha absorbs.
    c[:dim] = np.linalg.solve(W[:, :dim], np.eye(dim)[:, i])
    c_g = inv_g @ c
    e1, e2 = c_g @ c, c_g @ k
    # Both real roots (e1 > 0, beta > 0), computed without cancellation; the product of the roots is -beta/e1.
    q = -0.5 * (e2 + np.copysign(np.sqrt(e2 * e2 + 4 * e1 * beta), e2))
    roots = np.array([q / e1, -beta / q])
    row_aux = beta * np.log(np.abs(roots * e1 + e2)) - 0.5 * roots ** 2 * e1
    alpha = roots[np.argmax(row_aux)]
    W[i] = inv_g @ (alpha * c + k)


def estimate_fmllr(stats: FmllrStats, gmm: GmmModel, num_iters: int = DEFAULT_NUM_ITERS,
                   min_count: float = DEFAULT_MIN_COUNT) -> tuple[np.ndarray, float]:
    """Estimate ``W = [A b]`` (D, D+1) from the identity by ``num_iters`` sweeps of the row-by-row update; returns
    W and the auxiliary-function improvement per frame.

    ``gmm`` is the model the stats were accumulated against (its dimension is checked).  As Kaldi, with a count
    not above ``min_count`` the identity ``[I 0]`` and zero are returned, and an update that would lower the
    objective (only possible through rounding) is discarded."""
    if _gmm_dim(gmm) != stats.dim:
        raise ValueError(f"the GMM has dimension {_gmm_dim(gmm)}, the fMLLR statistics {stats.dim}")
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}")
    dim, beta = stats.dim, stats.count
    identity = np.hstack([np.eye(dim), np.zeros((dim, 1))])
    if not beta > min_count:
        log.info("fMLLR not estimated: count %.1f is not above min_count %.1f; using the identity transform",
                 beta, min_count)
        return identity, 0.0
    try:
        np.linalg.cholesky(stats.G)  # each G_i must be positive definite for its row's update to exist
    except np.linalg.LinAlgError as e:
        raise ValueError("fMLLR statistics are singular: constant or linearly dependent feature dimensions") from e
    inv_g = np.linalg.inv(stats.G)
    W = identity.copy()
    for _ in range(num_iters):
        for i in range(dim):
            _update_row(W, i, inv_g[i], stats.K[i], beta)
    start, end = fmllr_objective(stats, identity), fmllr_objective(stats, W)
    if not end > start:
        # Each row update is an exact maximiser, so a drop is rounding (stats already adapted, e.g. a later SAT
        # pass) unless it is beyond float64 precision of the objective's terms; either way keep [I 0].
        level = logging.DEBUG if end >= start - _ROUNDING * (abs(start) + beta) else logging.WARNING
        log.log(level, "fMLLR update did not raise the objective (%.10g -> %.10g); keeping the identity", start, end)
        return identity, 0.0
    log.info("fMLLR objective improvement %.4f per frame over %.1f frames", (end - start) / beta, beta)
    return W, (end - start) / beta


def apply_fmllr(W: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """``x' = A x + b`` for every frame of ``feats`` (frames, D), computed in float64; a floating input keeps its
    dtype (float32 features stay float32)."""
    x = np.asarray(feats)
    if x.ndim != 2:
        raise ValueError(f"features must be (frames, dim), got shape {x.shape}")
    W = _check_transform(W, x.shape[1])
    out = x.astype(np.float64) @ W[:, :-1].T + W[:, -1]
    return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out
