"""Knowledge distillation of an ensemble of frame classifiers into one student (Hinton, Vinyals & Dean 2015).

The pieces, smallest first:

* :func:`distillation_loss` -- ``alpha * T^2 * KL(p_teacher_T || p_student_T) + (1 - alpha) * CE(student, labels)``,
  from full teacher posteriors or from a cached top-k of them.
* :func:`ensemble_soft_targets` -- the ensemble's softened posterior (arithmetic mean, as in the paper, or the
  renormalised geometric mean).
* :class:`StackedTeachers` -- all teachers of one shape evaluated as one stacked bf16 computation without gradients.
* :func:`compute_topk_soft_targets`, :func:`save_topk_cache`, :func:`load_topk_cache` -- soft targets computed once
  and stored as ``k`` (probability, pdf-id) pairs per frame, so later runs need no teacher forward at all.
* :class:`DistillStep` -- one optimisation step of the student (teacher forward, student forward under bf16
  autocast on CUDA, loss, backward, fused AdamW), optionally compiled and captured as one CUDA graph.

Everything runs on the CPU too (fp32, no compilation, no graphs); the fast paths only switch on for CUDA tensors.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .frames import FrameSet
from .models import MLP, model_flops_per_frame

try:  # Triton ships with CUDA builds of torch; CPU-only installs simply don't get the fused loss kernel.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

__all__ = [
    "distillation_loss",
    "ensemble_soft_targets",
    "StackedTeachers",
    "TopKCache",
    "compute_topk_soft_targets",
    "save_topk_cache",
    "load_topk_cache",
    "DistillStep",
    "distill_flops_per_frame",
    "fused_ensemble_distillation_loss",
]

ENSEMBLE_MEANS = ("arithmetic", "geometric")


# ----------------------------------------------------------------------------------------------------------- loss

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
    ``alpha = 0`` is plain cross-entropy and needs no teacher input; ``alpha = 1`` needs no labels.
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
        loss = loss + (1.0 - alpha) * F.cross_entropy(z, hard_labels)
    return loss


def ensemble_soft_targets(teacher_logits: torch.Tensor, T: float, mean: str = "arithmetic") -> torch.Tensor:
    """Soft targets ``(B, C)`` fp32 of ``K`` teachers' logits ``(K, B, C)`` at temperature ``T``.

    ``arithmetic``: ``mean_k softmax(z_k / T)``, the paper's ensemble.  ``geometric``: the renormalised geometric
    mean ``softmax(mean_k log_softmax(z_k / T))``, computed as ``softmax(mean_k z_k / T)`` -- the same thing,
    because each ``log_softmax`` differs from ``z_k / T`` by a per-frame constant, which the final softmax removes.
    """
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher_logits must be (K, B, C), got shape {tuple(teacher_logits.shape)}")
    if mean == "arithmetic":
        # One teacher at a time: never holds K fp32 copies of (B, C) in eager mode.
        probs = torch.softmax(teacher_logits[0].float() / T, dim=-1)
        for k in range(1, teacher_logits.shape[0]):
            probs = probs + torch.softmax(teacher_logits[k].float() / T, dim=-1)
        return probs / teacher_logits.shape[0]
    if mean == "geometric":
        return torch.softmax(teacher_logits.float().mean(dim=0) / T, dim=-1)
    raise ValueError(f"unknown ensemble mean {mean!r}; expected one of {ENSEMBLE_MEANS}")


# ------------------------------------------------------------------------------------------------------ teachers

def _mlp_linears(model: nn.Module) -> Optional[List[nn.Linear]]:
    """The Linear layers of a plain ``MLP`` (Linear/ReLU/Dropout only), else None."""
    if not isinstance(model, MLP):
        return None
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    if any(not isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout)) for m in model.net):
        return None
    return linears


class StackedTeachers(nn.Module):
    """``K`` frozen teachers evaluated together; ``forward(x)`` returns logits ``(K, B, C)`` without gradients.

    Teachers that are ``MLP`` s of one shape have their weights stacked into ``(K, out, in)`` buffers (no
    gradients, not parameters, so optimisers and ``state_dict`` consumers of the student never see them), in
    ``dtype`` (default bf16 on CUDA, fp32 elsewhere).  Two ways to run the stack, same numbers up to rounding:

    * ``mode="bmm"``: one batched matmul per layer for all teachers (``torch.baddbmm``): ``num_layers + 1`` big
      kernels, which is what matters when the models are small and launches dominate (the AN4 recipe).
    * ``mode="addmm"``: per teacher, one 2-D GEMM per layer through ``torch._addmm_activation``, which cuBLASLt
      runs with bias and ReLU fused into the GEMM epilogue; at the paper's scale every GEMM is large enough to fill
      the GPU and this saves a full read+write of every ``(K, B, hidden)`` activation per layer.

    ``mode="auto"`` picks ``addmm`` on CUDA (measured faster on an H100 at the paper's scale, 38 vs 52 ms for ten
    teachers at 16384 frames, and at the AN4 scale inside a CUDA graph) and ``bmm`` on the CPU.  Teachers of
    different shapes or types (a TDNN mixed in) fall back to ``mode="loop"``: the modules run one after another,
    in ``dtype``, behind the same interface.
    """

    def __init__(self, teachers: Sequence[nn.Module], dtype: Optional[torch.dtype] = None,
                 device: Optional[Union[torch.device, str]] = None, mode: str = "auto"):
        super().__init__()
        if len(teachers) == 0:
            raise ValueError("need at least one teacher")
        if mode not in ("auto", "bmm", "addmm", "loop"):
            raise ValueError(f"unknown mode {mode!r}")
        device = torch.device(device) if device is not None else next(teachers[0].parameters()).device
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.num_teachers = len(teachers)
        self.num_pdfs = int(teachers[0].config["num_pdfs"])
        self.configs = [dict(t.config) for t in teachers]
        shapes = [_mlp_linears(t) for t in teachers]

        def shape_key(cfg: Dict[str, Any]) -> tuple:
            return tuple(v for k, v in sorted(cfg.items()) if k != "dropout")

        stackable = all(s is not None for s in shapes) and len({shape_key(c) for c in self.configs}) == 1
        if mode in ("bmm", "addmm") and not stackable:
            raise ValueError(f"mode={mode!r} needs MLP teachers of identical shape")
        self.mode = mode if mode != "auto" else ("stacked" if stackable else "loop")
        self.teachers: Optional[nn.ModuleList] = None
        self.num_layers = 0
        if self.mode == "loop":
            self.teachers = nn.ModuleList([t for t in teachers]).to(device=device, dtype=dtype).eval()
            self.teachers.requires_grad_(False)
            return
        self.num_layers = len(shapes[0])
        for i in range(self.num_layers):
            w = torch.stack([s[i].weight.detach() for s in shapes]).to(device=device, dtype=dtype).contiguous()
            b = torch.stack([s[i].bias.detach() for s in shapes]).to(device=device, dtype=dtype).contiguous()
            self.register_buffer(f"weight{i}", w)  # (K, out, in), as nn.Linear stores it
            self.register_buffer(f"bias{i}", b)  # (K, out)

    def _layer(self, i: int) -> tuple:
        return getattr(self, f"weight{i}"), getattr(self, f"bias{i}")

    def resolved_mode(self, batch_size: int, device: torch.device) -> str:
        """The path ``forward`` takes for a batch of ``batch_size`` frames on ``device``."""
        if self.mode != "stacked":
            return self.mode
        return "addmm" if device.type == "cuda" else "bmm"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.resolved_mode(x.shape[0], x.device)
        if mode == "loop":
            return torch.stack([t(x.to(self.dtype)) for t in self.teachers])
        h = x.flatten(1).to(self.dtype)
        K, B = self.num_teachers, h.shape[0]
        last = self.num_layers - 1
        if mode == "bmm":
            hk = h.expand(K, B, h.shape[1])  # batch stride 0: the shared input is not copied K times
            for i in range(self.num_layers):
                w, b = self._layer(i)
                hk = torch.baddbmm(b.unsqueeze(1), hk, w.transpose(1, 2))
                if i < last:
                    hk = hk.relu_()
            return hk
        # addmm: 2-D GEMMs with bias+ReLU fused by cuBLASLt, output written straight into the stack.  The first
        # layer shares its input across teachers, so it is ONE (B, in) x (in, K*hidden) GEMM; each teacher then
        # reads its column block of that result in place (a strided view, no copy).
        w, b = self._layer(0)
        out_dim = w.shape[1]
        if last == 0:
            return torch.addmm(b.reshape(-1), h, w.reshape(K * out_dim, -1).t()).view(B, K, -1).transpose(0, 1)
        first = torch._addmm_activation(b.reshape(-1), h, w.reshape(K * out_dim, -1).t())  # (B, K*hidden)
        out = torch.empty(K, B, self.num_pdfs, dtype=self.dtype, device=h.device)
        for k in range(K):
            hk = first[:, k * out_dim:(k + 1) * out_dim]
            for i in range(1, last):
                w, b = self._layer(i)
                hk = torch._addmm_activation(b[k], hk, w[k].t())
            w, b = self._layer(last)
            torch.addmm(b[k], hk, w[k].t(), out=out[k])
        return out


# -------------------------------------------------------------------------------------------------- top-k cache

@dataclass
class TopKCache:
    """Cached soft targets: per frame ``k`` probabilities ``values`` (fp16) at pdf-ids ``indices`` (int16 when
    ``num_pdfs`` fits, else int32), both ``(num_frames, k)`` and indexed by the frame's index in its FrameSet.
    ``meta`` holds at least ``T``, ``k``, ``mean``, ``num_pdfs``, ``num_frames``."""

    values: torch.Tensor
    indices: torch.Tensor
    meta: Dict[str, Any] = field(default_factory=dict)

    def to(self, device: Union[torch.device, str]) -> "TopKCache":
        return TopKCache(self.values.to(device), self.indices.to(device), dict(self.meta))

    def lookup(self, frame_index: torch.Tensor) -> tuple:
        """``(values, indices)`` of the frames ``frame_index`` (a tensor on the cache's device)."""
        return self.values[frame_index], self.indices[frame_index]

    @property
    def num_frames(self) -> int:
        return self.values.shape[0]


def _index_dtype(num_pdfs: int) -> torch.dtype:
    return torch.int16 if num_pdfs <= torch.iinfo(torch.int16).max + 1 else torch.int32


@torch.no_grad()
def compute_topk_soft_targets(teachers: Union[StackedTeachers, Sequence[nn.Module]], frames: FrameSet, T: float,
                              k: int, batch_size: int = 4096, mean: str = "arithmetic",
                              extra_meta: Optional[Dict[str, Any]] = None) -> TopKCache:
    """Ensemble soft targets of every frame of ``frames``, kept as the ``k`` most probable pdfs per frame.

    Runs on ``frames.device``; the result lives on the CPU.  ``meta['mean_kept_mass']`` reports how much of the
    (softened) posterior the kept classes carry on average -- close to 1 means top-k loses little."""
    stack = teachers if isinstance(teachers, StackedTeachers) else StackedTeachers(list(teachers),
                                                                                   device=frames.device)
    k = min(k, stack.num_pdfs)
    values = torch.empty(frames.num_frames, k, dtype=torch.float16)
    indices = torch.empty(frames.num_frames, k, dtype=_index_dtype(stack.num_pdfs))
    kept = 0.0
    for idx in frames.sequential_batches(batch_size):
        p = ensemble_soft_targets(stack(frames.windows(idx)), T, mean)
        v, i = p.topk(k, dim=-1)
        kept += float(v.sum())
        values[idx.cpu()] = v.to(torch.float16).cpu()
        indices[idx.cpu()] = i.to(indices.dtype).cpu()
    meta: Dict[str, Any] = dict(T=float(T), k=int(k), mean=mean, num_pdfs=int(stack.num_pdfs),
                                num_frames=int(frames.num_frames), num_teachers=int(stack.num_teachers),
                                left=int(frames.left), right=int(frames.right),
                                mean_kept_mass=kept / max(1, frames.num_frames))
    meta.update(extra_meta or {})
    return TopKCache(values, indices, meta)


def save_topk_cache(path: Union[str, os.PathLike], values: torch.Tensor, indices: torch.Tensor,
                    meta: Optional[Dict[str, Any]] = None) -> int:
    """Write the cache atomically (temp file in the same directory, fsync, ``os.replace``); returns its size in
    bytes.  Only tensors and JSON-able metadata are stored, so :func:`load_topk_cache` can refuse pickled code."""
    if values.shape != indices.shape or values.dim() != 2:
        raise ValueError(f"values {tuple(values.shape)} and indices {tuple(indices.shape)} must be equal (N, k)")
    meta = json.loads(json.dumps(meta or {}))  # fails loudly on anything that is not plain data
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"values": values.detach().cpu().contiguous(), "indices": indices.detach().cpu().contiguous(),
                        "meta": meta, "format": "asr_distill.topk.v1"}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return os.path.getsize(path)


def load_topk_cache(path: Union[str, os.PathLike], device: Union[torch.device, str] = "cpu") -> TopKCache:
    """Read a cache written by :func:`save_topk_cache` (``weights_only=True``: no pickled code is executed)."""
    obj = torch.load(os.fspath(path), map_location=device, weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != "asr_distill.topk.v1":
        raise ValueError(f"{path}: not an asr_distill top-k cache")
    return TopKCache(obj["values"], obj["indices"], dict(obj["meta"]))


# ------------------------------------------------------------------------------------- fused CUDA loss (Triton)
# The ensemble targets + loss are pure memory traffic over (K, B, C) bf16 teacher logits.  Eager PyTorch makes
# ~7 fp32 (B, C) passes per teacher; Inductor still reads the teacher logits twice and writes/reads an fp32 target.
# This kernel holds one frame's whole row (C <= 32768) in registers: it reads each teacher row once, forms the
# ensemble target, the student's softmaxes, the per-frame loss AND d loss / d z (the gradient is analytic:
# alpha*T*(q_T - p) + (1 - alpha)*(softmax(z) - onehot(y)), per frame, over B), so backward is one scaled copy.

if triton is not None:
    @triton.jit
    def _ensemble_kd_kernel(t_ptr, z_ptr, y_ptr, g_ptr, l_ptr, K, C, stride_tk, stride_tb, stride_zb, stride_gb,
                            inv_T, grad_kl, loss_kl, w_ce, inv_B, HAS_Y: tl.constexpr, GEOMETRIC: tl.constexpr,
                            BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < C
        t_row = t_ptr + row * stride_tb + offs
        if GEOMETRIC:  # softmax(mean_k z_k / T)
            acc = tl.zeros([BLOCK], tl.float32)
            for k in range(K):
                acc += tl.load(t_row + k * stride_tk, mask=mask, other=0.0).to(tl.float32)
            a = tl.where(mask, acc * (inv_T / K), float("-inf"))
            e = tl.exp(a - tl.max(a, 0))
            p = e / tl.sum(e, 0)
        else:  # mean_k softmax(z_k / T)
            p = tl.zeros([BLOCK], tl.float32)
            nxt = tl.load(t_row, mask=mask, other=float("-inf"))
            for k in range(K):
                # Issue teacher k+1's loads before teacher k's two reductions, so that their latency hides
                # behind them (one row per SM leaves no other warps to hide it); the last one is masked off.
                cur = nxt
                nxt = tl.load(t_row + (k + 1) * stride_tk, mask=mask & (k + 1 < K), other=float("-inf"))
                a = cur.to(tl.float32) * inv_T
                e = tl.exp(a - tl.max(a, 0))
                p += e * (1.0 / tl.sum(e, 0))
            p = p * (1.0 / K)
        z = tl.load(z_ptr + row * stride_zb + offs, mask=mask, other=float("-inf")).to(tl.float32)
        zt = z * inv_T
        mt = tl.max(zt, 0)
        lse_t = mt + tl.log(tl.sum(tl.exp(zt - mt), 0))
        log_q = zt - lse_t
        kl = tl.sum(tl.where(p > 0, p * (tl.log(p) - log_q), 0.0), 0)
        grad = grad_kl * (tl.exp(log_q) - p)
        loss = loss_kl * kl
        if HAS_Y:
            y = tl.load(y_ptr + row)
            m1 = tl.max(z, 0)
            lse = m1 + tl.log(tl.sum(tl.exp(z - m1), 0))
            hit = offs == y
            loss += w_ce * (lse - tl.sum(tl.where(hit, z, 0.0), 0))
            grad += w_ce * (tl.exp(z - lse) - tl.where(hit, 1.0, 0.0))
        tl.store(g_ptr + row * stride_gb + offs, (grad * inv_B).to(g_ptr.dtype.element_ty), mask=mask)
        tl.store(l_ptr + row, loss)


class _FusedEnsembleLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, teacher_logits: torch.Tensor, y: Optional[torch.Tensor], T: float,
                alpha: float, geometric: bool, num_warps: int) -> torch.Tensor:
        K, B, C = teacher_logits.shape
        teacher_logits = teacher_logits.contiguous()
        z = z.contiguous()
        grad = torch.empty_like(z)
        row_loss = torch.empty(B, dtype=torch.float32, device=z.device)
        has_y = y is not None and alpha < 1
        _ensemble_kd_kernel[(B,)](
            teacher_logits, z, y if has_y else row_loss, grad, row_loss, K, C, teacher_logits.stride(0),
            teacher_logits.stride(1), z.stride(0), grad.stride(0), 1.0 / T, alpha * T, alpha * T * T,
            1.0 - alpha, 1.0 / B, HAS_Y=has_y, GEOMETRIC=geometric, BLOCK=triton.next_power_of_2(C),
            num_warps=num_warps)
        ctx.save_for_backward(grad)
        return row_loss.sum() / B

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None, None, None, None, None


def fused_ensemble_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                     hard_labels: Optional[torch.Tensor], T: float, alpha: float,
                                     mean: str = "arithmetic", num_warps: Optional[int] = None) -> torch.Tensor:
    """``distillation_loss(z, y, T, alpha, ensemble_soft_targets(teacher_logits, T, mean))`` in one CUDA kernel
    (Triton), fp32 inside; the gradient w.r.t. ``student_logits`` comes in the logits' dtype.  CUDA only, C <= 32768.
    """
    if triton is None or not student_logits.is_cuda:
        raise RuntimeError("the fused loss needs CUDA tensors and Triton")
    if mean not in ENSEMBLE_MEANS:
        raise ValueError(f"unknown ensemble mean {mean!r}")
    if alpha < 1 and hard_labels is None:
        raise ValueError("alpha < 1 needs hard labels")
    C = student_logits.shape[-1]
    if C > 32768:
        raise ValueError("the fused loss holds a row in registers: at most 32768 classes")
    if num_warps is None:  # ~32 fp32 values per thread per live row
        num_warps = max(1, min(16, triton.next_power_of_2(C) // 1024))
    return _FusedEnsembleLoss.apply(student_logits, teacher_logits, hard_labels, float(T), float(alpha),
                                    mean == "geometric", num_warps)


# ------------------------------------------------------------------------------------------------------ the step

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


class DistillStep:
    """One distillation step of ``student`` from an ensemble (``teachers``) or a top-k cache (``cache``).

    ``step(frame_index, x, y)`` runs: teacher forward (no grad; bf16 on CUDA) or cache lookup by ``frame_index``,
    student forward (bf16 autocast with fp32 master weights on CUDA, plain fp32 on the CPU), the loss of
    :func:`distillation_loss`, backward, optional gradient clipping, and an AdamW update (``fused=True`` on CUDA).
    It returns the loss as a detached 0-dim tensor on the device: call ``.item()`` only when you need the number,
    every call is a host-device synchronisation.

    ``frame_index`` is the frames' index in the training :class:`FrameSet`, on its device (what
    ``FrameSet.shuffled_batches`` yields).  It is required with a cache (it is the cache row: the cache must have
    been computed over that same FrameSet) and optional otherwise.  Give ``frames=`` and ``x``/``y`` may be
    omitted: the step gathers the windows and labels itself (inside the CUDA graph if any).

    Options for speed (CUDA only; ignored on the CPU): ``fused_loss`` (default: on wherever it applies, i.e. CUDA
    with live teachers) computes the ensemble targets, the loss and its gradient in one Triton kernel
    (:func:`fused_ensemble_distillation_loss`); ``compile=True`` runs the soft targets and the loss through
    ``torch.compile`` instead where the fused kernel is off (the top-k cache), and with ``teacher_mode="bmm"`` the
    stacked teachers too; ``cuda_graph=True`` captures the whole step (gather, teachers,
    student, loss, backward, optimizer) as one CUDA graph on the first full batch and replays it for every batch of
    that size; other sizes (a last partial batch) run eagerly on the same weights.  Capture needs a few warm-up
    steps; the student's weights and optimizer state are restored after them, so the captured run trains exactly
    like the eager one.  With a graph, change the learning rate only through :meth:`set_lr`; ``T``, ``alpha`` and
    the model structure are baked into the graph, and an ``optimizer=`` passed in must be ``capturable=True``.

    Data parallelism: ``grad_sync(params, batch_frames)`` is called after ``backward`` and before clipping and the
    optimizer step (:func:`asr_distill.parallel.average_gradients`: the ranks' frame-weighted mean gradient).  A
    hook rather than wrapping the student in ``DistributedDataParallel``: the student stays a plain module (its
    ``config``, ``state_dict`` keys and checkpoints are those of a 1-process run), and the one flattened all-reduce
    per step is all these small models need (DDP's bucketed overlap with backward buys little here).

    ``augment`` (e.g. :class:`asr_distill.augment.WindowAugment`) perturbs every batch's windows before the
    teachers and the student see them, so live teachers label the perturbed input; it draws from the global RNG
    (inside a CUDA graph too: each replay draws afresh).
    """

    def __init__(self, student: nn.Module, teachers: Union[StackedTeachers, Sequence[nn.Module], None] = None, *,
                 cache: Optional[TopKCache] = None, frames: Optional[FrameSet] = None, T: float = 2.0,
                 alpha: float = 0.5, mean: str = "arithmetic", lr: float = 1e-3, weight_decay: float = 0.0,
                 betas: tuple = (0.9, 0.999), eps: float = 1e-8, max_grad_norm: Optional[float] = None,
                 teacher_mode: str = "auto", compile: bool = False, compile_mode: Optional[str] = None,
                 compile_teachers: Optional[bool] = None,
                 cuda_graph: bool = False, fused_loss: Optional[bool] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None,
                 grad_sync: Optional[Callable[[Sequence[nn.Parameter], float], None]] = None,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        if mean not in ENSEMBLE_MEANS:
            raise ValueError(f"unknown ensemble mean {mean!r}")
        if alpha > 0 and teachers is None and cache is None:
            raise ValueError("alpha > 0 needs teachers or a top-k cache")
        if teachers is not None and cache is not None:
            raise ValueError("give teachers or a cache, not both")
        if augment is not None and cache is not None and alpha > 0:
            # the cached targets describe the clean windows: a perturbed input would get another input's target
            raise ValueError("input augmentation needs live teachers (or alpha=0), not a top-k cache")
        self.augment = augment
        self.student = student
        self.device = next(student.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.T, self.alpha, self.mean = float(T), float(alpha), mean
        self.max_grad_norm = max_grad_norm
        self.frames = frames
        self.teachers: Optional[StackedTeachers] = None
        if teachers is not None and alpha > 0:
            self.teachers = teachers if isinstance(teachers, StackedTeachers) else \
                StackedTeachers(list(teachers), device=self.device, mode=teacher_mode)
        self.cache: Optional[TopKCache] = None
        if cache is not None and alpha > 0:
            cache_T = cache.meta.get("T")
            if cache_T is not None and not math.isclose(float(cache_T), self.T, rel_tol=1e-6):
                raise ValueError(f"the cache was softened at T={cache_T}, the step uses T={self.T}")
            if frames is not None and cache.num_frames != frames.num_frames:
                raise ValueError(f"the cache has {cache.num_frames} frames, the FrameSet {frames.num_frames}: "
                                 "it must be computed over the same FrameSet (rows = frame indices)")
            self.cache = cache.to(self.device)
        self.grad_sync = grad_sync
        if grad_sync is not None and cuda_graph and self.cuda:
            # A cross-process all-reduce inside a captured graph would need NCCL graph capture and every rank
            # replaying in lock-step, and the eager last partial batch would all-reduce outside the graph.
            raise ValueError("grad_sync (data-parallel training) and cuda_graph=True do not combine")
        self.cuda_graph = bool(cuda_graph and self.cuda)
        if optimizer is None:
            kwargs: Dict[str, Any] = dict(betas=betas, eps=eps, weight_decay=weight_decay)
            if self.cuda:
                # A tensor lr lets a captured graph see learning-rate changes (set_lr writes into it).
                kwargs.update(fused=True, capturable=self.cuda_graph)
                lr_arg: Any = torch.tensor(float(lr), device=self.device) if self.cuda_graph else float(lr)
            else:
                lr_arg = float(lr)
            optimizer = torch.optim.AdamW(student.parameters(), lr=lr_arg, **kwargs)
        self.optimizer = optimizer
        self._params = [p for p in student.parameters() if p.requires_grad]
        self._loss_fn: Callable[..., torch.Tensor] = _targets_and_loss
        self._teacher_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = self.teachers
        if compile and self.cuda:
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
        if fused_loss is None:  # auto: wherever the Triton kernel applies
            fused_loss = triton is not None and self.cuda and self.teachers is not None
        self.fused_loss = bool(fused_loss and self.cuda and self.teachers is not None)
        if self.fused_loss and triton is None:
            raise RuntimeError("fused_loss=True needs Triton")
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._graph_batch = 0
        self._static: Dict[str, torch.Tensor] = {}

    # -- public ---------------------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def step(self, frame_index: Optional[torch.Tensor] = None, x: Optional[torch.Tensor] = None,
             y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.cache is not None and frame_index is None:
            raise ValueError("the cached mode needs frame_index (the rows of the cache)")
        if x is None:
            if self.frames is None or frame_index is None:
                raise ValueError("give x (and y), or frames= at construction and frame_index")
        self.student.train()
        if not self.cuda_graph:
            return self._step(frame_index, x, y, zero_grad_to_none=True)
        batch = (x if x is not None else frame_index).shape[0]
        if self._graph is None:
            self._capture(frame_index, x, y)
        if batch != self._graph_batch:
            return self._step(frame_index, x, y, zero_grad_to_none=False)  # keep the graph's grad buffers
        for name, value in (("frame_index", frame_index), ("x", x), ("y", y)):
            if name in self._static and value is not None:
                self._static[name].copy_(value, non_blocking=True)
        self._graph.replay()
        return self._static["loss"].clone()

    # -- internals ------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.cuda:  # cache_enabled=False: required under graph capture, and each weight is cast once anyway
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def _loss(self, frame_index: Optional[torch.Tensor], x: Optional[torch.Tensor],
              y: Optional[torch.Tensor]) -> torch.Tensor:
        if x is None:
            x = self.frames.windows(frame_index)
            if y is None and self.alpha < 1:
                y = self.frames.labels[frame_index]
        if self.augment is not None:  # before the teachers: they label what the student sees
            x = self.augment(x)
        teacher_logits = topk_values = topk_indices = None
        if self.teachers is not None:
            with torch.no_grad():
                teacher_logits = self._teacher_fn(x)
        elif self.cache is not None:
            topk_values, topk_indices = self.cache.lookup(frame_index)
        with self._autocast():
            z = self.student(x)
        if self.fused_loss and teacher_logits is not None:
            return fused_ensemble_distillation_loss(z, teacher_logits, y, self.T, self.alpha, self.mean)
        return self._loss_fn(z, y, teacher_logits, topk_values, topk_indices, self.T, self.alpha, self.mean)

    def _update(self, loss: torch.Tensor, batch: int) -> None:
        loss.backward()
        if self.grad_sync is not None:  # before clipping: the norm to clip is the global batch's gradient's
            self.grad_sync(self._params, float(batch))
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.max_grad_norm, foreach=self.cuda or None)
        self.optimizer.step()

    def _step(self, frame_index, x, y, zero_grad_to_none: bool) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=zero_grad_to_none)
        loss = self._loss(frame_index, x, y)
        self._update(loss, (x if x is not None else frame_index).shape[0])
        return loss.detach()

    def _capture(self, frame_index, x, y, warmup: int = 3) -> None:
        """Warm up (compiles, cuBLAS handles, optimizer state) on a side stream, restore the weights and optimizer
        state, then capture one whole step into a CUDA graph over static input buffers."""
        for name, value in (("frame_index", frame_index), ("x", x), ("y", y)):
            if value is not None:
                self._static[name] = value.detach().clone()
        self._graph_batch = (x if x is not None else frame_index).shape[0]
        state = [t for t in list(self.student.parameters()) + list(self.student.buffers())]
        saved = [t.detach().clone() for t in state]
        saved_opt = {id(p): {k: v.detach().clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
                     for p, st in self.optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._step(self._static.get("frame_index"), self._static.get("x"), self._static.get("y"), True)
        torch.cuda.current_stream().wait_stream(side)
        # Undo the warm-up updates.  State the optimizer did not have before is new AdamW state: step 0 and zero
        # moments, which zeroing reproduces (in place: the graph must see these very tensors).
        with torch.no_grad():
            for t, s in zip(state, saved):
                t.copy_(s)
            for p, st in self.optimizer.state.items():
                before = saved_opt.get(id(p), {})
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        v.copy_(before[k]) if k in before else v.zero_()
        del saved, saved_opt
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._loss(self._static.get("frame_index"), self._static.get("x"), self._static.get("y"))
            self._update(loss, self._graph_batch)
            self._static["loss"] = loss.detach()
        self._graph = graph
