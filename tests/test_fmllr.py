"""fMLLR (asr_distill.gmm.fmllr) on seeded synthetic data: statistics against a per-frame reference, the auxiliary
function against the model's log-likelihood, recovery of a known affine distortion, monotone iterations, the
min-count rule, and input checks."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.linalg import expm

from asr_distill.gmm import fmllr
from asr_distill.gmm.fmllr import FmllrStats, apply_fmllr, estimate_fmllr, fmllr_objective
from asr_distill.gmm.model import GmmModel

DIM = 6
NUM_PDFS = 8  # more pdfs than dimensions, so their means pin down the transform (with fewer, rotations within the
# unconstrained directions are only weakly determined by the variances and the row update may stop in a local optimum)
NUM_FRAMES = 20000
# The estimate is maximum likelihood: its error shrinks as 1/sqrt(frames), with a per-element standard error of
# order 1/sqrt(frames) for unit-order data (means spread a few units, variances within a factor two of one).  The
# largest of the D(D+1) elements of A M - I and A c + b, measured over 60 seeds of the recovery test, reached
# 6.7/sqrt(frames); 10/sqrt(frames) leaves room while staying far below what the distortion itself moves
# (checked in the test).
RECOVERY_TOL = 10 / np.sqrt(NUM_FRAMES)
NUM_PARAMS = DIM * (DIM + 1)


def _random_gmm(rng: np.random.Generator, two_gauss: bool = True, shuffle: bool = False) -> GmmModel:
    """NUM_PDFS diagonal GMMs: every other pdf with two Gaussians if ``two_gauss``, else one Gaussian each."""
    pdf_of_gauss = np.repeat(np.arange(NUM_PDFS), 1 + (np.arange(NUM_PDFS) % 2) * int(two_gauss))
    if shuffle:  # Gaussians of a pdf need not be contiguous
        pdf_of_gauss = rng.permutation(pdf_of_gauss)
    n = len(pdf_of_gauss)
    weights = rng.uniform(0.5, 1.0, n)
    weights /= np.bincount(pdf_of_gauss, weights)[pdf_of_gauss]
    return GmmModel(pdf_of_gauss, weights, rng.normal(0.0, 3.0, (n, DIM)), rng.uniform(0.5, 2.0, (n, DIM)))


def _sample(gmm: GmmModel, rng: np.random.Generator, num_frames: int):
    """Frames drawn from the GMM with their true pdf alignment."""
    pdf_ids = rng.integers(0, gmm.num_pdfs, num_frames)
    gauss = np.empty(num_frames, dtype=int)
    for j in range(gmm.num_pdfs):
        own, frames = np.flatnonzero(gmm.pdf_of_gauss == j), pdf_ids == j
        gauss[frames] = rng.choice(own, frames.sum(), p=gmm.weights[own])
    feats = gmm.means[gauss] + rng.normal(size=(num_frames, DIM)) * np.sqrt(gmm.variances[gauss])
    return feats, pdf_ids


def _distortion(rng: np.random.Generator):
    """A speaker-like affine distortion x -> M x + c: rotations near the identity (det +1) around a stretch, so
    |det M| >= 1, plus an offset."""
    def rotation():
        s = rng.normal(size=(DIM, DIM))
        return expm(0.1 * (s - s.T))
    return rotation() @ np.diag(rng.uniform(1.0, 1.3, DIM)) @ rotation(), rng.normal(0.0, 1.0, DIM)


def _identity() -> np.ndarray:
    return np.hstack([np.eye(DIM), np.zeros((DIM, 1))])


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The transform applying ``inner`` then ``outer`` (Kaldi's compose-transforms --b-is-affine)."""
    a = outer[:, :-1]
    return np.hstack([a @ inner[:, :-1], (a @ inner[:, -1] + outer[:, -1])[:, None]])


def _stats(gmm, feats, pdf_ids, weights=None) -> FmllrStats:
    stats = FmllrStats(DIM)
    stats.accumulate(gmm, feats, pdf_ids, weights)
    return stats


def _aligned_loglike(gmm, feats, pdf_ids) -> float:
    return float(gmm.loglikes(feats)[np.arange(len(feats)), pdf_ids].astype(np.float64).sum())


def _reference_stats(gmm, feats, pdf_ids, weights, gpost_gmm=None):
    """beta, K, G frame by frame from the textbook formulas (the module under test works by matmuls), with the
    Gaussian posteriors from ``gpost_gmm`` if given."""
    post_gmm = gmm if gpost_gmm is None else gpost_gmm
    beta, K, G = 0.0, np.zeros((DIM, DIM + 1)), np.zeros((DIM, DIM + 1, DIM + 1))
    for x, pdf, w in zip(feats, pdf_ids, weights):
        own = np.flatnonzero(gmm.pdf_of_gauss == pdf)
        mu, var = gmm.means[own], gmm.variances[own]
        p_mu, p_var = post_gmm.means[own], post_gmm.variances[own]
        logp = np.log(post_gmm.weights[own]) - 0.5 * (np.log(2 * np.pi * p_var) + (x - p_mu) ** 2 / p_var).sum(1)
        post = w * np.exp(logp - logp.max()) / np.exp(logp - logp.max()).sum()
        xp = np.append(x, 1.0)
        beta += post.sum()
        K += np.outer((post[:, None] * mu / var).sum(0), xp)
        G += (post[:, None] / var).sum(0)[:, None, None] * np.outer(xp, xp)
    return beta, K, G


def test_accumulate_matches_per_frame_reference(monkeypatch):
    rng = np.random.default_rng(0)
    gmm = _random_gmm(rng, shuffle=True)
    feats, pdf_ids = _sample(gmm, rng, 300)
    weights = rng.uniform(0.0, 1.0, len(feats))
    weights[::7] = 0.0  # dropped frames
    weights[::5] = 0.01  # silence-like
    monkeypatch.setattr(fmllr, "_CHUNK_ELEMENTS", 1000)  # several chunks of frames in the G accumulation
    stats = _stats(gmm, feats, pdf_ids, weights)
    beta, K, G = _reference_stats(gmm, feats, pdf_ids, weights)
    assert stats.count == pytest.approx(beta, rel=1e-12)
    np.testing.assert_allclose(stats.K, K, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.G, G, rtol=1e-10, atol=1e-10)


def test_add_merges_and_zero_weight_drops():
    rng = np.random.default_rng(1)
    gmm = _random_gmm(rng)
    feats, pdf_ids = _sample(gmm, rng, 1000)
    whole = _stats(gmm, feats, pdf_ids)
    merged = _stats(gmm, feats[:400], pdf_ids[:400]).add(_stats(gmm, feats[400:], pdf_ids[400:]))
    assert merged.count == pytest.approx(whole.count) == len(feats)
    np.testing.assert_allclose(merged.K, whole.K, rtol=1e-12)
    np.testing.assert_allclose(merged.G, whole.G, rtol=1e-12)
    keep = rng.uniform(size=len(feats)) < 0.5
    dropped = _stats(gmm, feats, pdf_ids, keep.astype(float))
    subset = _stats(gmm, feats[keep], pdf_ids[keep])
    assert dropped.count == subset.count == keep.sum()
    np.testing.assert_allclose(dropped.G, subset.G, rtol=1e-12)


def test_objective_is_the_log_likelihood_gain():
    """With one Gaussian per pdf the posteriors are exact, so Q(W) - Q([I 0]) is the model log-likelihood gain of
    the transformed frames plus the Jacobian: checked against GmmModel.loglikes."""
    rng = np.random.default_rng(2)
    gmm = _random_gmm(rng, two_gauss=False)
    feats, pdf_ids = _sample(gmm, rng, 2000)
    stats = _stats(gmm, feats, pdf_ids)
    W = _identity() + rng.normal(0.0, 0.1, (DIM, DIM + 1))
    gain = (_aligned_loglike(gmm, apply_fmllr(W, feats), pdf_ids) - _aligned_loglike(gmm, feats, pdf_ids)
            + len(feats) * np.linalg.slogdet(W[:, :-1])[1])
    # loglikes are float32: about 1e-6 relative rounding per frame
    assert fmllr_objective(stats, W) - fmllr_objective(stats, _identity()) == pytest.approx(gain, abs=1e-5 * len(feats))


@pytest.mark.parametrize("two_gauss,passes", [(False, 1), (True, 3)])
def test_recovers_the_inverse_distortion(two_gauss, passes):
    """A single estimate is exact ML when each pdf has one Gaussian.  With two, the Gaussian posteriors come from
    the distorted frames, so, as train_sat.sh re-estimates and decode_fmllr.sh's second pass does, the transform is
    re-estimated on the adapted frames and composed."""
    rng = np.random.default_rng(3)
    gmm = _random_gmm(rng, two_gauss=two_gauss)
    feats, pdf_ids = _sample(gmm, rng, NUM_FRAMES)
    M, c = _distortion(rng)
    observed = feats @ M.T + c
    assert min(np.abs(M - np.eye(DIM)).max(), np.abs(c).max()) > 2 * RECOVERY_TOL  # [I 0] would fail both
    W = _identity()
    for _ in range(passes):
        step, _ = estimate_fmllr(_stats(gmm, apply_fmllr(W, observed), pdf_ids), gmm)
        W = _compose(step, W)
    A, b = W[:, :-1], W[:, -1]
    np.testing.assert_allclose(A @ M, np.eye(DIM), atol=RECOVERY_TOL)
    np.testing.assert_allclose(A @ c + b, 0.0, atol=RECOVERY_TOL)
    # A - M^-1 = (A M - I) M^-1 and M^-1 is a contraction (singular values of M >= 1): each row of the error is at
    # most the row of A M - I in 2-norm, i.e. sqrt(DIM) times the element bound; b adds that error times c.
    M_inv, row_tol = np.linalg.inv(M), np.sqrt(DIM) * RECOVERY_TOL
    np.testing.assert_allclose(A, M_inv, atol=row_tol)
    np.testing.assert_allclose(b, -M_inv @ c, atol=RECOVERY_TOL + row_tol * np.linalg.norm(c))
    adapted = _aligned_loglike(gmm, apply_fmllr(W, observed), pdf_ids)
    distorted = _aligned_loglike(gmm, observed, pdf_ids)
    jacobian = len(feats) * np.linalg.slogdet(A)[1]  # <= 0 here: |det M| >= 1
    assert adapted + jacobian > distorted
    assert adapted > distorted


def test_objective_never_decreases_and_improvement_sizes():
    """Q after k sweeps (each call restarts from [I 0], so k sweeps reproduce the k-th iterate) never decreases;
    the improvement is large on distorted frames and at chance level on undistorted ones: with the true model,
    twice the gain of fitting NUM_PARAMS free parameters is chi-square with NUM_PARAMS degrees of freedom (Wilks),
    i.e. NUM_PARAMS / (2 frames) per frame on average."""
    rng = np.random.default_rng(4)
    gmm = _random_gmm(rng)
    feats, pdf_ids = _sample(gmm, rng, NUM_FRAMES)
    M, c = _distortion(rng)
    stats = _stats(gmm, feats @ M.T + c, pdf_ids)
    objs = np.array([fmllr_objective(stats, estimate_fmllr(stats, gmm, num_iters=k)[0])
                     for k in range(fmllr.DEFAULT_NUM_ITERS + 1)])
    assert (np.diff(objs) >= -1e-12 * np.abs(objs).max()).all(), np.diff(objs)
    impr = estimate_fmllr(stats, gmm)[1]
    assert impr == pytest.approx((objs[-1] - objs[0]) / stats.count, rel=1e-9)
    chance = NUM_PARAMS / (2 * NUM_FRAMES)
    assert impr > 100 * chance
    W0, impr0 = estimate_fmllr(_stats(gmm, feats, pdf_ids), gmm)
    assert 0.0 <= impr0 < 3 * chance  # mean + about nine standard deviations of the chi-square
    np.testing.assert_allclose(W0, _identity(), atol=RECOVERY_TOL)


def test_below_min_count_gives_identity(caplog):
    rng = np.random.default_rng(5)
    gmm = _random_gmm(rng)
    feats, pdf_ids = _sample(gmm, rng, int(fmllr.DEFAULT_MIN_COUNT) // 2)
    M, c = _distortion(rng)
    stats = _stats(gmm, feats @ M.T + c, pdf_ids)
    with caplog.at_level(logging.INFO, logger=fmllr.__name__):
        W, impr = estimate_fmllr(stats, gmm)
    assert np.array_equal(W, _identity()) and impr == 0.0
    assert any("min_count" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    # Kaldi updates only when the count is strictly above min_count
    assert np.array_equal(estimate_fmllr(stats, gmm, min_count=stats.count)[0], _identity())
    W, impr = estimate_fmllr(stats, gmm, min_count=stats.count / 2)
    assert impr > 0 and not np.allclose(W, _identity())


def test_gpost_gmm_supplies_the_gaussian_posteriors():
    """gmm-est-fmllr-gpost: posteriors from one model (here with the means of each two-Gaussian pdf swapped, so
    they flip), statistics against another."""
    rng = np.random.default_rng(6)
    gmm = _random_gmm(rng, shuffle=True)
    feats, pdf_ids = _sample(gmm, rng, 300)
    swapped = gmm.means.copy()
    for j in range(1, NUM_PDFS, 2):
        own = np.flatnonzero(gmm.pdf_of_gauss == j)
        swapped[own] = swapped[own[::-1]]
    other = GmmModel(gmm.pdf_of_gauss, gmm.weights, swapped, gmm.variances)
    moved = FmllrStats(DIM)
    moved.accumulate(gmm, feats, pdf_ids, gpost_gmm=other)
    beta, K, G = _reference_stats(gmm, feats, pdf_ids, np.ones(len(feats)), gpost_gmm=other)
    assert moved.count == pytest.approx(beta, rel=1e-12)
    np.testing.assert_allclose(moved.K, K, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(moved.G, G, rtol=1e-10, atol=1e-10)
    assert not np.allclose(moved.K, _stats(gmm, feats, pdf_ids).K, rtol=1e-3)
    single = _random_gmm(rng, two_gauss=False)  # one Gaussian per pdf: posteriors are one whatever the model
    shifted = FmllrStats(DIM)
    shifted.accumulate(single, feats, pdf_ids, gpost_gmm=GmmModel(single.pdf_of_gauss, single.weights,
                                                                  single.means + 1.0, single.variances))
    np.testing.assert_array_equal(shifted.K, _stats(single, feats, pdf_ids).K)


def test_apply_fmllr():
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(50, DIM)).astype(np.float32)
    W = _identity() + rng.normal(0.0, 0.1, (DIM, DIM + 1))
    out = apply_fmllr(W, feats)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, feats.astype(np.float64) @ W[:, :-1].T + W[:, -1], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(apply_fmllr(_identity(), feats), feats)


def test_singular_statistics_raise():
    rng = np.random.default_rng(8)
    gmm = _random_gmm(rng)
    feats, pdf_ids = _sample(gmm, rng, 1000)
    feats[:, 2] = 0.0  # a dead dimension: G_i is singular
    with pytest.raises(ValueError, match="singular"):
        estimate_fmllr(_stats(gmm, feats, pdf_ids), gmm)


def _bad_calls():
    rng = np.random.default_rng(9)
    gmm = _random_gmm(rng)
    feats, ids = _sample(gmm, rng, 20)
    small = GmmModel(gmm.pdf_of_gauss, gmm.weights, gmm.means[:, :-1], gmm.variances[:, :-1])
    relaid = GmmModel(gmm.pdf_of_gauss[::-1].copy(), gmm.weights, gmm.means, gmm.variances)
    stats = FmllrStats(DIM)
    return [
        ("features have dimension", lambda: stats.accumulate(gmm, feats[:, :-1], ids)),
        ("the GMM has dimension", lambda: stats.accumulate(small, feats, ids)),
        ("one pdf-id per frame", lambda: stats.accumulate(gmm, feats, ids[:-1])),
        ("out of range", lambda: stats.accumulate(gmm, feats, np.r_[ids[:-1], NUM_PDFS])),
        ("non-negative", lambda: stats.accumulate(gmm, feats, np.r_[-1, ids[1:]])),
        ("integer", lambda: stats.accumulate(gmm, feats, ids.astype(float))),
        ("one weight per frame", lambda: stats.accumulate(gmm, feats, ids, np.ones(len(ids) + 1))),
        ("non-negative", lambda: stats.accumulate(gmm, feats, ids, -np.ones(len(ids)))),
        ("NaN", lambda: stats.accumulate(gmm, np.full_like(feats, np.nan), ids)),
        ("layout", lambda: stats.accumulate(gmm, feats, ids, gpost_gmm=relaid)),
        ("dimension", lambda: stats.add(FmllrStats(DIM + 1))),
        ("the GMM has dimension", lambda: estimate_fmllr(stats, small)),
        ("num_iters", lambda: estimate_fmllr(stats, gmm, num_iters=-1)),
        (r"\[A b\]", lambda: apply_fmllr(_identity()[:, :-1], feats)),
        (r"\[A b\]", lambda: fmllr_objective(stats, _identity()[:-1])),
        ("positive", lambda: FmllrStats(0)),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_input_raises(case):
    match, call = _bad_calls()[case]
    with pytest.raises(ValueError, match=match):
        call()
