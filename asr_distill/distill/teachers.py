"""The teachers' side of distillation: ``K`` frozen teachers evaluated together as one stacked computation
without gradients, and their ensemble's softened posterior."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..nnet.models import MLP

__all__ = ["StackedTeachers", "ensemble_soft_targets", "ENSEMBLE_MEANS", "fp8_support", "TEACHER_MODES"]

ENSEMBLE_MEANS = ("arithmetic", "geometric")
TEACHER_MODES = ("auto", "bmm", "addmm", "loop", "fp8")

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3fn value
# torch._scaled_mm wants the reduction and output dimensions in multiples of 16 (the FP8 tensor cores' tile)
FP8_ALIGN = 16


def fp8_support(device: Union[torch.device, str]) -> Optional[str]:
    """None where the teachers' FP8 path runs at speed on ``device`` (CUDA, compute capability 8.9 or newer: Ada,
    Hopper, Blackwell), else why not.  The path itself runs anywhere torch has ``_scaled_mm`` (the CPU included,
    emulated: what the tests use), but only these GPUs have FP8 tensor cores."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FP8 matmuls need a CUDA GPU of compute capability 8.9 or newer; this run is on {device.type}"
    if not torch.cuda.is_available():
        return "FP8 matmuls need a CUDA GPU; CUDA is not available"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        return (f"FP8 matmuls need compute capability 8.9 or newer; {torch.cuda.get_device_name(device)} has "
                f"{cap[0]}.{cap[1]}")
    return None


def _pad_to(n: int, multiple: int = FP8_ALIGN) -> int:
    return -(-n // multiple) * multiple


def _quantise_rows(x: torch.Tensor, width: Optional[int] = None) -> tuple:
    """``x`` (rows, n) -> (e4m3 values (rows, width) zero-padded, float32 scales (rows, 1)) with
    ``x ~= values * scales`` per row: each row's largest magnitude maps to the format's largest value."""
    amax = x.abs().amax(dim=1, keepdim=True).float().clamp_(min=1e-12)
    scale = amax / FP8_MAX
    q = (x.float() / scale).to(FP8)
    if width is not None and width != x.shape[1]:
        q = torch.nn.functional.pad(q.view(torch.uint8), (0, width - x.shape[1])).view(FP8)
    return q.contiguous(), scale


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

    * ``mode="fp8"``: the ``addmm`` layout in FP8 (e4m3) through ``torch._scaled_mm``: weights quantised once
      with a scale per output channel, activations per row at every layer, bf16 outputs; twice the bf16 matmul
      rate on Hopper.  Only where :func:`fp8_support` says so is it fast; elsewhere it runs (emulated) for tests.

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
        if mode not in TEACHER_MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {TEACHER_MODES}")
        if mode == "fp8" and dtype not in (None, torch.bfloat16):
            raise ValueError("mode='fp8' computes in FP8 with bf16 outputs; leave dtype unset")
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
        if mode in ("bmm", "addmm", "fp8") and not stackable:
            raise ValueError(f"mode={mode!r} needs MLP teachers of identical shape")
        self.mode = mode if mode != "auto" else ("stacked" if stackable else "loop")
        self.teachers: Optional[nn.ModuleList] = None
        self.num_layers = 0
        if self.mode == "loop":
            self.teachers = nn.ModuleList([t for t in teachers]).to(device=device, dtype=dtype).eval()
            self.teachers.requires_grad_(False)
            return
        self.num_layers = len(shapes[0])
        if self.mode == "fp8":
            self.dtype = torch.bfloat16
            self._init_fp8(shapes, device)
            return
        for i in range(self.num_layers):
            w = torch.stack([s[i].weight.detach() for s in shapes]).to(device=device, dtype=dtype).contiguous()
            b = torch.stack([s[i].bias.detach() for s in shapes]).to(device=device, dtype=dtype).contiguous()
            self.register_buffer(f"weight{i}", w)  # (K, out, in), as nn.Linear stores it
            self.register_buffer(f"bias{i}", b)  # (K, out)

    def _init_fp8(self, shapes: List[List[nn.Linear]], device: torch.device) -> None:
        """FP8 weights with one scale per output row (per-channel), zero-padded to multiples of 16 in both
        dimensions; the first layer's teachers concatenated (their input is shared: one GEMM for all)."""
        for i in range(self.num_layers):
            w = torch.stack([s[i].weight.detach() for s in shapes]).to(device=device, dtype=torch.float32)
            b = torch.stack([s[i].bias.detach() for s in shapes]).to(device=device, dtype=torch.float32)
            K, out_dim, in_dim = w.shape
            out_pad, in_pad = _pad_to(out_dim), _pad_to(in_dim)
            w = torch.nn.functional.pad(w, (0, in_pad - in_dim, 0, out_pad - out_dim))
            b = torch.nn.functional.pad(b, (0, out_pad - out_dim))
            q, scale = _quantise_rows(w.reshape(K * out_pad, in_pad))
            # (K, out, in) row-major: w[k].t() is the column-major (in, out) operand _scaled_mm wants
            self.register_buffer(f"weight{i}", q.view(K, out_pad, in_pad))
            self.register_buffer(f"wscale{i}", scale.view(K, 1, out_pad).contiguous())
            self.register_buffer(f"bias{i}", b.to(torch.bfloat16))
            if i == 0:
                self.fp8_input_dim = in_dim

    def _fp8_forward(self, h: torch.Tensor) -> torch.Tensor:
        """Each layer: the activations quantised per row (dynamic scales), ``torch._scaled_mm`` with the weights'
        per-channel scales and bf16 output, bias, ReLU.  Padded rows/columns are zeros and stay zeros."""
        K, B, last = self.num_teachers, h.shape[0], self.num_layers - 1
        w, ws, b = self.weight0, self.wscale0, self.bias0
        out_pad = w.shape[1]
        x, xs = _quantise_rows(h, w.shape[2])
        first = torch._scaled_mm(x, w.view(K * out_pad, -1).t(), scale_a=xs, scale_b=ws.view(1, -1),
                                 bias=b.view(-1), out_dtype=torch.bfloat16)  # (B, K * out_pad)
        if last == 0:
            return first.view(B, K, out_pad).transpose(0, 1)[:, :, :self.num_pdfs]
        first = first.relu_()
        out = torch.empty(K, B, self.num_pdfs, dtype=torch.bfloat16, device=h.device)
        for k in range(K):
            hk = first[:, k * out_pad:(k + 1) * out_pad]
            for i in range(1, self.num_layers):
                w, ws, b = getattr(self, f"weight{i}"), getattr(self, f"wscale{i}"), getattr(self, f"bias{i}")
                x, xs = _quantise_rows(hk)
                hk = torch._scaled_mm(x, w[k].t(), scale_a=xs, scale_b=ws[k], bias=b[k], out_dtype=torch.bfloat16)
                if i < last:
                    hk = hk.relu_()
            out[k] = hk[:, :self.num_pdfs]
        return out

    def _layer(self, i: int) -> tuple:
        return getattr(self, f"weight{i}"), getattr(self, f"bias{i}")

    def resolved_mode(self, batch_size: int, device: torch.device) -> str:
        """The path ``forward`` takes for a batch of ``batch_size`` frames on ``device``."""
        if self.mode != "stacked":  # loop, fp8
            return self.mode
        return "addmm" if device.type == "cuda" else "bmm"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.resolved_mode(x.shape[0], x.device)
        if mode == "loop":
            return torch.stack([t(x.to(self.dtype)) for t in self.teachers])
        if mode == "fp8":
            return self._fp8_forward(x.flatten(1))
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
