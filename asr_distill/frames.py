"""Spliced frame batches: all features of a set live as ONE tensor on the training device and context windows are
gathered there with index arithmetic, so no per-frame Python runs in the training loop.

A window of frame ``t`` is frames ``t-left .. t+right`` of the same utterance, the edges repeating the first/last
frame (Kaldi's splicing convention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["FrameSet", "splice_utterance"]


@dataclass
class FrameSet:
    """Concatenated features ``(num_frames, feat_dim)``, per-frame labels and each frame's utterance bounds."""

    feats: torch.Tensor  # (N, D) float
    labels: Optional[torch.Tensor]  # (N,) int64 pdf-ids, or None
    utt_start: torch.Tensor  # (N,) int64: first frame index of the frame's utterance
    utt_end: torch.Tensor  # (N,) int64: last frame index (inclusive)
    offsets: torch.Tensor  # (U+1,) int64 utterance boundaries
    utt_ids: List[str]
    left: int
    right: int

    @classmethod
    def from_arrays(cls, feats: Sequence[np.ndarray], labels: Optional[Sequence[np.ndarray]], utt_ids: List[str],
                    left: int, right: int, device: torch.device | str = "cpu") -> "FrameSet":
        lengths = torch.tensor([len(f) for f in feats], dtype=torch.int64)
        offsets = torch.zeros(len(feats) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        utt_index = torch.repeat_interleave(torch.arange(len(feats)), lengths)
        all_feats = torch.from_numpy(np.concatenate(feats).astype(np.float32))
        all_labels = None
        if labels is not None:
            for uid, f, lab in zip(utt_ids, feats, labels):
                if len(f) != len(lab):
                    raise ValueError(f"utterance {uid}: {len(f)} feature frames but {len(lab)} alignment labels")
            all_labels = torch.from_numpy(np.concatenate(labels).astype(np.int64)).to(device)
        return cls(feats=all_feats.to(device), labels=all_labels,
                   utt_start=offsets[:-1][utt_index].to(device), utt_end=(offsets[1:][utt_index] - 1).to(device),
                   offsets=offsets, utt_ids=list(utt_ids), left=left, right=right)

    @property
    def num_frames(self) -> int:
        return self.feats.shape[0]

    @property
    def context(self) -> int:
        return self.left + 1 + self.right

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def windows(self, frame_index: torch.Tensor) -> torch.Tensor:
        """Context windows ``(B, context, D)`` of the frames ``frame_index`` (on this set's device)."""
        shifts = torch.arange(-self.left, self.right + 1, device=frame_index.device)
        idx = frame_index[:, None] + shifts[None, :]
        idx = torch.maximum(idx, self.utt_start[frame_index, None])
        idx = torch.minimum(idx, self.utt_end[frame_index, None])
        return self.feats[idx]

    def batch(self, frame_index: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        labels = None if self.labels is None else self.labels[frame_index]
        return self.windows(frame_index), labels

    def shuffled_batches(self, batch_size: int, generator: torch.Generator,
                         frame_subset: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
        """Frame-level random shuffling: index batches drawn without replacement over (a subset of) the frames.
        The permutation is made on the CPU with ``generator`` so that runs are reproducible on any device."""
        pool = torch.arange(self.num_frames) if frame_subset is None else frame_subset.cpu()
        perm = pool[torch.randperm(len(pool), generator=generator)].to(self.device)
        for start in range(0, len(perm), batch_size):
            yield perm[start:start + batch_size]

    def utterance(self, i: int) -> Tuple[str, torch.Tensor, Optional[torch.Tensor]]:
        """Windows and labels of utterance ``i`` (for per-utterance evaluation)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        idx = torch.arange(a, b, device=self.device)
        x, y = self.batch(idx)
        return self.utt_ids[i], x, y

    def sequential_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.num_frames, batch_size):
            yield torch.arange(start, min(start + batch_size, self.num_frames), device=self.device)


def splice_utterance(feats: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Windows ``(T, context, D)`` of one utterance's ``(T, D)`` features, edges repeated (as :class:`FrameSet`)."""
    t = feats.shape[0]
    idx = torch.arange(t, device=feats.device)[:, None] + torch.arange(-left, right + 1, device=feats.device)[None]
    return feats[idx.clamp(0, t - 1)]
