"""Distillation core: loss against hand computations, ensemble means, stacked teachers, top-k cache, a CPU step."""
import math

import numpy as np
import pytest
import torch

from asr_distill.distill import (DistillStep, StackedTeachers, TopKCache, compute_topk_soft_targets,
                                 distill_flops_per_frame, distillation_loss, ensemble_soft_targets, write_topk_cuts)
from asr_distill.nnet.frames import FrameSet
from asr_distill.nnet.models import MLP, TDNN


def _softmax_rows(z):
    """Softmax by explicit sums over python floats, row by row (no torch on the path being checked)."""
    out = []
    for row in z:
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = sum(e)
        out.append([v / s for v in e])
    return out


def _hand_loss(z, labels, p, T, alpha):
    z = z.double().tolist()
    p = p.double().tolist()
    qT = _softmax_rows([[v / T for v in row] for row in z])
    q1 = _softmax_rows(z)
    B = len(z)
    kl = sum(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(prow, qrow) if pi > 0)
             for prow, qrow in zip(p, qT)) / B
    ce = sum(-math.log(q1[b][int(labels[b])]) for b in range(B)) / B
    return alpha * T * T * kl + (1 - alpha) * ce


def test_loss_matches_hand_computation_with_T_squared():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g) * 3
    p = torch.softmax(torch.randn(5, 7, generator=g), -1)
    y = torch.randint(0, 7, (5,), generator=g)
    for T, alpha in [(1.0, 0.5), (2.0, 0.7), (4.0, 1.0), (3.0, 0.25)]:
        got = distillation_loss(z, y, T, alpha, teacher_probs=p)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(_hand_loss(z, y, p, T, alpha), rel=1e-5, abs=1e-6)
    # the T^2 factor: the pure soft loss at T is T^2 times the plain KL at T
    kl_only = distillation_loss(z, None, 3.0, 1.0, teacher_probs=p).item()
    assert kl_only / 9.0 == pytest.approx(_hand_loss(z, y, p, 3.0, 1.0) / 9.0, rel=1e-5)


def test_unlabelled_frames_keep_only_the_soft_term():
    """Transfer frames (label -1): their cross-entropy term is left out, the batch mean stays over every frame."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 7, generator=g) * 2
    p = torch.softmax(torch.randn(6, 7, generator=g), -1)
    y = torch.randint(0, 7, (6,), generator=g)
    y[[1, 4]] = -1
    T, alpha = 2.0, 0.3
    got = distillation_loss(z, y, T, alpha, teacher_probs=p)
    labelled = y >= 0
    soft = _hand_loss(z, y.clamp_min(0), p, T, 1.0)  # alpha 1: the soft term alone, over all six frames
    ce_sum = _hand_loss(z[labelled], y[labelled], p[labelled], T, 0.0) * int(labelled.sum())
    assert got.item() == pytest.approx(alpha * soft + (1 - alpha) * ce_sum / 6, rel=1e-5)
    # every frame unlabelled: the soft term alone, finite gradients
    zz = z.clone().requires_grad_(True)
    loss = distillation_loss(zz, torch.full((6,), -1), T, alpha, teacher_probs=p)
    loss.backward()
    assert loss.item() == pytest.approx(alpha * soft, rel=1e-5) and torch.isfinite(zz.grad).all()
    from asr_distill.distill import DistillationLoss
    described = DistillationLoss([MLP(4, 3, 7, 8, 1)], T=T, alpha=alpha, unlabelled_frames=120).describe()
    assert described["unlabelled_frames"] == 120  # part of the run's config: a resumed run must have the same set
    with pytest.raises(ValueError, match="unfused"):
        DistillationLoss([MLP(4, 3, 7, 8, 1)], T=T, alpha=alpha, unlabelled_frames=120, fused_loss=True)


def test_loss_is_fp32_for_bf16_logits():
    z = torch.randn(4, 6).to(torch.bfloat16)
    p = torch.softmax(torch.randn(4, 6), -1)
    y = torch.randint(0, 6, (4,))
    got = distillation_loss(z, y, 2.0, 0.5, teacher_probs=p)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_hand_loss(z.float(), y, p, 2.0, 0.5), rel=1e-5)


def test_alpha_zero_is_cross_entropy_without_teacher():
    z = torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    got = distillation_loss(z, y, 2.0, 0.0)
    assert got.item() == pytest.approx(torch.nn.functional.cross_entropy(z, y).item(), rel=1e-6)
    with pytest.raises(ValueError):
        distillation_loss(z, y, 2.0, 0.5)  # alpha > 0 without any teacher input


def test_topk_with_k_equal_C_is_the_full_loss_and_renormalises():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 9, generator=g)
    p = torch.softmax(torch.randn(8, 9, generator=g) * 2, -1)
    y = torch.randint(0, 9, (8,), generator=g)
    v, i = p.topk(9, dim=-1)
    full = distillation_loss(z, y, 2.0, 0.6, teacher_probs=p)
    topk = distillation_loss(z, y, 2.0, 0.6, topk_values=v, topk_indices=i.to(torch.int16))
    assert topk.item() == pytest.approx(full.item(), rel=1e-6)
    # k < C: equal to the full loss against the renormalised truncated target
    v3, i3 = p.topk(3, dim=-1)
    trunc = torch.zeros_like(p).scatter_(1, i3, v3 / v3.sum(-1, keepdim=True))
    assert distillation_loss(z, y, 2.0, 1.0, topk_values=v3.half(), topk_indices=i3).item() == pytest.approx(
        _hand_loss(z, y, trunc, 2.0, 1.0), rel=2e-3)


def test_ensemble_means_by_hand():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, 5, generator=g) * 2
    T = 2.5
    per = [_softmax_rows((logits[k] / T).tolist()) for k in range(3)]
    arith = [[sum(per[k][b][c] for k in range(3)) / 3 for c in range(5)] for b in range(4)]
    geo = []
    for b in range(4):
        g_un = [math.exp(sum(math.log(per[k][b][c]) for k in range(3)) / 3) for c in range(5)]
        s = sum(g_un)
        geo.append([v / s for v in g_un])
    a = ensemble_soft_targets(logits, T, "arithmetic")
    gm = ensemble_soft_targets(logits.to(torch.bfloat16), T, "geometric")  # bf16 in, fp32 out
    assert a.dtype == torch.float32 and gm.dtype == torch.float32
    np.testing.assert_allclose(a.numpy(), np.array(arith), rtol=1e-5)
    geo_bf = ensemble_soft_targets(logits.to(torch.bfloat16).float(), T, "geometric")
    np.testing.assert_allclose(gm.numpy(), geo_bf.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ensemble_soft_targets(logits, T, "geometric").numpy(), np.array(geo), rtol=1e-5)
    assert not np.allclose(np.array(arith), np.array(geo), rtol=1e-3)
    with pytest.raises(ValueError):
        ensemble_soft_targets(logits, T, "harmonic")


def _teachers(K=3, context=5, feat=4, pdfs=11, hidden=16, layers=2, seed=0):
    torch.manual_seed(seed)
    return [MLP(feat, context, pdfs, hidden, layers).eval() for _ in range(K)]


@pytest.mark.parametrize("layers", [0, 1, 3])
@pytest.mark.parametrize("mode", ["auto", "bmm", "addmm"])
def test_stacked_teachers_match_each_teacher(mode, layers):
    teachers = _teachers(layers=layers)
    stack = StackedTeachers(teachers, mode=mode)
    assert stack.dtype == torch.float32 and sum(1 for _ in stack.parameters()) == 0
    x = torch.randn(13, 5, 4)
    out = stack(x)
    assert out.shape == (3, 13, 11) and not out.requires_grad
    with torch.no_grad():
        ref = torch.stack([t(x) for t in teachers])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # bf16 stack: same function up to bf16 rounding
    out16 = StackedTeachers(teachers, dtype=torch.bfloat16, mode=mode)(x)
    assert out16.dtype == torch.bfloat16
    assert (out16.float() - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_fp8_teachers_are_the_teachers_up_to_fp8_rounding(layers):
    """The FP8 path (torch._scaled_mm, emulated on the CPU): odd sizes padded to 16, per-channel weight and per-row
    activation scales; logits within e4m3's rounding of fp32's, the ensemble's soft targets closer still; and a
    device without FP8 tensor cores is named."""
    from asr_distill.distill.teachers import fp8_support

    teachers = _teachers(K=3, context=5, feat=7, pdfs=11, hidden=24, layers=layers)
    for t in teachers:  # trained-like logits, not the near-zero ones of a fresh init
        with torch.no_grad():
            t.net[-1].weight.mul_(20.0)
    x = torch.randn(37, 5, 7)
    with torch.no_grad():
        ref = torch.stack([t(x) for t in teachers])
    stack = StackedTeachers(teachers, mode="fp8")
    assert stack.resolved_mode(37, x.device) == "fp8" and sum(1 for _ in stack.parameters()) == 0
    out = stack(x)
    assert out.shape == (3, 37, 11) and out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 0.08
    p, q = ensemble_soft_targets(ref, 2.0), ensemble_soft_targets(out, 2.0)
    assert float((p * (p.log() - q.log())).sum(-1).mean()) < 2e-2  # a mis-scaled layer gives O(1)
    assert "cpu" in fp8_support("cpu")
    with pytest.raises(ValueError):
        StackedTeachers(teachers, mode="fp8", dtype=torch.float32)
    with pytest.raises(ValueError):
        StackedTeachers(teachers + [TDNN(7, 5, 11, 16, 2).eval()], mode="fp8")


def test_stacked_teachers_fall_back_to_a_loop_for_mixed_teachers():
    teachers = _teachers(K=2) + [TDNN(4, 5, 11, 16, 2).eval()]
    stack = StackedTeachers(teachers)
    assert stack.mode == "loop"
    x = torch.randn(7, 5, 4)
    with torch.no_grad():
        ref = torch.stack([t(x) for t in teachers])
    torch.testing.assert_close(stack(x), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        StackedTeachers(teachers, mode="bmm")


def _frameset(num_utts=6, feat=4, pdfs=11, left=2, right=2, seed=0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(20, 60, size=num_utts)
    feats = [rng.standard_normal((n, feat)).astype(np.float32) for n in lens]
    labels = [rng.integers(0, pdfs, size=n) for n in lens]
    return FrameSet.from_arrays(feats, labels, [f"u{i}" for i in range(num_utts)], left, right)


def test_topk_cache_computes_the_ensembles_top_k():
    frames = _frameset()
    teachers = _teachers()
    cache = compute_topk_soft_targets(teachers, frames, T=2.0, k=4, batch_size=37)
    assert cache.values.shape == (frames.num_frames, 4) and cache.values.dtype == torch.float16
    assert cache.indices.dtype == torch.int16
    # the cached values are the top-4 of the ensemble posterior of every frame
    idx = torch.arange(frames.num_frames)
    with torch.no_grad():
        p = ensemble_soft_targets(torch.stack([t(frames.windows(idx)) for t in teachers]), 2.0)
    v, i = p.topk(4, dim=-1)
    torch.testing.assert_close(cache.values.float(), v, rtol=1e-3, atol=1e-4)
    assert torch.equal(cache.indices.long(), i)
    assert 0 < cache.meta["mean_kept_mass"] <= 1.0 + 1e-3
    assert cache.meta["T"] == 2.0 and cache.meta["k"] == 4


def test_topk_targets_stored_with_the_cuts_round_trip(exp, tmp_path):
    """The top-k targets written as fields of the cuts (one utterance at a time) read back, resident and
    streamed, exactly as computed over the whole resident set; any Lhotse reader sees the fields."""
    from lhotse import CutSet

    from asr_distill.data.arrays import read_arrays_meta
    from asr_distill.nnet.frame_data import FrameSource, load_frame_set
    from asr_distill.nnet.stream import FrameStream
    from conftest import load_frames

    frames = load_frames(exp, "dev", 1, 1)
    torch.manual_seed(0)
    teachers = [MLP(40, 3, exp.num_pdfs(), 16, 1).eval() for _ in range(2)]
    cache = compute_topk_soft_targets(teachers, frames, T=2.0, k=4)
    manifest = tmp_path / "topk" / "cuts.jsonl.gz"
    meta = write_topk_cuts(teachers, frames, exp.frame_source("dev").cuts(), 2.0, 4, tmp_path / "topk" / "arrays",
                           manifest, progress=False)
    assert meta["k"] == 4 and meta["T"] == 2.0 and meta["num_frames"] == frames.num_frames
    assert meta["mean_kept_mass"] == pytest.approx(cache.meta["mean_kept_mass"], rel=1e-4)
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["arrays", "cuts.json", "cuts.jsonl.gz"]
    source = FrameSource(manifest, exp.cmvn("fbank"), topk=True, topk_meta=read_arrays_meta(manifest))
    back, topk = load_frame_set(source, 1, 1)
    assert back.utt_ids == frames.utt_ids and torch.equal(back.labels, frames.labels)
    assert torch.equal(topk[0], cache.values) and torch.equal(topk[1], cache.indices)
    assert topk[0].dtype == torch.float16 and topk[1].dtype == torch.int16
    # streamed: every frame's (window, label, targets) as the resident set has them
    stream = FrameStream(source, 1, 1, chunk_frames=300)
    rows = {}
    for b in stream.train_batches(128, torch.Generator().manual_seed(0)):
        for x, y, v, i in zip(b["x"], b["y"], *b["topk"]):
            rows[(x.numpy().tobytes(), int(y))] = (v, i)
    assert len(rows) <= frames.num_frames
    xs, ys = frames.batch(torch.arange(frames.num_frames))
    for n in range(0, frames.num_frames, 97):
        v, i = rows[(xs[n].numpy().tobytes(), int(ys[n]))]
        assert torch.equal(v, cache.values[n]) and torch.equal(i, cache.indices[n])
    cut = next(iter(CutSet.from_file(manifest)))
    assert cut.load_topk_values().shape == (cut.num_frames, 4) and cut.has_custom("pdf_ids")


def test_large_pdf_sets_use_int32_indices():
    from asr_distill.distill.topk import _index_dtype
    assert _index_dtype(14000) == torch.int16 and _index_dtype(40000) == torch.int32


def _kl_to_teacher(student, x, p, T):
    with torch.no_grad():
        return distillation_loss(student(x), None, T, 1.0, teacher_probs=p).item()


@pytest.mark.parametrize("cached", [False, True, "fp8"])
def test_distill_step_on_cpu_learns_a_fixed_teacher(cached):
    torch.manual_seed(0)
    feat, context, pdfs, T = 6, 3, 8, 2.0
    teacher = MLP(feat, context, pdfs, hidden_dim=32, num_layers=2).eval()
    with torch.no_grad():  # a confident, non-trivial teacher
        teacher.net[-1].weight.mul_(8)
    frames = _frameset(num_utts=8, feat=feat, pdfs=pdfs, left=1, right=1, seed=3)
    student = MLP(feat, context, pdfs, hidden_dim=32, num_layers=2)
    idx_all = torch.arange(frames.num_frames)
    x_all = frames.windows(idx_all)
    with torch.no_grad():
        p_all = ensemble_soft_targets(teacher(x_all)[None], T)
    if cached == "fp8":  # live teachers through the FP8 path (emulated here)
        stepper = DistillStep(student, [teacher], frames=frames, T=T, alpha=0.9, lr=1e-2, teacher_mode="fp8")
        assert stepper.loss.teachers.mode == "fp8"
    elif cached:
        cache = compute_topk_soft_targets([teacher], frames, T=T, k=pdfs)
        stepper = DistillStep(student, cache=cache, frames=frames, T=T, alpha=1.0, lr=1e-2)
    else:
        stepper = DistillStep(student, [teacher], frames=frames, T=T, alpha=0.9, lr=1e-2)
    before = _kl_to_teacher(student, x_all, p_all, T)
    g = torch.Generator().manual_seed(0)
    losses = []
    while len(losses) < 50:
        for idx in frames.shuffled_batches(64, g):
            losses.append(stepper.step(idx).item())
            if len(losses) == 50:
                break
    after = _kl_to_teacher(student, x_all, p_all, T)
    assert all(math.isfinite(v) for v in losses)
    assert after < 0.25 * before, (before, after)


def test_distill_step_checks_cache_temperature_and_inputs():
    frames = _frameset()
    cache = TopKCache(torch.rand(frames.num_frames, 3).half(), torch.zeros(frames.num_frames, 3, dtype=torch.int16),
                      {"T": 2.0})
    student = MLP(4, 5, 11, 16, 2)
    with pytest.raises(ValueError):
        DistillStep(student, cache=cache, T=3.0)
    with pytest.raises(ValueError):
        DistillStep(student, T=2.0, alpha=0.5)  # no teacher source
    ce_only = DistillStep(student, alpha=0.0, frames=frames)  # pure CE: no teacher needed
    loss = ce_only.step(torch.arange(16))
    assert loss.shape == () and math.isfinite(loss.item())
    stepper = DistillStep(student, cache=cache, T=2.0, alpha=1.0)
    with pytest.raises(ValueError):
        stepper.step(None, torch.randn(4, 5, 4), None)  # cached mode needs frame indices


def test_flops_per_frame_counts_teachers_once_and_student_three_times():
    teachers = _teachers(K=2)
    student = MLP(4, 5, 11, 16, 2)
    per = 2 * (20 * 16 + 16 * 16 + 16 * 11)
    assert distill_flops_per_frame(student, teachers) == 2 * per + 3 * per


def test_fused_loss_is_off_on_cpu_and_set_lr_updates_the_optimizer():
    student = MLP(4, 5, 11, 16, 2)
    stepper = DistillStep(student, _teachers(), T=2.0, alpha=0.5, lr=1e-3)
    assert stepper.fused_loss is False
    stepper.set_lr(5e-4)
    assert all(g["lr"] == 5e-4 for g in stepper.optimizer.param_groups)
    from asr_distill.distill import fused_ensemble_distillation_loss
    with pytest.raises(RuntimeError):
        fused_ensemble_distillation_loss(torch.randn(2, 11), torch.randn(3, 2, 11), None, 2.0, 1.0)
