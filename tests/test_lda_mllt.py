"""LDA + MLLT feature transforms (asr_distill.gmm.lda_mllt) on seeded synthetic data: splicing, per-pdf Gaussian
posteriors against a brute-force reference, LDA against the textbook generalised eigenproblem and the true
discriminant direction, MLLT statistics against their definition, and MLLT undoing a known semi-tied mixing."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.linalg import eigh

from asr_distill.gmm.lda_mllt import (LdaStats, MlltStats, estimate_lda, estimate_mllt, gaussian_posteriors,
                                      splice_frames, transform_means)
from asr_distill.gmm.model import GmmModel


# ------------------------------------------------------------------------------------------------------------
# Helpers: data generators and brute-force references written from the definitions.

def random_gmm(rng: np.random.Generator, gauss_per_pdf, dim: int) -> GmmModel:
    """Gaussians of the pdfs interleaved (not sorted by pdf), so index bookkeeping is exercised."""
    pdf_of_gauss = rng.permutation(np.repeat(np.arange(len(gauss_per_pdf)), gauss_per_pdf))
    weights = rng.uniform(0.2, 1.0, len(pdf_of_gauss))
    weights /= np.bincount(pdf_of_gauss, weights)[pdf_of_gauss]
    return GmmModel(pdf_of_gauss, weights, rng.normal(scale=2.0, size=(len(pdf_of_gauss), dim)),
                    rng.uniform(0.5, 2.0, size=(len(pdf_of_gauss), dim)))


def reference_posteriors(gmm: GmmModel, x: np.ndarray, pdf_ids: np.ndarray) -> np.ndarray:
    """Dense (frames, gauss) posteriors, one frame and one Gaussian at a time."""
    post = np.zeros((len(x), len(gmm.weights)))
    for t in range(len(x)):
        mine = np.flatnonzero(gmm.pdf_of_gauss == pdf_ids[t])
        ll = np.array([np.log(gmm.weights[m]) - 0.5 * np.sum(np.log(2 * np.pi * gmm.variances[m])
                                                              + (x[t] - gmm.means[m]) ** 2 / gmm.variances[m])
                       for m in mine])
        post[t, mine] = np.exp(ll - ll.max()) / np.exp(ll - ll.max()).sum()
    return post


def class_data(rng, means: np.ndarray, n: int, sample) -> tuple:
    """n frames of each class: means[c] + sample(c, n); returns (frames, labels)."""
    x = np.concatenate([means[c] + sample(c, n) for c in range(len(means))])
    return x, np.repeat(np.arange(len(means)), n)


def pooled_within_covariance(y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Sum over classes of the class scatter around its own mean, divided by the total count (ML estimate)."""
    out = np.zeros((y.shape[1], y.shape[1]))
    for c in np.unique(labels):
        d = y[labels == c] - y[labels == c].mean(0)
        out += d.T @ d
    return out / len(y)


def between_covariance(y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    mean = y.mean(0)
    out = np.zeros((y.shape[1], y.shape[1]))
    for c in np.unique(labels):
        d = y[labels == c].mean(0) - mean
        out += (labels == c).sum() * np.outer(d, d)
    return out / len(y)


def offdiag_ratio(cov: np.ndarray) -> float:
    """Off-diagonal mass of a covariance after scaling it to unit diagonal (a correlation matrix)."""
    s = 1.0 / np.sqrt(np.diag(cov))
    corr = cov * s[:, None] * s[None, :]
    return float(np.sqrt((corr ** 2).sum() - (np.diag(corr) ** 2).sum()) / len(cov))


# ------------------------------------------------------------------------------------------------------------
# splice_frames

def test_splice_matches_hand_computation_at_both_edges():
    x = np.array([[10.0], [20.0], [30.0]])
    expected = np.array([[10, 10, 10, 20, 30],   # t=0: t-2, t-1 clamp to frame 0
                         [10, 10, 20, 30, 30],   # t=1: t-2 clamps to 0, t+2 to 2
                         [10, 20, 30, 30, 30]],  # t=2: t+1, t+2 clamp to frame 2
                        dtype=np.float64)
    np.testing.assert_array_equal(splice_frames(x, context=2), expected)


def test_splice_default_context_block_order():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    out = splice_frames(x)  # context 3: seven blocks [t-3 .. t+3]
    assert out.shape == (5, 14) and out.dtype == np.float32
    for t in range(5):
        for k, offset in enumerate(range(-3, 4)):
            np.testing.assert_array_equal(out[t, 2 * k:2 * k + 2], x[min(max(t + offset, 0), 4)])
    np.testing.assert_array_equal(splice_frames(x, context=0), x)


# ------------------------------------------------------------------------------------------------------------
# gaussian_posteriors

def test_gaussian_posteriors_against_reference():
    rng = np.random.default_rng(0)
    gmm = random_gmm(rng, [1, 3, 2, 4, 2], dim=3)
    pdf_ids = rng.integers(0, 5, 120)
    x = gmm.means[rng.integers(0, len(gmm.weights), 120)] + rng.normal(size=(120, 3))
    post, loglike = gaussian_posteriors(gmm, x, pdf_ids)
    dense = post.toarray()
    assert dense.shape == (120, len(gmm.weights))
    np.testing.assert_allclose(dense.sum(1), 1.0, rtol=1e-12)
    outside = gmm.pdf_of_gauss[None, :] != pdf_ids[:, None]
    assert np.all(dense[outside] == 0)
    np.testing.assert_allclose(dense, reference_posteriors(gmm, x, pdf_ids), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(loglike, gmm.loglikes(x)[np.arange(120), pdf_ids], rtol=1e-5)
    # Every frame stores exactly its pdf's Gaussians.
    np.testing.assert_array_equal(np.diff(post.indptr), np.bincount(gmm.pdf_of_gauss)[pdf_ids])


def test_gaussian_posteriors_bad_input():
    rng = np.random.default_rng(1)
    gmm = random_gmm(rng, [2, 2], dim=3)
    with pytest.raises(ValueError, match="dimension 4 but 3"):
        gaussian_posteriors(gmm, np.zeros((5, 4)), np.zeros(5, int))
    with pytest.raises(ValueError, match="one pdf-id per frame"):
        gaussian_posteriors(gmm, np.zeros((5, 3)), np.zeros(4, int))
    with pytest.raises(ValueError, match="out of range"):
        gaussian_posteriors(gmm, np.zeros((2, 3)), np.array([0, 2]))
    with pytest.raises(ValueError, match="integers"):
        gaussian_posteriors(gmm, np.zeros((2, 3)), np.array([0.0, 1.0]))


# ------------------------------------------------------------------------------------------------------------
# LDA

@pytest.mark.parametrize("correlated", [False, True])
def test_lda_finds_discriminant_direction(correlated):
    rng = np.random.default_rng(2)
    dim, num_classes, n = 6, 5, 3000
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    if correlated:
        m = rng.normal(size=(dim, dim))
        noise_cov = m @ m.T + np.eye(dim)
    else:
        noise_cov = 1.5 * np.eye(dim)
    chol = np.linalg.cholesky(noise_cov)
    means = np.linspace(-3.0, 3.0, num_classes)[:, None] * u  # classes differ only along u
    x, labels = class_data(rng, means, n, lambda c, k: rng.normal(size=(k, dim)) @ chol.T)
    stats = LdaStats(dim)
    stats.accumulate(x, labels)
    lda = estimate_lda(stats, dim=num_classes - 1)
    assert lda.shape == (num_classes - 1, dim)

    # Exactly the generalised eigenproblem B v = lambda W v on the sample covariances, up to sign.
    within, between = pooled_within_covariance(x, labels), between_covariance(x, labels)
    _, eigvec = eigh(between, within)
    for k in range(num_classes - 1):
        ref = eigvec[:, -1 - k]
        cos = lda[k] @ ref / np.linalg.norm(lda[k]) / np.linalg.norm(ref)
        np.testing.assert_allclose(abs(cos), 1.0, atol=1e-8)
    # The first row is the Fisher direction W^{-1} u (just u for isotropic noise), up to sampling error: the
    # angle of a direction estimated from N frames in `dim` dimensions is O(sqrt(dim / N)), so 1 - cos is
    # O(dim / N) (an order of magnitude of slack over seeds).
    truth = np.linalg.solve(noise_cov, u)
    cos = lda[0] @ truth / np.linalg.norm(lda[0]) / np.linalg.norm(truth)
    assert 1 - abs(cos) < 10 * dim / len(x)
    # Unit within-class covariance, diagonal between-class covariance in decreasing order.
    y = x @ lda.T
    np.testing.assert_allclose(pooled_within_covariance(y, labels), np.eye(num_classes - 1), atol=1e-8)
    b = between_covariance(y, labels)
    np.testing.assert_allclose(b, np.diag(np.diag(b)), atol=1e-8)
    assert np.all(np.diff(np.diag(b)) <= 0)


def test_lda_stats_weights_and_merging():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 4))
    labels = rng.integers(0, 6, 400)
    weights = np.where(labels == 5, 0.0, 1.0)  # class 5 plays silence, weighted out as weight-silence-post 0
    a = LdaStats(4)
    a.accumulate(x, labels, weights)
    b = LdaStats(4)
    b.accumulate(x[labels != 5], labels[labels != 5])
    np.testing.assert_allclose(estimate_lda(a, 3), estimate_lda(b, 3), atol=1e-10)
    halves = LdaStats(4)
    halves.accumulate(x[:150], labels[:150])
    other = LdaStats(4)
    other.accumulate(x[150:], labels[150:])
    halves += other
    whole = LdaStats(4)
    whole.accumulate(x, labels)
    np.testing.assert_allclose(halves.counts, whole.counts)
    np.testing.assert_allclose(halves.sums, whole.sums)
    np.testing.assert_allclose(halves.scatter, whole.scatter)


def test_lda_floors_singular_within_class_covariance(caplog):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 3)) + 4.0 * np.repeat(np.arange(3), 200)[:, None] * np.array([1.0, 0.0, 0.0])
    x = np.concatenate([x, np.full((600, 1), 7.0)], axis=1)  # a constant dimension: W is singular
    labels = np.repeat(np.arange(3), 200)
    stats = LdaStats(4)
    stats.accumulate(x, labels)
    with caplog.at_level(logging.WARNING, logger="asr_distill.gmm.lda_mllt"):
        lda = estimate_lda(stats, 2)
    assert "singular" in caplog.text
    assert np.isfinite(lda).all()
    # Still separates the classes along the first axis.
    assert abs(lda[0, 0]) == np.abs(lda[0]).max()


def test_lda_bad_input():
    rng = np.random.default_rng(5)
    stats = LdaStats(4)
    with pytest.raises(ValueError, match="dimension 3 but 4"):
        stats.accumulate(np.zeros((10, 3)), np.zeros(10, int))
    with pytest.raises(ValueError, match="one pdf-id per frame"):
        stats.accumulate(np.zeros((10, 4)), np.zeros(9, int))
    with pytest.raises(ValueError, match="one weight per frame"):
        stats.accumulate(np.zeros((10, 4)), np.zeros(10, int), np.ones(3))
    stats.accumulate(rng.normal(size=(50, 4)), np.zeros(50, int))
    with pytest.raises(ValueError, match="at least two classes"):
        estimate_lda(stats, 2)
    stats.accumulate(rng.normal(size=(50, 4)) + 1, np.ones(50, int))
    with pytest.raises(ValueError, match="between 1 and the input dimension 4"):
        estimate_lda(stats, 5)
    with pytest.raises(ValueError, match="allow_large_dim"):
        estimate_lda(stats, 3)
    assert estimate_lda(stats, 3, allow_large_dim=True).shape == (3, 4)
    with pytest.raises(ValueError, match="dimension 3 to ones of dimension 4"):
        stats += LdaStats(3)


def test_lda_class_table_counts_unseen_pdfs(caplog):
    """As est-lda, dim is checked against the class table (all pdfs), not only the classes with data."""
    rng = np.random.default_rng(11)
    stats = LdaStats(4, num_classes=6)
    labels = np.repeat(np.arange(3), 40)
    stats.accumulate(rng.normal(size=(120, 4)) + labels[:, None], labels)
    assert stats.num_classes == 6
    with caplog.at_level(logging.WARNING, logger="asr_distill.gmm.lda_mllt"):
        lda = estimate_lda(stats, 3)
    assert lda.shape == (3, 4) and np.isfinite(lda).all()
    assert "only 3 classes with data" in caplog.text
    # Zero-weighted frames still extend the table (silence pdfs exist even when weighted out).
    table = LdaStats(4)
    table.accumulate(np.zeros((2, 4)), np.array([0, 7]), np.zeros(2))
    assert table.num_classes == 8 and table.count == 0


# ------------------------------------------------------------------------------------------------------------
# MLLT

def reference_mllt_g(gmm: GmmModel, x: np.ndarray, pdf_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """G_i = sum_t sum_m w_t gamma_tm / var_mi (x_t - mu_m)(x_t - mu_m)^T, frame by frame."""
    post = reference_posteriors(gmm, x, pdf_ids) * weights[:, None]
    dim = x.shape[1]
    G = np.zeros((dim, dim, dim))
    for t, m in zip(*np.nonzero(post)):
        d = x[t] - gmm.means[m]
        G += post[t, m] / gmm.variances[m][:, None, None] * np.outer(d, d)[None]
    return G


def test_mllt_stats_match_definition():
    rng = np.random.default_rng(6)
    gmm = random_gmm(rng, [2, 3, 1, 2], dim=3)
    x = rng.normal(scale=2.0, size=(80, 3))
    pdf_ids = rng.integers(0, 4, 80)
    weights = rng.uniform(0.0, 2.0, 80)
    weights[::7] = 0.0
    stats = MlltStats(3)
    total = stats.accumulate(gmm, x[:30], pdf_ids[:30], weights[:30])
    rest = MlltStats(3)
    total += rest.accumulate(gmm, x[30:], pdf_ids[30:], weights[30:])
    stats += rest
    np.testing.assert_allclose(stats.G, reference_mllt_g(gmm, x, pdf_ids, weights), rtol=1e-9, atol=1e-9)
    assert stats.beta == pytest.approx(weights.sum())
    assert total == pytest.approx(weights @ gmm.loglikes(x)[np.arange(80), pdf_ids], rel=1e-5)


def semi_tied_data(rng, dim: int = 4, num_classes: int = 6, n: int = 4000):
    """x = B z, z diagonal-Gaussian per class (class-specific variances), and the diagonal GMM (one Gaussian
    per pdf) of the true class means and per-dimension variances in the x space."""
    mixing = rng.normal(size=(dim, dim)) + 2.0 * np.eye(dim)
    z_means = rng.normal(scale=3.0, size=(num_classes, dim))
    z_vars = rng.uniform(0.2, 3.0, size=(num_classes, dim))
    z, labels = class_data(rng, z_means, n, lambda c, k: rng.normal(size=(k, dim)) * np.sqrt(z_vars[c]))
    x = z @ mixing.T
    x_vars = np.stack([np.diag(mixing @ np.diag(v) @ mixing.T) for v in z_vars])
    gmm = GmmModel(np.arange(num_classes), np.ones(num_classes), z_means @ mixing.T, x_vars)
    return x, labels, gmm, mixing


def mllt_objective(stats: MlltStats, A: np.ndarray) -> float:
    return stats.beta * np.linalg.slogdet(A)[1] - 0.5 * sum(A[i] @ stats.G[i] @ A[i] for i in range(len(A)))


def test_mllt_improvement_is_the_likelihood_gain():
    rng = np.random.default_rng(7)
    x, labels, gmm, _ = semi_tied_data(rng)
    stats = MlltStats(x.shape[1])
    stats.accumulate(gmm, x, labels)
    A, impr = estimate_mllt(stats)
    assert impr > 0
    assert impr == pytest.approx((mllt_objective(stats, A) - mllt_objective(stats, np.eye(len(A)))) / stats.beta,
                                 rel=1e-9)
    # One Gaussian per pdf: the objective is the data log-likelihood (Jacobian included) with the means moved
    # by A and the variances kept, so its gain equals the gain in average log-likelihood.
    before = gaussian_posteriors(gmm, x, labels)[1].mean()
    after = gaussian_posteriors(transform_means(gmm, A), x @ A.T, labels)[1].mean() + np.linalg.slogdet(A)[1]
    assert after - before == pytest.approx(impr, rel=1e-9)


def test_mllt_undoes_semi_tied_mixing():
    rng = np.random.default_rng(8)
    x, labels, gmm, mixing = semi_tied_data(rng)
    n_per_class = np.bincount(labels).min()
    classes = range(len(gmm.means))
    full = np.eye(x.shape[1])
    y = x
    for round_ in range(3):  # as train_lda_mllt.sh: estimate, move the model, compose, re-estimate the model
        stats = MlltStats(x.shape[1])
        stats.accumulate(gmm, y, labels)
        A, impr = estimate_mllt(stats)
        # The identity is the starting point, so no round loses; once converged the gain is round-off.
        assert impr > 0 if round_ == 0 else impr > -1e-9
        start_means = gmm.means
        gmm = transform_means(gmm, A)
        np.testing.assert_allclose(gmm.means, start_means @ A.T)
        full = A @ full
        y = x @ full.T
        gmm.means = np.stack([y[labels == c].mean(0) for c in classes])  # gmm-est, one Gaussian per pdf
        gmm.variances = np.stack([y[labels == c].var(0) for c in classes])
    # Sampling noise of a correlation estimate is about 1/sqrt(n): that is all the off-diagonal mass left.
    noise = 1.0 / np.sqrt(n_per_class)
    for c in classes:
        assert offdiag_ratio(np.cov(y[labels == c].T)) < 3 * noise < offdiag_ratio(np.cov(x[labels == c].T))
    # full @ mixing is a scaled permutation: each row has one dominant entry, the others within estimation error
    # (the 1/sqrt(n) noise, amplified by the mixing's conditioning: an order of magnitude of slack over seeds),
    # where the mixing itself has rows with several comparable entries.
    prod = np.abs(full @ mixing)
    prod /= prod.max(1, keepdims=True)
    assert sorted(prod.argmax(1)) == list(range(len(prod)))
    assert np.sort(prod, axis=1)[:, -2].max() < 10 * noise
    mixed = np.abs(mixing) / np.abs(mixing).max(1, keepdims=True)
    assert np.sort(mixed, axis=1)[:, -2].max() > 10 * noise


def test_transform_means():
    rng = np.random.default_rng(9)
    gmm = random_gmm(rng, [2, 1], dim=3)
    original = gmm.means.copy()
    A = rng.normal(size=(3, 3))
    out = transform_means(gmm, A)
    np.testing.assert_allclose(out.means, original @ A.T)
    np.testing.assert_array_equal(out.variances, gmm.variances)
    np.testing.assert_array_equal(gmm.means, original)
    assert out.variances is not gmm.variances
    b = rng.normal(size=3)
    np.testing.assert_allclose(transform_means(gmm, np.column_stack([A, b])).means, original @ A.T + b)
    with pytest.raises(ValueError, match="expected \\(3, 3\\) or \\(3, 4\\)"):
        transform_means(gmm, np.eye(4))


def test_mllt_bad_input():
    rng = np.random.default_rng(10)
    gmm = random_gmm(rng, [1, 1], dim=3)
    with pytest.raises(ValueError, match="model dimension 3"):
        MlltStats(4).accumulate(gmm, np.zeros((5, 4)), np.zeros(5, int))
    with pytest.raises(ValueError, match="one pdf-id per frame"):
        MlltStats(3).accumulate(gmm, np.zeros((5, 3)), np.zeros(6, int))
    with pytest.raises(ValueError, match="zero count"):
        estimate_mllt(MlltStats(3))
    with pytest.raises(ValueError, match="dimension 2 to ones of dimension 3"):
        MlltStats(3).add(MlltStats(2))
