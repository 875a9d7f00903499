"""Lhotse's 40-bin log-mel filterbank in plain, exportable torch ops (TorchScript and ONNX opset 17 alike).

The spectrum is a DFT written as two matrix products (in float64) rather than ``torch.fft``: every op then exists in
TorchScript and in ONNX opset 17 alike, and onnxruntime's dynamic int8 quantisation applies to the network only.
The front end matches Lhotse's extractor to about 1e-4 (max abs difference of the log-mel energies; float64 DFT
here, float32 FFT there).
"""
from __future__ import annotations

import math

import torch
from lhotse import FbankConfig
from lhotse.features.kaldi.layers import Wav2LogFilterBank
from torch import nn

__all__ = ["FbankFrontend"]


class FbankFrontend(nn.Module):
    """Lhotse's ``Wav2LogFilterBank`` (snip_edges=False, no dither, no energy) in plain, exportable torch ops.

    Input ``(num_samples,)`` float32; output ``(num_frames, num_filters)`` float32 with
    ``num_frames = (num_samples + shift // 2) // shift``.
    """

    def __init__(self, window: torch.Tensor, mel_banks: torch.Tensor, frame_length: int = 400, frame_shift: int = 160,
                 fft_length: int = 512, preemph_coeff: float = 0.97, remove_dc_offset: bool = True,
                 eps: float = float(torch.finfo(torch.float32).eps)):
        super().__init__()
        self.frame_length = int(frame_length)
        self.frame_shift = int(frame_shift)
        self.pad_left = int((frame_length - frame_shift) // 2)
        self.preemph_coeff = float(preemph_coeff)
        self.remove_dc_offset = bool(remove_dc_offset)
        self.eps = float(eps)
        self.fft_length = int(fft_length)
        self.n_bins = int(fft_length // 2 + 1)
        self.register_buffer("window", window.detach().to(torch.float32).reshape(-1).clone())
        assert mel_banks.shape[0] == self.n_bins, (mel_banks.shape, self.n_bins)
        self.register_buffer("mel_banks", mel_banks.detach().to(torch.float64).clone())  # (n_bins, num_filters)

    @classmethod
    def from_lhotse(cls, **config) -> "FbankFrontend":
        """Constants (window, mel banks) taken from Lhotse's own extractor built with ``config`` (FbankConfig
        fields); raises if ``config`` asks for something this front end does not implement."""
        cfg = FbankConfig(**config).to_dict()
        cfg.pop("device", None)
        unsupported = {k: cfg[k] for k, ok in (("dither", 0.0), ("snip_edges", False), ("use_energy", False),
                                                ("use_fft_mag", False), ("sampling_rate", 16000),
                                                ("torchaudio_compatible_mel_scale", True))
                       if k in cfg and cfg[k] != ok}
        if unsupported:
            raise ValueError(f"fbank settings not supported by the export front end: {unsupported}")
        ext = Wav2LogFilterBank(**cfg)
        win = ext.wav2win
        return cls(win._window.data, ext._fb.data, frame_length=win._length, frame_shift=win._shift,
                   fft_length=ext.fft_length, preemph_coeff=ext.preemph_coeff,
                   remove_dc_offset=ext.remove_dc_offset, eps=float(ext._eps.data))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n = wave.size(0)
        num_frames = (n + self.frame_shift // 2) // self.frame_shift
        # sample index of every (frame, offset), in the original signal's coordinates; reflection at both edges
        # exactly as Lhotse's _get_strided_batch (flip of the first pad_left samples, flip of the last ones)
        i = (torch.arange(num_frames, dtype=torch.int64)[:, None] * self.frame_shift
             + torch.arange(self.frame_length, dtype=torch.int64)[None, :] - self.pad_left)
        i = torch.where(i < 0, -i - 1, i)
        i = torch.where(i >= n, 2 * n - 1 - i, i)
        i = torch.clamp(i, 0, n - 1)  # only reached by signals shorter than a frame
        x = wave[i]  # (T, N)
        if self.remove_dc_offset:
            x = x - x.mean(dim=1, keepdim=True)
        if self.preemph_coeff != 0.0:
            prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
            x = x - self.preemph_coeff * prev
        x = (x * self.window).to(torch.float64)
        # DFT tables made in the graph (not stored: they would outweigh a small network); exact integer phase
        # (+ n - n: ties the tables to the input, so that exporters compute them at run time instead of folding
        # 1.6 MB of float64 constants into the ONNX file)
        k = torch.arange(self.frame_length, dtype=torch.int64)[:, None] + (n - n)
        f = torch.arange(self.n_bins, dtype=torch.int64)[None, :]
        angle = ((k * f) % self.fft_length).to(torch.float64) * (2.0 * math.pi / self.fft_length)
        re = torch.matmul(x, torch.cos(angle))
        im = torch.matmul(x, torch.sin(angle))
        mel = torch.matmul(re * re + im * im, self.mel_banks)
        return torch.clamp(mel, min=self.eps).log().to(torch.float32)
