"""A frame data path that streams: training reads features, labels and soft targets chunk by chunk from the cuts,
so memory does not grow with the corpus (the resident path, :class:`~asr_distill.nnet.frames.FrameSet`, holds a
whole split on the device).

Per epoch: the manifest is read lazily in order, the (shard's) utterances pass a bounded shuffle buffer, and
consecutive shuffled utterances are read into chunks of about ``chunk_frames`` frames; each chunk becomes a small
device-resident FrameSet whose frames are shuffled and cut into batches (a chunk's remainder joins the next
chunk's first batch, so only an epoch's last batch is short).  A background thread reads the next chunk while the
current one trains.  Memory: the shuffle buffer's cut objects plus at most three chunks, whatever the corpus size.

The shuffle is reproducible: the epoch's generator fixes the utterance order and the frame order in each chunk.  It
is not the resident path's global frame permutation, so the two paths train to models that agree within seed noise,
not bit for bit; both see exactly the same frames and labels (``tests/test_stream.py``).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .frame_data import FrameSource, TopKTensors, Utterance, load_frame_set, shard_indices
from .frames import FrameSet

__all__ = ["FrameStream", "open_frames", "FRAME_MODES", "resident_bytes_per_frame"]

log = logging.getLogger(__name__)

FRAME_MODES = ("auto", "resident", "stream")
KeepFn = Callable[[int, int], Optional[np.ndarray]]


class FrameStream:
    """The frames of ``source`` (or of ``shard = (rank, world)``'s utterances), read chunk by chunk."""

    def __init__(self, source: FrameSource, left: int, right: int, device="cpu",
                 shard: Optional[Tuple[int, int]] = None, chunk_frames: int = 1 << 17, shuffle_buffer: int = 10_000,
                 prefetch: bool = True):
        self.source, self.left, self.right = source, left, right
        self.device = torch.device(device)
        self.keep = shard_indices(source, shard)
        self._wanted = set(int(i) for i in self.keep)
        self.lengths = source.lengths()[self.keep]
        self.chunk_frames, self.shuffle_buffer, self.prefetch = int(chunk_frames), int(shuffle_buffer), prefetch

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def count_frames(self, keep: Optional[KeepFn] = None) -> int:
        """Frames the epoch trains on: all, or those ``keep(utt_index, num_frames)`` selects."""
        if keep is None:
            return self.num_frames
        masks = (keep(int(i), int(n)) for i, n in zip(self.keep, self.lengths))
        return sum(int(n) if m is None else int(m.sum()) for m, n in zip(masks, self.lengths))

    # -- utterance order ------------------------------------------------------------------------------------
    def _indexed_cuts(self) -> Iterator[Tuple[int, object]]:
        for i, cut in enumerate(self.source.cuts()):
            if i in self._wanted:
                yield i, cut

    def _shuffled(self, rng: np.random.Generator) -> Iterator[Tuple[int, object]]:
        """The shard's cuts through a bounded shuffle buffer (each emitted item is a uniform pick of the buffer)."""
        buffer: List[Tuple[int, object]] = []
        for item in self._indexed_cuts():
            buffer.append(item)
            if len(buffer) >= self.shuffle_buffer:
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()
        for j in rng.permutation(len(buffer)):
            yield buffer[j]

    def _chunks(self, cuts: Iterator[Tuple[int, object]]) -> Iterator[Tuple[FrameSet, Optional[TopKTensors]]]:
        utts: List[Utterance] = []
        frames = 0
        for index, cut in cuts:
            utts.append(self.source.read(cut, index))
            frames += len(utts[-1].feats)
            if frames >= self.chunk_frames:
                yield self._chunk(utts)
                utts, frames = [], 0
        if utts:
            yield self._chunk(utts)

    def _chunk(self, utts: List[Utterance]) -> Tuple[FrameSet, Optional[TopKTensors]]:
        labels = [u.labels for u in utts] if self.source.label_field is not None else None
        fs = FrameSet.from_arrays([u.feats for u in utts], labels, [u.id for u in utts], self.left, self.right,
                                  self.device, utt_index=[u.index for u in utts])
        topk = None
        if self.source.topk:
            topk = (torch.from_numpy(np.concatenate([u.topk_values for u in utts])).to(self.device),
                    torch.from_numpy(np.concatenate([u.topk_indices for u in utts])).to(self.device))
        return fs, topk

    def _read(self, cuts) -> Iterator[Tuple[FrameSet, Optional[TopKTensors]]]:
        chunks = self._chunks(cuts)
        return _prefetched(chunks) if self.prefetch else chunks

    # -- the batch-source interface shared with FrameSet ----------------------------------------------------
    def train_batches(self, batch_size: int, generator: torch.Generator,
                      keep: Optional[KeepFn] = None) -> Iterator[Dict[str, torch.Tensor]]:
        """Shuffled batches ``{"x", "y"[, "topk"]}``; the epoch's order comes from ``generator`` alone."""
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        pending: List[Dict[str, torch.Tensor]] = []
        have = 0
        for fs, topk in self._read(self._shuffled(rng)):
            pool = torch.arange(fs.num_frames) if keep is None else fs.subset(keep)
            if pool is None:
                pool = torch.arange(fs.num_frames)
            perm = pool[torch.randperm(len(pool), generator=generator)].to(self.device)
            start = 0
            while start < len(perm):
                take = perm[start:start + batch_size - have]
                start += len(take)
                pending.append(_gather(fs, topk, take))
                have += len(take)
                if have == batch_size:
                    yield _concat(pending)
                    pending, have = [], 0
        if pending:
            yield _concat(pending)

    def eval_batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """``(windows, labels)`` of every frame, in manifest order."""
        for fs, _ in self._read(self._indexed_cuts()):
            yield from fs.eval_batches(batch_size)

    def utterances(self) -> Iterator[Tuple[str, torch.Tensor, Optional[torch.Tensor]]]:
        """``(utterance id, windows, labels)`` per utterance, in manifest order."""
        for fs, _ in self._read(self._indexed_cuts()):
            yield from fs.utterances()


def _gather(fs: FrameSet, topk: Optional[TopKTensors], idx: torch.Tensor) -> Dict[str, torch.Tensor]:
    x, y = fs.batch(idx)
    out = {"x": x}
    if y is not None:
        out["y"] = y
    if topk is not None:
        out["topk"] = (topk[0][idx], topk[1][idx])
    return out


def _concat(parts: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    out = {}
    for key in parts[0]:
        if key == "topk":
            out[key] = tuple(torch.cat([p[key][i] for p in parts]) for i in range(2))
        else:
            out[key] = torch.cat([p[key] for p in parts])
    return out


_DONE = object()


def _prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """``items`` produced one ahead by a background thread (reading and decompressing the next chunk overlaps the
    current chunk's training); exceptions reach the consumer; closing the generator stops the thread."""
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="frame-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def resident_bytes_per_frame(feat_dim: int, k: int = 0) -> int:
    """Device memory of one resident frame: float32 features, int64 label and utterance bounds, top-k targets."""
    return 4 * feat_dim + 8 * 3 + 4 * k


def _memory_budget(device: torch.device) -> int:
    """A quarter of the device's free memory (CUDA) or of the machine's physical memory (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def open_frames(source: FrameSource, left: int, right: int, device="cpu", shard: Optional[Tuple[int, int]] = None,
                mode: str = "auto", feat_dim: int = 40, **stream_options):
    """``(frames, topk)``: a resident FrameSet (with its top-k targets as tensors when ``source.topk``) or a
    :class:`FrameStream` (which carries the top-k targets in its batches; ``topk`` is then None).  ``auto`` keeps
    the split resident when it needs under a quarter of the device's free memory (the CPU's physical memory)."""
    if mode not in FRAME_MODES:
        raise ValueError(f"frame mode must be one of {FRAME_MODES}, not {mode!r}")
    device = torch.device(device)
    if mode == "auto":
        need = source.num_frames * resident_bytes_per_frame(feat_dim, int(source.topk_meta.get("k", 0)))
        mode = "resident" if need <= _memory_budget(device) else "stream"
        log.info("%s: %d frames, %.0f MB resident: %s path", Path(source.manifest).name, source.num_frames,
                 need / 2**20, mode)
    if mode == "resident":
        return load_frame_set(source, left, right, device, shard)
    return FrameStream(source, left, right, device, shard, **stream_options), None
