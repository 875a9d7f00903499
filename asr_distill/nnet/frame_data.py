"""Where the DNN stages' frames come from: the cuts of one split, whose fbank features carry the per-frame
fields (``pdf_ids``; ``topk_values``/``topk_indices`` for a top-k cache: :mod:`asr_distill.data.arrays`).

Both frame paths read utterances through :meth:`FrameSource.read`, so they see the same frames and labels:

* resident (:func:`load_frame_set`): the whole split (or a rank's shard) as one device tensor, a
  :class:`~asr_distill.nnet.frames.FrameSet` -- the fast path for corpora that fit;
* streaming (:class:`~asr_distill.nnet.stream.FrameStream`): chunks of shuffled utterances read as training goes,
  so memory does not grow with the corpus.

:func:`asr_distill.nnet.stream.open_frames` picks one by size (``mode="auto"``) or as told.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from lhotse import CutSet

from ..data.arrays import check_frames
from ..data.features import CmvnStats, load_normalised
from .frames import FrameSet
from .parallel import shard_utterances

__all__ = ["FrameSource", "Utterance", "load_frame_set", "load_topk_targets", "frame_subset_mask", "shard_indices", "TopKTensors"]

log = logging.getLogger(__name__)

TopKTensors = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class Utterance:
    """One utterance's training arrays: CMVN-normalised features and, where the cuts carry them, labels and
    top-k soft targets."""

    id: str
    index: int  # position in the manifest: identifies the utterance independently of shuffling and sharding
    feats: np.ndarray  # (T, D) float32
    labels: Optional[np.ndarray] = None  # (T,) int64
    topk_values: Optional[np.ndarray] = None  # (T, k) float16
    topk_indices: Optional[np.ndarray] = None  # (T, k) int


@dataclass
class FrameSource:
    """One split's labelled cuts and how to read them.  ``topk``: also read the top-k soft-target fields;
    ``topk_meta``: their temperature, k, ensemble mean (checked against the loss that uses them)."""

    manifest: Path
    cmvn: Optional[CmvnStats]
    label_field: Optional[str] = "pdf_ids"
    topk: bool = False
    topk_meta: dict = field(default_factory=dict)
    _lengths: Optional[np.ndarray] = field(default=None, repr=False)

    def cuts(self) -> CutSet:
        """The manifest, read lazily (one cut at a time)."""
        if not Path(self.manifest).is_file():
            raise FileNotFoundError(f"{self.manifest} is missing: run the earlier stages first")
        return CutSet.from_jsonl_lazy(self.manifest)

    def lengths(self) -> np.ndarray:
        """Frames of every utterance, in manifest order (one pass over the manifest, then remembered)."""
        if self._lengths is None:
            self._lengths = np.fromiter((c.num_frames for c in self.cuts()), dtype=np.int64)
        return self._lengths

    @property
    def num_frames(self) -> int:
        return int(self.lengths().sum())

    def read(self, cut, index: int) -> Utterance:
        utt = Utterance(cut.id, index, load_normalised(cut, self.cmvn))
        if self.label_field is not None:
            utt.labels = cut.load_custom(self.label_field).astype(np.int64)
            check_frames(cut.id, self.label_field, len(utt.labels), len(utt.feats))
        if self.topk:
            utt.topk_values = cut.load_custom("topk_values")
            utt.topk_indices = cut.load_custom("topk_indices")
            check_frames(cut.id, "topk_values", len(utt.topk_values), len(utt.feats))
        return utt

    def utterances(self, keep: Optional[np.ndarray] = None) -> Iterator[Utterance]:
        """Every utterance (or those whose manifest index is in the sorted array ``keep``), in manifest order."""
        wanted = None if keep is None else set(int(i) for i in keep)
        for i, cut in enumerate(self.cuts()):
            if wanted is None or i in wanted:
                yield self.read(cut, i)


def frame_subset_mask(seed: int, utt_index: int, num_frames: int, fraction: float) -> Optional[np.ndarray]:
    """Which frames of utterance ``utt_index`` a ``fraction`` subset keeps (the paper's 3% experiment): a function
    of the seed and the utterance alone, so the resident and streaming paths, and any sharding, keep the same
    frames.  None = all."""
    if fraction >= 1.0:
        return None
    return np.random.default_rng([10_000 + seed, utt_index]).random(num_frames) < fraction


def shard_indices(source: FrameSource, shard: Optional[Tuple[int, int]]) -> np.ndarray:
    """Manifest indices of the utterances of ``shard = (rank, world)`` (all when None)."""
    lengths = source.lengths()
    return np.arange(len(lengths)) if shard is None else shard_utterances(lengths, *shard)


def load_frame_set(source: FrameSource, left: int, right: int, device="cpu",
                   shard: Optional[Tuple[int, int]] = None) -> Tuple[FrameSet, Optional[TopKTensors]]:
    """The split (or the shard's utterances, in manifest order) as one device-resident FrameSet, and its top-k
    soft targets as ``(values, indices)`` CPU tensors aligned with the FrameSet's frames when ``source.topk``."""
    utts = list(source.utterances(shard_indices(source, shard)))
    if not utts:
        raise ValueError(f"{source.manifest}: no utterances")
    labels = [u.labels for u in utts] if source.label_field is not None else None
    frames = FrameSet.from_arrays([u.feats for u in utts], labels, [u.id for u in utts], left, right, device,
                                  utt_index=[u.index for u in utts])
    topk = None
    if source.topk:
        topk = (torch.from_numpy(np.concatenate([u.topk_values for u in utts])),
                torch.from_numpy(np.concatenate([u.topk_indices for u in utts])))
    return frames, topk


def load_topk_targets(source: FrameSource, shard: Optional[Tuple[int, int]] = None
                      ) -> Tuple[List[str], TopKTensors]:
    """The top-k soft targets of the (shard's) utterances, in manifest order, without reading their features:
    ``(utterance ids, (values, indices))``, rows aligned with :func:`load_frame_set`'s frames of the same shard."""
    keep = set(int(i) for i in shard_indices(source, shard))
    ids, values, indices = [], [], []
    for i, cut in enumerate(source.cuts()):
        if i in keep:
            ids.append(cut.id)
            values.append(cut.load_custom("topk_values"))
            indices.append(cut.load_custom("topk_indices"))
            check_frames(cut.id, "topk_values", len(values[-1]), cut.num_frames)
    return ids, (torch.from_numpy(np.concatenate(values)), torch.from_numpy(np.concatenate(indices)))
