"""A fused CUDA kernel (Triton) for the ensemble soft targets + distillation loss + its gradient.

The ensemble targets + loss are pure memory traffic over (K, B, C) bf16 teacher logits.  Eager PyTorch makes ~7 fp32
(B, C) passes per teacher; Inductor still reads the teacher logits twice and writes/reads an fp32 target.  This
kernel holds one frame's whole row (C <= 32768) in registers: it reads each teacher row once, forms the ensemble
target, the student's softmaxes, the per-frame loss AND d loss / d z (the gradient is analytic:
alpha*T*(q_T - p) + (1 - alpha)*(softmax(z) - onehot(y)), per frame, over B), so backward is one scaled copy.
"""
from __future__ import annotations

from typing import Optional

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs simply don't get the fused loss kernel.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

__all__ = ["fused_ensemble_distillation_loss", "triton"]

ENSEMBLE_MEANS = ("arithmetic", "geometric")


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
