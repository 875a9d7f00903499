"""Input perturbation of spliced feature windows for training, applied on the training device.

Why it belongs to distillation: with live teachers the ensemble labels the *perturbed* window, so the soft target
always describes what the student sees ("consistent" teaching, Beyer et al. 2022, "Knowledge distillation: a good
teacher is patient and consistent").  Every perturbed copy is a new input with an exact target, which a fixed
hard label cannot give, and longer student training then keeps paying where a hard-label model overfits.
With a top-k cache the targets are those of the clean window, so perturbing is left to the live mode.

Two perturbations of ``(batch, context, feat_dim)`` CMVN-normalised windows, both cheap and graph-capturable:

* additive Gaussian noise of standard deviation ``noise_std`` (in units of the normalised features);
* one frequency mask per window (SpecAugment, Park et al. 2019): ``0 .. freq_mask`` adjacent bins, the same bins in
  every frame of the window, set to 0, the normalised mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["WindowAugment"]


@dataclass(frozen=True)
class WindowAugment:
    noise_std: float = 0.0
    freq_mask: int = 0  # widest frequency mask, in feature bins; 0 = none

    def __post_init__(self):
        if self.noise_std < 0 or self.freq_mask < 0:
            raise ValueError(f"augmentation strengths must be >= 0, got noise_std={self.noise_std}, "
                             f"freq_mask={self.freq_mask}")

    @property
    def active(self) -> bool:
        return self.noise_std > 0 or self.freq_mask > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A perturbed copy of windows ``x`` ``(B, context, D)`` (the global RNG: seeded per epoch by training)."""
        if not self.active:
            return x
        if self.freq_mask > 0:
            batch, dim = x.shape[0], x.shape[-1]
            width = torch.randint(0, min(self.freq_mask, dim) + 1, (batch, 1), device=x.device)
            # start uniform over the positions where the band fits; computed with tensors (no host sync, capturable)
            start = (torch.rand(batch, 1, device=x.device) * (dim - width + 1)).floor().long()
            bins = torch.arange(dim, device=x.device)[None, :]
            keep = ~((bins >= start) & (bins < start + width))  # (B, D)
            x = x * keep[:, None, :].to(x.dtype)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return x
