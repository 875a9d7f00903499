"""Specialists (the paper's section 5): confusable subsets from the covariance of predictions, dustbin targets and
their prior correction, a specialist initialised from the generalist, and the KL combination (against its closed
form for one specialist and a direct optimisation for several)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asr_distill.distill.specialists import (active_specialists, balanced_selection, cluster_classes, combine,
                                             coverage, dustbin_labels, dustbin_log_prior_ratio, grow_subsets,
                                             membership, prediction_covariance, share_out, specialist_from)
from asr_distill.nnet.models import build_model

GROUPS = [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]


def _confusable_predictions(n: int = 4000, seed: int = 0) -> torch.Tensor:
    """A generalist that hesitates within each group: each frame's mass lies on one group's classes."""
    rng = np.random.default_rng(seed)
    probs = np.full((n, 10), 1e-3)
    for i in range(n):
        g = GROUPS[rng.integers(len(GROUPS))]
        probs[i, g] += rng.dirichlet(np.ones(len(g)))
    return torch.from_numpy(probs / probs.sum(1, keepdims=True))


def test_clusters_are_the_confusable_groups():
    probs = _confusable_predictions()
    cov = prediction_covariance(probs)
    batched = prediction_covariance(list(torch.split(probs, 333)))  # accumulated over batches: the same matrix
    torch.testing.assert_close(batched, cov)
    np.testing.assert_allclose(cov.numpy(), np.cov(probs.numpy().T), atol=1e-12)
    clusters = cluster_classes(cov, 4, seed=1)
    assert sorted(map(list, clusters)) == sorted(GROUPS)
    grown = grow_subsets(cov, clusters, 1)
    assert all(len(g) == len(c) + 1 and set(c) <= set(g) for g, c in zip(grown, clusters))
    assert coverage(grown, 10).sum() == 10 + len(clusters) and coverage(clusters, 10).tolist() == [1] * 10


def test_dustbin_labels_selection_and_prior_correction():
    labels = torch.tensor([0, 3, 4, 9, -1, 4, 7, 7, 7, 7, 7, 7])
    local = dustbin_labels(labels, np.array([3, 4]), 10)
    assert local.tolist() == [2, 0, 1, 2, -1, 1, 2, 2, 2, 2, 2, 2]
    mask = balanced_selection(local, 2, seed=0)
    assert mask[[1, 2, 5]].all() and not mask[4]  # every subset frame, never an unaligned one
    assert int(mask.sum()) == 6  # 3 of the subset + 3 of the 8 dustbin frames
    # A specialist that learnt the balanced training frequencies exactly (1/2 inside, 1/2 dustbin) gives, after
    # the correction, the true ones: 3 of 11 aligned frames inside.
    ratio = dustbin_log_prior_ratio(3 / 11, 3 / 6)
    trained = torch.log(torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    corrected = torch.softmax(trained + torch.cat([ratio[0].expand(2), ratio[1:]]), 0)
    torch.testing.assert_close(corrected, torch.tensor([1.5 / 11, 1.5 / 11, 8 / 11], dtype=torch.float64))


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_soft_targets_teach_the_balanced_priors_that_inference_undoes(T):
    """The teachers' folded posterior (corpus priors) is moved to the balanced selection's priors before training,
    at temperature T as the ratio's 1/T-th power: a specialist that learns these targets exactly is corrected at
    inference by the same ratio as the hard-label term's, back to the teachers' own folded posterior."""
    from asr_distill.distill.specialist_system import SpecialistTargets

    torch.manual_seed(0)
    teacher = build_model(dict(arch="mlp", input_dim=3, context=3, num_pdfs=10, hidden_dim=16, num_layers=2)).eval()
    subset = np.array([2, 5, 7])
    ratio = dustbin_log_prior_ratio(3 / 11, 3 / 6)  # the subset is 27% of the corpus, half of the selection
    x = torch.randn(6, 3, 3)
    plain = SpecialistTargets([teacher], subset, T, 1.0).targets(x)
    balanced = SpecialistTargets([teacher], subset, T, 1.0, ratio).targets(x)
    torch.testing.assert_close(balanced.sum(1), torch.ones(6))
    # more mass inside the subset (its balanced prior is higher), the same proportions within it
    assert (balanced[:, :3].sum(1) > plain[:, :3].sum(1)).all()
    torch.testing.assert_close(balanced[:, :3] / balanced[:, :3].sum(1, keepdim=True),
                               plain[:, :3] / plain[:, :3].sum(1, keepdim=True))
    # what the specialist learns at T is softmax(z / T) = balanced; at inference softmax(z) + the ratio, renormalised
    z = T * balanced.log()
    corr = torch.cat([ratio[0].expand(3), ratio[1:]]).float()
    at_inference = torch.softmax(torch.log_softmax(z, -1) + corr, -1)
    with torch.no_grad():
        p = torch.softmax(teacher(x), -1)  # the teacher's own posterior, folded by hand
    folded_t1 = torch.cat([p[:, subset], 1.0 - p[:, subset].sum(1, keepdim=True)], 1)
    torch.testing.assert_close(at_inference, folded_t1, rtol=1e-4, atol=1e-5)
    # at high T the dustbin is one class softened, not the sum of hundreds of softened classes: on a frame whose
    # posterior is all inside the subset, the target stays mostly inside it
    wide = build_model(dict(arch="mlp", input_dim=3, context=3, num_pdfs=400, hidden_dim=16, num_layers=1)).eval()
    with torch.no_grad():
        wide.net[-1].weight.zero_()
        wide.net[-1].bias.fill_(-8.0)
        wide.net[-1].bias[subset] = 0.0
    t_wide = SpecialistTargets([wide], subset, 5.0, 1.0).targets(x)
    assert (t_wide[:, :3].sum(1) > 0.5).all()


def test_specialists_are_shared_out_longest_first():
    """One large cluster and several small ones, as on AN4 (costs in thousands of frames)."""
    costs = [226, 37, 10, 45, 44, 21, 12, 37]
    owner = share_out(costs, 2)
    loads = [sum(c for c, o in zip(costs, owner) if o == w) for w in range(2)]
    assert owner[0] == 0 and max(loads) == 226  # the largest job alone on one worker: the best possible
    assert share_out(costs, 1) == [0] * 8 and share_out([], 3) == []
    assert sorted(share_out([5, 5, 5], 3)) == [0, 1, 2]


def test_specialist_starts_as_the_generalist_on_its_subset():
    torch.manual_seed(0)
    general = build_model(dict(arch="mlp", input_dim=3, context=3, num_pdfs=10, hidden_dim=16, num_layers=2))
    subset = np.array([2, 5, 7])
    spec = specialist_from(general, subset, build_model)
    assert spec.config["num_pdfs"] == 4
    x = torch.randn(5, 3, 3)
    torch.testing.assert_close(spec(x)[:, :3], general(x)[:, subset])
    torch.testing.assert_close(spec(x)[:, 3], torch.logsumexp(general.net[-1].bias[[0, 1, 3, 4, 6, 8, 9]], 0)
                               .expand(5))


def test_combine_one_specialist_closed_form():
    """Minimising KL(p_g||q) + KL(p_s||q_s) for one specialist: q = (p_g + p_s) / 2 inside the subset, and
    p_g (G_out + p_dust) / (2 G_out) outside (G_out: the generalist's mass outside)."""
    rng = np.random.default_rng(0)
    pg = torch.from_numpy(rng.dirichlet(np.ones(6), size=4))
    ps = torch.from_numpy(rng.dirichlet(np.ones(3), size=4))  # classes 1, 4, then the dustbin
    subset = np.array([1, 4])
    member = membership([subset], 6)
    q = combine(pg, [ps], member, iterations=2000, tol=1e-13)
    expected = pg.clone()
    out = torch.ones(6, dtype=torch.bool)
    out[subset] = False
    g_out = pg[:, out].sum(1, keepdim=True)
    expected[:, out] = pg[:, out] * (g_out + ps[:, 2:]) / (2 * g_out)
    expected[:, subset] = (pg[:, subset] + ps[:, :2]) / 2
    torch.testing.assert_close(q, expected, atol=1e-8, rtol=0)
    # inactive: the generalist's own distribution
    torch.testing.assert_close(combine(pg, [ps], member, active=torch.zeros(4, 1, dtype=torch.bool)), pg)


def _objective(q, pg, specs, member):
    loss = -(pg * torch.log(q)).sum(1)
    for p, m in zip(specs, member):
        q_m = torch.cat([q[:, m], 1 - q[:, m].sum(1, keepdim=True)], 1)
        loss = loss - (p * torch.log(q_m)).sum(1)
    return loss.sum()


def test_combine_two_overlapping_specialists_is_the_minimum():
    """EM's answer is where gradient descent on q's logits (the paper's solver) ends, and no worse than it."""
    rng = np.random.default_rng(1)
    pg = torch.from_numpy(rng.dirichlet(np.ones(7), size=3))
    subsets = [np.array([0, 2, 3]), np.array([3, 5])]
    specs = [torch.from_numpy(rng.dirichlet(np.ones(len(s) + 1), size=3)) for s in subsets]
    member = membership(subsets, 7)
    q = combine(pg, specs, member, iterations=3000, tol=1e-14)
    torch.testing.assert_close(q.sum(1), torch.ones(3, dtype=torch.float64))
    z = torch.log(pg).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        _objective(torch.softmax(z, 1), pg, specs, member).backward()
        opt.step()
    q_gd = torch.softmax(z.detach(), 1)
    torch.testing.assert_close(q, q_gd, atol=2e-4, rtol=0)
    assert _objective(q, pg, specs, member) <= _objective(q_gd, pg, specs, member) + 1e-9


def test_active_specialists_follow_the_generalists_top_classes():
    pg = torch.tensor([[0.5, 0.3, 0.1, 0.1, 0.0], [0.0, 0.1, 0.1, 0.2, 0.6]])
    member = membership([np.array([0, 1]), np.array([2, 3]), np.array([4])], 5)
    assert active_specialists(pg, member, 2).tolist() == [[True, False, False], [False, True, True]]
    with pytest.raises(ValueError):
        prediction_covariance(pg[:1])


def _synthetic_frames(n_utts: int = 12, frames: int = 40, seed: int = 0):
    """Frames whose features carry their class (10 classes, 4 confusable groups), 2 + 1 + 2 context."""
    from asr_distill.nnet.frames import FrameSet

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, 6))
    feats, labels = [], []
    for _ in range(n_utts):
        lab = rng.integers(0, 10, size=frames)
        feats.append((centres[lab] + rng.normal(scale=1.5, size=(frames, 6))).astype(np.float32))
        labels.append(lab)
    return FrameSet.from_arrays(feats, labels, [f"u{i}" for i in range(n_utts)], 2, 2)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_specialist_system_trains_and_its_posteriors_sum_to_one(tmp_path, alpha):
    from asr_distill.distill.specialist_system import SpecialistSystem
    from asr_distill.nnet.train import TrainConfig, train_model

    train, dev = _synthetic_frames(), _synthetic_frames(4, seed=1)
    torch.manual_seed(0)
    general = build_model(dict(arch="mlp", input_dim=6, context=5, num_pdfs=10, hidden_dim=32, num_layers=2))
    train_model(general, train, dev, TrainConfig(epochs=3, batch_size=64, lr=3e-3), tmp_path / "g", progress=False)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3)
    system = SpecialistSystem.fit(general.eval(), train, dev, tmp_path / "spec", cfg, num_specialists=3, overlap=1,
                                  left=2, right=2, top_n=2, progress=False, teachers=[general], T=2.0,
                                  alpha=alpha)
    assert 1 <= len(system.subsets) <= 3 and (tmp_path / "spec" / "subsets.json").is_file()
    config = (tmp_path / "spec" / "specialist0" / "config.json").read_text()
    assert ("specialist-distillation" in config) == (alpha > 0)
    post = system.log_posteriors(dev)
    assert set(post) == set(dev.utt_ids)
    for lp in post.values():
        np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, atol=1e-5)
    assert 0 < system.active_count <= len(system.subsets)
    assert system.params() > sum(p.numel() for p in general.parameters())
