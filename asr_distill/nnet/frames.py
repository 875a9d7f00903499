"""Spliced frame batches from a device-resident set: all features of a set live as ONE tensor on the training
device and context windows are gathered there with index arithmetic, so no per-frame Python runs in the training
loop.  (The streaming counterpart is :class:`asr_distill.nnet.stream.FrameStream`; both offer
``train_batches`` / ``eval_batches`` / ``utterances``.)

A window of frame ``t`` is frames ``t-left .. t+right`` of the same utterance, the edges repeating the first/last
frame (Kaldi's splicing convention).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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
    utt_index: Optional[List[int]] = None  # each utterance's index in its manifest (default: its position here)
    _subset_cache: Optional[tuple] = field(default=None, repr=False, compare=False)  # (keep fn, its frame indices)

    @classmethod
    def from_arrays(cls, feats: Sequence[np.ndarray], labels: Optional[Sequence[np.ndarray]], utt_ids: List[str],
                    left: int, right: int, device: torch.device | str = "cpu",
                    utt_index: Optional[Sequence[int]] = None) -> "FrameSet":
        lengths = torch.tensor([len(f) for f in feats], dtype=torch.int64)
        offsets = torch.zeros(len(feats) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        per_frame_utt = torch.repeat_interleave(torch.arange(len(feats)), lengths)
        all_feats = torch.from_numpy(np.concatenate(feats).astype(np.float32, copy=False))
        all_labels = None
        if labels is not None:
            for uid, f, lab in zip(utt_ids, feats, labels):
                if len(f) != len(lab):
                    raise ValueError(f"utterance {uid}: {len(f)} feature frames but {len(lab)} alignment labels")
            all_labels = torch.from_numpy(np.concatenate(labels).astype(np.int64, copy=False)).to(device)
        return cls(feats=all_feats.to(device), labels=all_labels,
                   utt_start=offsets[:-1][per_frame_utt].to(device),
                   utt_end=(offsets[1:][per_frame_utt] - 1).to(device), offsets=offsets, utt_ids=list(utt_ids),
                   left=left, right=right, utt_index=list(utt_index) if utt_index is not None else None)

    @classmethod
    def concat(cls, sets: Sequence["FrameSet"]) -> "FrameSet":
        """One set holding several (same context, device and labelling): the training frames and a transfer set.
        The utterance indices of each later set follow the earlier sets' largest, so that per-utterance frame
        subsets (seeded by the index) stay distinct."""
        first = sets[0]
        for s in sets[1:]:
            if (s.left, s.right, s.device) != (first.left, first.right, first.device):
                raise ValueError("FrameSet.concat: the sets differ in context or device")
            if (s.labels is None) != (first.labels is None):
                raise ValueError("FrameSet.concat: some sets have labels and others not")
        starts, ends, offsets, index, ids = [], [], [torch.zeros(1, dtype=torch.int64)], [], []
        frame_shift, index_shift = 0, 0
        for s in sets:
            starts.append(s.utt_start + frame_shift)
            ends.append(s.utt_end + frame_shift)
            offsets.append(s.offsets[1:] + frame_shift)
            own = s.utt_index if s.utt_index is not None else list(range(len(s.utt_ids)))
            index += [i + index_shift for i in own]
            index_shift = max(index) + 1
            ids += s.utt_ids
            frame_shift += s.num_frames
        labels = None if first.labels is None else torch.cat([s.labels for s in sets])
        return cls(feats=torch.cat([s.feats for s in sets]), labels=labels, utt_start=torch.cat(starts),
                   utt_end=torch.cat(ends), offsets=torch.cat(offsets), utt_ids=ids, left=first.left,
                   right=first.right, utt_index=index)

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

    def subset(self, keep: Callable[[int, int], Optional[np.ndarray]]) -> Optional[torch.Tensor]:
        """Frame indices (CPU, ascending) kept by ``keep(utt_index, num_frames)`` (a boolean mask, or None = all)
        over every utterance; None when every utterance keeps every frame."""
        parts, partial = [], False
        for i in range(len(self.utt_ids)):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            mask = keep(self.utt_index[i] if self.utt_index is not None else i, b - a)
            partial |= mask is not None
            parts.append(torch.arange(a, b) if mask is None else a + torch.from_numpy(np.flatnonzero(mask)))
        return torch.cat(parts) if partial else None

    def shuffled_batches(self, batch_size: int, generator: torch.Generator,
                         frame_subset: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
        """Frame-level random shuffling: index batches drawn without replacement over (a subset of) the frames.
        The permutation is made on the CPU with ``generator`` so that runs are reproducible on any device."""
        pool = torch.arange(self.num_frames) if frame_subset is None else frame_subset.cpu()
        perm = pool[torch.randperm(len(pool), generator=generator)].to(self.device)
        for start in range(0, len(perm), batch_size):
            yield perm[start:start + batch_size]

    def count_frames(self, keep: Optional[Callable[[int, int], Optional[np.ndarray]]] = None) -> int:
        """Frames an epoch trains on: all, or those ``keep(utt_index, num_frames)`` selects."""
        subset = self._subset_of(keep)
        return self.num_frames if subset is None else len(subset)

    def _subset_of(self, keep) -> Optional[torch.Tensor]:
        if keep is None:
            return None
        if self._subset_cache is None or self._subset_cache[0] is not keep:
            self._subset_cache = (keep, self.subset(keep))
        return self._subset_cache[1]

    def train_batches(self, batch_size: int, generator: torch.Generator,
                      keep: Optional[Callable[[int, int], Optional[np.ndarray]]] = None
                      ) -> Iterator[Dict[str, torch.Tensor]]:
        """Training batches as the step's inputs: the frame indices (the step gathers windows and labels)."""
        for idx in self.shuffled_batches(batch_size, generator, self._subset_of(keep)):
            yield {"frame_index": idx}

    def sequential_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.num_frames, batch_size):
            yield torch.arange(start, min(start + batch_size, self.num_frames), device=self.device)

    def eval_batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """``(windows, labels)`` of every frame in order."""
        for idx in self.sequential_batches(batch_size):
            yield self.batch(idx)

    def utterance(self, i: int) -> Tuple[str, torch.Tensor, Optional[torch.Tensor]]:
        """Windows and labels of utterance ``i`` (for per-utterance evaluation)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        idx = torch.arange(a, b, device=self.device)
        x, y = self.batch(idx)
        return self.utt_ids[i], x, y

    def utterances(self) -> Iterator[Tuple[str, torch.Tensor, Optional[torch.Tensor]]]:
        for i in range(len(self.utt_ids)):
            yield self.utterance(i)


def splice_utterance(feats: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Windows ``(T, context, D)`` of one utterance's ``(T, D)`` features, edges repeated (as :class:`FrameSet`)."""
    t = feats.shape[0]
    idx = torch.arange(t, device=feats.device)[:, None] + torch.arange(-left, right + 1, device=feats.device)[None]
    return feats[idx.clamp(0, t - 1)]
