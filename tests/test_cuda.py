"""The CUDA paths of the distillation step against the CPU/eager reference: skipped without a GPU (CI has none; run
them on a lent GPU, see docs/RESULTS.md).  Checked: the fused Triton loss equals the reference loss and gradient,
a CUDA-graph step trains like the eager step, and the input perturbation inside a captured graph draws afresh on
every replay while the teachers still label exactly what the student sees."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from asr_distill.nnet.augment import WindowAugment
from asr_distill.distill import DistillStep, distillation_loss, ensemble_soft_targets, fused_ensemble_distillation_loss
from asr_distill.distill.fused import triton
from asr_distill.nnet.frames import FrameSet
from asr_distill.nnet.models import MLP

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _frames(device, feat=8, pdfs=16, seed=0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(50, 120, size=12)
    return FrameSet.from_arrays([rng.standard_normal((n, feat)).astype(np.float32) for n in lens],
                                [rng.integers(0, pdfs, n) for n in lens], [f"u{i}" for i in range(12)], 2, 2,
                                device)


@pytest.mark.skipif(triton is None, reason="needs Triton")
@pytest.mark.parametrize("mean", ["arithmetic", "geometric"])
def test_fused_loss_matches_the_reference_loss_and_gradient(mean):
    torch.manual_seed(0)
    z = torch.randn(300, 37, device="cuda", requires_grad=True)
    teacher_logits = torch.randn(3, 300, 37, device="cuda") * 3
    y = torch.randint(0, 37, (300,), device="cuda")
    T, alpha = 2.0, 0.7
    fused = fused_ensemble_distillation_loss(z, teacher_logits, y, T, alpha, mean)
    (g_fused,) = torch.autograd.grad(fused, z)
    ref = distillation_loss(z, y, T, alpha, teacher_probs=ensemble_soft_targets(teacher_logits, T, mean))
    (g_ref,) = torch.autograd.grad(ref, z)
    assert float(fused.detach()) == pytest.approx(float(ref.detach()), rel=1e-4)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-3, atol=1e-6)


def test_cuda_graph_step_trains_like_the_eager_step():
    torch.manual_seed(0)
    frames = _frames("cuda")
    teachers = [MLP(8, 5, 16, 64, 2).cuda().eval() for _ in range(3)]
    student = MLP(8, 5, 16, 64, 2).cuda()
    twin, start = copy.deepcopy(student), copy.deepcopy(student)
    graphed = DistillStep(student, teachers, frames=frames, T=2.0, alpha=0.5, lr=1e-3, cuda_graph=True)
    eager = DistillStep(twin, teachers, frames=frames, T=2.0, alpha=0.5, lr=1e-3, cuda_graph=False)
    g = torch.Generator().manual_seed(0)
    batches = [b for b in frames.shuffled_batches(128, g) if len(b) == 128][:20]
    la = [float(graphed.step(b)) for b in batches]
    lb = [float(eager.step(b)) for b in batches]
    np.testing.assert_allclose(la, lb, rtol=2e-2)  # bf16 autocast: same math, other kernels
    # the two runs' weights moved the same way: their difference is small against how far either moved
    for pa, pb, p0 in zip(student.parameters(), twin.parameters(), start.parameters()):
        assert float((pa - pb).norm()) < 0.1 * float((pa - p0).norm())


class _Recorder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.seen = model, model.config, None

    def forward(self, x):
        self.seen = x.detach().clone()  # inside a graph: a static buffer the replays write into
        return self.model(x)


def test_perturbation_inside_a_cuda_graph_draws_afresh_and_reaches_the_teachers():
    torch.manual_seed(0)
    frames = _frames("cuda")
    teacher = _Recorder(MLP(8, 5, 16, 64, 2).cuda().eval())
    student = _Recorder(MLP(8, 5, 16, 64, 2).cuda())
    step = DistillStep(student, [teacher], frames=frames, T=2.0, alpha=0.5, lr=0.0, cuda_graph=True,
                       teacher_mode="loop", fused_loss=False, augment=WindowAugment(noise_std=0.3, freq_mask=4))
    idx = torch.arange(128, device="cuda")
    step.step(idx)  # captures
    seen = []
    for _ in range(3):
        step.step(idx)  # replays, same frames, learning rate 0
        torch.cuda.synchronize()
        # the teachers run in bf16 on CUDA: they get the student's perturbed window, rounded to bf16
        assert torch.equal(teacher.seen, student.seen.to(teacher.seen.dtype))
        seen.append(student.seen.clone())
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    clean = frames.windows(idx)
    # noise of std 0.3 everywhere, plus the masked bins losing their clean values: a mask of 0-4 of the 8 bins
    # covers 2/8 of a window on average, so E[(seen - clean)^2] = 0.3^2 + 0.25 E[clean^2]
    expected = (0.09 + 0.25 * float((clean ** 2).mean())) ** 0.5
    assert float((seen[0] - clean).pow(2).mean().sqrt()) == pytest.approx(expected, rel=0.1)
