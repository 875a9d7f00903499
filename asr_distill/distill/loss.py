"""Knowledge distillation of an ensemble of frame classifiers into one student (Hinton, Vinyals & Dean 2015).

* :func:`distillation_loss` -- ``alpha * T^2 * KL(p_teacher_T || p_student_T) + (1 - alpha) * CE(student, labels)``,
  from full teacher posteriors or from a cached top-k of them.
* :func:`ensemble_soft_targets` -- the ensemble's softened posterior (arithmetic mean, as in the paper, or the
  renormalised geometric mean).
* :class:`DistillationLoss` -- that loss as a :class:`~asr_distill.nnet.step.FrameLoss` of the generic training
  step: live teachers (:class:`~asr_distill.distill.teachers.StackedTeachers`, bf16 on CUDA, with the fused Triton
  kernel of :mod:`asr_distill.distill.fused`) or a top-k cache (:mod:`asr_distill.distill.topk`).
* :class:`DistillStep` -- the generic :class:`~asr_distill.nnet.step.TrainStep` with a :class:`DistillationLoss`.

Everything runs on the CPU too (fp32, no compilation, no graphs); the fast paths only switch on for CUDA tensors.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..nnet.models import model_flops_per_frame
from ..nnet.step import FrameLoss, TrainStep
from .fused import fused_ensemble_distillation_loss, triton
from .teachers import ENSEMBLE_MEANS, StackedTeachers, ensemble_soft_targets
from .topk import TopKCache

__all__ = ["distillation_loss", "ensemble_soft_targets", "DistillationLoss", "DistillStep",
           "distill_flops_per_frame"]

def distillation_loss(student_logits: torch.Tensor, hard_labels: Optional[torch.Tensor], T: float, alpha: float,
                      teacher_probs: Optional[torch.Tensor] = None, topk_values: Optional[torch.Tensor] = None,
                      topk_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Batch-mean ``alpha * T^2 * KL(p || softmax(z / T)) + (1 - alpha) * CE(softmax(z), labels)``.

    ``student_logits`` ``z``: ``(B, C)``, any float dtype; all arithmetic is done in fp32 (bf16 logits would lose
    the small probabilities the soft targets are about).  The soft target ``p`` is either ``teacher_probs``
    ``(B, C)`` (already softened at temperature ``T``) or a top-k of it: ``topk_values`` ``(B, k)`` probabilities
    at classes ``topk_indices`` ``(B, k)``.

    Top-k targets are renormalised to sum to one over the kept classes, i.e. the target is the teacher posterior
    *conditioned on the top-k set* and the student's full softmax over all ``C`` classes is compared with it.  Why:
    the result is a proper distribution, so the loss is a true KL (>= 0, zero iff the student matches) and its
    gradient ``T * (q - p)`` sums to zero over classes, exactly as with the full target; the dropped tail is
    treated as probability zero, so the student is (mildly) pushed to put no mass there.  Without renormalising,
    the target would have mass ``< 1`` and its pull on the kept classes would be scaled down by the dropped mass,
    which varies from frame to frame.  With ``k = C`` this is identical to the full form.  The target entropy term
    ``sum p log p`` is included (it has no gradient) so the value is the KL itself, comparable across k and T.

    The ``T^2`` factor keeps the soft term's gradient magnitude independent of ``T`` (the paper's Section 2).
    ``alpha = 0`` is plain cross-entropy and needs no teacher input; ``alpha = 1`` needs no labels.  A frame
    labelled -1 (unlabelled: transfer audio) contributes its soft term only; the batch mean is over all frames.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    z = student_logits.float()
    loss = z.new_zeros(())
    if alpha > 0:
        log_q = F.log_softmax(z / T, dim=-1)
        if teacher_probs is not None:
            p = teacher_probs.float()
        elif topk_values is not None and topk_indices is not None:
            p = topk_values.float()
            p = p / p.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            log_q = log_q.gather(-1, topk_indices.long())
        else:
            raise ValueError("alpha > 0 needs teacher_probs or (topk_values, topk_indices)")
        # xlogy: 0 * log 0 = 0 for classes the teacher gives (or an fp16 cache rounds to) zero probability.
        kl = (torch.xlogy(p, p) - p * log_q).sum(dim=-1).mean()
        loss = loss + alpha * T * T * kl
    if alpha < 1:
        if hard_labels is None:
            raise ValueError("alpha < 1 needs hard labels")
        # a frame labelled -1 (untranscribed transfer audio) has no hard-label term: the soft one alone
        ce = F.cross_entropy(z, hard_labels, ignore_index=-1, reduction="sum") / z.shape[0]
        loss = loss + (1.0 - alpha) * ce
    return loss


def distill_flops_per_frame(student: nn.Module, teachers: Sequence[nn.Module]) -> int:
    """FLOPs (2 per MAC) of one training frame: every teacher's forward plus 3x the student's (forward + backward).
    Pass an empty ``teachers`` for the cached (top-k) mode, which runs no teacher."""
    return sum(model_flops_per_frame(t) for t in teachers) + 3 * model_flops_per_frame(student)



def _targets_and_loss(z: torch.Tensor, y: Optional[torch.Tensor], teacher_logits: Optional[torch.Tensor],
                      topk_values: Optional[torch.Tensor], topk_indices: Optional[torch.Tensor],
                      T: float, alpha: float, mean: str) -> torch.Tensor:
    # One function so that torch.compile can fuse the ensemble softmax with the loss's reductions.
    probs = None
    if teacher_logits is not None and alpha > 0:
        probs = ensemble_soft_targets(teacher_logits, T, mean)
    return distillation_loss(z, y, T, alpha, teacher_probs=probs, topk_values=topk_values, topk_indices=topk_indices)


class DistillationLoss(FrameLoss):
    """``alpha * T^2 * KL(ensemble_T || student_T) + (1 - alpha) * CE`` against live ``teachers`` (run on the
    step's perturbed windows) or a top-k ``cache`` (rows looked up by frame index in the resident FrameSet), or
    against streamed top-k targets given to the step.  ``alpha = 0`` is plain cross-entropy and needs neither.

    Speed options (CUDA only; ignored on the CPU): ``fused_loss`` (default: on wherever it applies, i.e. CUDA with
    live teachers) computes the ensemble targets, the loss and its gradient in one Triton kernel; ``compile=True``
    runs the soft targets and the loss through ``torch.compile`` instead where the fused kernel is off, and with
    ``teacher_mode="bmm"`` the stacked teachers too.
    """

    def __init__(self, teachers: Union[StackedTeachers, Sequence[nn.Module], None] = None, *,
                 cache: Optional[TopKCache] = None, T: float = 2.0, alpha: float = 0.5, mean: str = "arithmetic",
                 teacher_mode: str = "auto", compile: bool = False, compile_mode: Optional[str] = None,
                 compile_teachers: Optional[bool] = None, fused_loss: Optional[bool] = None,
                 streamed_targets: bool = False, unlabelled_frames: int = 0):
        if mean not in ENSEMBLE_MEANS:
            raise ValueError(f"unknown ensemble mean {mean!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if alpha > 0 and teachers is None and cache is None and not streamed_targets:
            raise ValueError("alpha > 0 needs teachers or a top-k cache")
        if teachers is not None and (cache is not None or streamed_targets):
            raise ValueError("give teachers or a cache, not both")
        self.T, self.alpha, self.mean = float(T), float(alpha), mean
        self.needs_labels = self.alpha < 1
        self._raw_teachers = teachers if alpha > 0 else None
        self._teacher_mode = teacher_mode
        self.teachers: Optional[StackedTeachers] = None
        self.cache = cache if alpha > 0 else None
        self.streamed_targets = bool(streamed_targets and alpha > 0)
        self.uses_frame_index = self.cache is not None
        self._compile = (compile, compile_mode, compile_teachers)
        # frames labelled -1 (a transfer set): the fused kernel knows no such label, the unfused loss skips them
        self.unlabelled_frames = int(unlabelled_frames)
        if self.unlabelled_frames and fused_loss:
            raise ValueError("the fused loss needs every frame labelled; unlabelled (transfer) frames use the "
                             "unfused one")
        self._fused = False if self.unlabelled_frames else fused_loss
        self.fused_loss = False
        if self.cache is not None:
            cache_T = self.cache.meta.get("T")
            if cache_T is not None and not math.isclose(float(cache_T), self.T, rel_tol=1e-6):
                raise ValueError(f"the cache was softened at T={cache_T}, the step uses T={self.T}")
        self._loss_fn: Callable[..., torch.Tensor] = _targets_and_loss
        self._teacher_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def describe(self) -> Dict[str, Any]:
        source = "live" if self._raw_teachers is not None else "cache" if (self.cache is not None or
                                                                           self.streamed_targets) else "none"
        out = {"loss": "distillation", "T": self.T, "alpha": self.alpha, "mean": self.mean, "targets": source}
        if self.unlabelled_frames:
            out["unlabelled_frames"] = self.unlabelled_frames
        return out

    def check(self, frames, augment) -> None:
        perturbs = augment is not None and getattr(augment, "active", True)
        if perturbs and self.alpha > 0 and (self.cache is not None or self.streamed_targets):
            # the cached targets describe the clean windows: a perturbed input would get another input's target
            raise ValueError("input augmentation needs live teachers (or alpha=0), not a top-k cache")
        if self.cache is not None and frames is not None and self.cache.num_frames != frames.num_frames:
            raise ValueError(f"the cache has {self.cache.num_frames} frames, the FrameSet {frames.num_frames}: "
                             "it must be computed over the same FrameSet (rows = frame indices)")

    def bind(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        if self._raw_teachers is not None:
            t = self._raw_teachers
            self.teachers = t if isinstance(t, StackedTeachers) else \
                StackedTeachers(list(t), device=device, mode=self._teacher_mode)
            self._teacher_fn = self.teachers
        if self.cache is not None:
            self.cache = self.cache.to(device)
        compile, compile_mode, compile_teachers = self._compile
        if compile and cuda:
            opts: Dict[str, Any] = dict(dynamic=False)
            if compile_mode is not None:
                opts["mode"] = compile_mode
            self._loss_fn = torch.compile(_targets_and_loss, **opts)
            # Compiling the bmm chain fuses bias+ReLU into one pass; the addmm path already has them in the GEMM
            # epilogue (and Inductor would split them out again), so by default only an explicit "bmm" is compiled.
            if compile_teachers is None:
                compile_teachers = self.teachers is not None and self.teachers.mode == "bmm"
            if compile_teachers and self.teachers is not None:
                self._teacher_fn = torch.compile(self.teachers, **opts)
        fused = self._fused
        if fused is None:  # auto: wherever the Triton kernel applies
            fused = triton is not None and cuda and self.teachers is not None
        self.fused_loss = bool(fused and cuda and self.teachers is not None)
        if self.fused_loss and triton is None:
            raise RuntimeError("fused_loss=True needs Triton")

    def __call__(self, logits, x, y, frame_index, topk):
        teacher_logits = topk_values = topk_indices = None
        if self._teacher_fn is not None:
            with torch.no_grad():
                teacher_logits = self._teacher_fn(x)
        elif topk is not None:
            topk_values, topk_indices = topk
        elif self.cache is not None:
            topk_values, topk_indices = self.cache.lookup(frame_index)
        elif self.alpha > 0:
            raise ValueError("streamed top-k targets missing from the batch")
        if self.fused_loss and teacher_logits is not None:
            return fused_ensemble_distillation_loss(logits, teacher_logits, y, self.T, self.alpha, self.mean)
        return self._loss_fn(logits, y, teacher_logits, topk_values, topk_indices, self.T, self.alpha, self.mean)


class DistillStep(TrainStep):
    """The generic :class:`~asr_distill.nnet.step.TrainStep` with a :class:`DistillationLoss`: one step of
    ``student`` from an ensemble (``teachers``) or a top-k ``cache``; the other keywords are the step's (``lr``,
    ``cuda_graph``, ``grad_sync``, ``augment``, ...) or the loss's (``teacher_mode``, ``compile``, ``fused_loss``)."""

    def __init__(self, student: nn.Module, teachers: Union[StackedTeachers, Sequence[nn.Module], None] = None, *,
                 cache: Optional[TopKCache] = None, T: float = 2.0, alpha: float = 0.5, mean: str = "arithmetic",
                 teacher_mode: str = "auto", compile: bool = False, compile_mode: Optional[str] = None,
                 compile_teachers: Optional[bool] = None, fused_loss: Optional[bool] = None, **step_options):
        loss = DistillationLoss(teachers, cache=cache, T=T, alpha=alpha, mean=mean, teacher_mode=teacher_mode,
                                compile=compile, compile_mode=compile_mode, compile_teachers=compile_teachers,
                                fused_loss=fused_loss)
        super().__init__(student, loss, **step_options)
        self.student = student

    @property
    def teachers(self) -> Optional[StackedTeachers]:
        return self.loss.teachers

    @property
    def fused_loss(self) -> bool:
        return self.loss.fused_loss
