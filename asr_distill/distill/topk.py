"""The top-k cache: the ensemble's soft targets computed once and kept as the ``k`` most probable pdfs of every
frame, so that later runs need no teacher forward at all.

On disk the targets are fields of the training cuts (``topk_values`` float16 and ``topk_indices`` int16/int32,
``(frames, k)`` each: :mod:`asr_distill.data.arrays`), in a manifest of their own next to a JSON of their settings
(T, k, ensemble mean, teachers, kept probability mass).  They are computed utterance by utterance
(:func:`write_topk_cuts`), so a corpus of any size fits.  In memory, the resident path holds them as a
:class:`TopKCache` whose rows are frame indices of its FrameSet; the streaming path carries them in its batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm

from ..data.arrays import attach_frame_arrays, write_arrays_meta
from ..nnet.frames import FrameSet
from ..utils import Pathlike
from .teachers import StackedTeachers, ensemble_soft_targets

__all__ = ["TopKCache", "topk_soft_targets", "compute_topk_soft_targets", "write_topk_cuts"]


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


def _stack(teachers, device) -> StackedTeachers:
    return teachers if isinstance(teachers, StackedTeachers) else StackedTeachers(list(teachers), device=device)


@torch.no_grad()
def topk_soft_targets(stack: StackedTeachers, windows: torch.Tensor, T: float, k: int, mean: str = "arithmetic",
                      batch_size: int = 4096) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """``(values fp16, indices, summed kept mass)`` of the ensemble's top ``k`` at temperature ``T`` for every
    window of ``windows`` ``(N, context, D)``; the tensors on the CPU."""
    values, indices, kept = [], [], 0.0
    for start in range(0, len(windows), batch_size):
        p = ensemble_soft_targets(stack(windows[start:start + batch_size]), T, mean)
        v, i = p.topk(k, dim=-1)
        kept += float(v.sum())
        values.append(v.to(torch.float16).cpu())
        indices.append(i.to(_index_dtype(stack.num_pdfs)).cpu())
    return torch.cat(values), torch.cat(indices), kept


def _meta(stack: StackedTeachers, T: float, k: int, mean: str, frames: int, kept: float, left: int,
          right: int) -> Dict[str, Any]:
    return dict(T=float(T), k=int(k), mean=mean, num_pdfs=int(stack.num_pdfs), num_frames=int(frames),
                num_teachers=int(stack.num_teachers), left=int(left), right=int(right),
                mean_kept_mass=kept / max(1, frames))


def compute_topk_soft_targets(teachers: Union[StackedTeachers, Sequence[nn.Module]], frames: FrameSet, T: float,
                              k: int, batch_size: int = 4096, mean: str = "arithmetic",
                              extra_meta: Optional[Dict[str, Any]] = None) -> TopKCache:
    """Ensemble soft targets of every frame of a resident ``frames``, kept as the ``k`` most probable pdfs.

    Runs on ``frames.device``; the result lives on the CPU.  ``meta['mean_kept_mass']`` reports how much of the
    (softened) posterior the kept classes carry on average -- close to 1 means top-k loses little."""
    stack = _stack(teachers, frames.device)
    k = min(k, stack.num_pdfs)
    parts = [topk_soft_targets(stack, frames.windows(idx), T, k, mean, batch_size)
             for idx in frames.sequential_batches(batch_size)]
    kept = sum(p[2] for p in parts)
    meta = {**_meta(stack, T, k, mean, frames.num_frames, kept, frames.left, frames.right), **(extra_meta or {})}
    return TopKCache(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), meta)


def write_topk_cuts(teachers: Union[StackedTeachers, Sequence[nn.Module]], frames, cuts: Iterable, T: float, k: int,
                    storage_dir: Pathlike, manifest_path: Pathlike, mean: str = "arithmetic",
                    batch_size: int = 4096, progress: bool = True) -> Dict[str, Any]:
    """The top-k soft targets of every utterance of ``frames`` (a FrameSet or FrameStream over ``cuts``, in the
    same order) stored as fields of those cuts: ``manifest_path`` and ``<manifest>.json`` (the settings, returned).
    One utterance at a time, so memory stays bounded whatever the corpus size."""
    stack = _stack(teachers, frames.device)
    k = min(k, stack.num_pdfs)
    totals = {"frames": 0, "kept": 0.0}

    def items():
        utterances = tqdm(frames.utterances(), desc="top-k soft targets", disable=not progress, leave=False)
        for cut, (utt, x, _) in zip(cuts, utterances):
            if cut.id != utt:
                raise ValueError(f"top-k targets: cut {cut.id} met the frames of utterance {utt} (order differs)")
            v, i, mass = topk_soft_targets(stack, x, T, k, mean, batch_size)
            totals["frames"] += len(v)
            totals["kept"] += mass
            yield cut, {"topk_values": v.numpy(), "topk_indices": i.numpy()}

    attach_frame_arrays(items(), storage_dir, manifest_path)
    meta = _meta(stack, T, k, mean, totals["frames"], totals["kept"], frames.left, frames.right)
    write_arrays_meta(meta, manifest_path)
    return meta
