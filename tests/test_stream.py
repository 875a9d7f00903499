"""The streaming frame path (asr_distill.nnet.stream) against the resident one, on the slice's real cuts: the same
frames and labels, the same subsets and shards, bounded chunks, reproducible order, and errors that reach the
trainer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asr_distill.nnet.frame_data import frame_subset_mask, load_frame_set
from asr_distill.nnet.stream import FrameStream, open_frames
from conftest import load_frames

LEFT = RIGHT = 2


def _rows(x: torch.Tensor, y: torch.Tensor) -> list:
    """Each (window, label) as bytes, sorted: a multiset to compare two passes over the same frames."""
    return sorted(xi.numpy().tobytes() + int(yi).to_bytes(4, "little") for xi, yi in zip(x, y))


def _epoch(batches) -> tuple:
    xs, ys, sizes = [], [], []
    for b in batches:
        xs.append(b["x"])
        ys.append(b["y"])
        sizes.append(len(b["y"]))
    return torch.cat(xs), torch.cat(ys), sizes


@pytest.fixture(scope="module")
def resident(exp):
    return load_frames(exp, "train", LEFT, RIGHT)


def test_stream_sees_the_resident_frames_and_labels(exp, resident):
    stream = FrameStream(exp.frame_source("train"), LEFT, RIGHT, chunk_frames=4000, shuffle_buffer=7)
    assert stream.num_frames == resident.num_frames
    x, y, sizes = _epoch(stream.train_batches(256, torch.Generator().manual_seed(1)))
    # every batch full but the epoch's last: chunk remainders join the next chunk's first batch
    assert sizes[:-1] == [256] * (len(sizes) - 1) and 0 < sizes[-1] <= 256
    assert len(sizes) == -(-resident.num_frames // 256)
    rx, ry = resident.batch(torch.arange(resident.num_frames))
    assert _rows(x, y) == _rows(rx, ry)
    # in order, for evaluation: the very windows and labels of the resident set, utterance by utterance
    ex = torch.cat([xb for xb, _ in stream.eval_batches(1000)])
    assert torch.equal(ex, rx)
    utts = list(stream.utterances())
    assert [u for u, _, _ in utts] == resident.utt_ids
    assert torch.equal(torch.cat([yb for _, _, yb in utts]), ry)


def test_stream_order_is_shuffled_and_reproducible(exp):
    stream = FrameStream(exp.frame_source("train"), LEFT, RIGHT, chunk_frames=4000)
    a = _epoch(stream.train_batches(256, torch.Generator().manual_seed(3)))[1]
    b = _epoch(stream.train_batches(256, torch.Generator().manual_seed(3)))[1]
    c = _epoch(stream.train_batches(256, torch.Generator().manual_seed(4)))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # shuffled across utterances: the first batch holds frames of many utterances, not one
    first = next(stream.train_batches(256, torch.Generator().manual_seed(3)))
    assert len({bytes(w[LEFT].numpy().tobytes()) for w in first["x"]}) > 200


def test_frame_subsets_and_shards_agree_across_paths(exp, resident):
    source = exp.frame_source("train")

    def keep(i, n):
        return frame_subset_mask(5, i, n, 0.1)

    stream = FrameStream(source, LEFT, RIGHT, chunk_frames=3000)
    n_res, n_stream = resident.count_frames(keep), stream.count_frames(keep)
    assert n_res == n_stream and 0.05 * resident.num_frames < n_res < 0.15 * resident.num_frames
    x, y, _ = _epoch(stream.train_batches(128, torch.Generator().manual_seed(0), keep))
    idx = torch.cat([b["frame_index"] for b in resident.train_batches(128, torch.Generator().manual_seed(0), keep)])
    assert _rows(x, y) == _rows(*resident.batch(idx))
    # the shards of 2 ranks: disjoint, covering, the same utterances in both paths
    shards = [load_frame_set(source, LEFT, RIGHT, shard=(r, 2))[0] for r in range(2)]
    streams = [FrameStream(source, LEFT, RIGHT, shard=(r, 2)) for r in range(2)]
    for fs, st in zip(shards, streams):
        assert st.num_frames == fs.num_frames
        assert [u for u, _, _ in st.utterances()] == fs.utt_ids
    assert sorted(shards[0].utt_ids + shards[1].utt_ids) == sorted(resident.utt_ids)


def test_open_frames_chooses_by_size_and_errors_reach_the_consumer(exp, tmp_path, monkeypatch):
    source = exp.frame_source("dev")
    frames, topk = open_frames(source, LEFT, RIGHT, mode="auto")
    assert frames.__class__.__name__ == "FrameSet" and topk is None  # the slice fits
    monkeypatch.setattr("asr_distill.nnet.stream._memory_budget", lambda device: 1000)
    frames, _ = open_frames(source, LEFT, RIGHT, mode="auto")
    assert isinstance(frames, FrameStream)
    with pytest.raises(ValueError, match="frame mode"):
        open_frames(source, LEFT, RIGHT, mode="fast")
    # a cut whose labels do not fit its features: the reader thread's error names the utterance
    broken = FrameStream(source, LEFT, RIGHT)
    cut_id = next(iter(source.cuts())).id
    real_read = source.read

    def bad_read(cut, index):
        utt = real_read(cut, index)
        if cut.id == cut_id:
            raise ValueError(f"utterance {cut.id}: pdf_ids has 1 frames, the features {len(utt.feats)}")
        return utt

    monkeypatch.setattr(source, "read", bad_read)
    with pytest.raises(ValueError, match=cut_id):
        list(broken.train_batches(64, torch.Generator().manual_seed(0)))


def test_subset_mask_depends_on_seed_and_utterance_only():
    a = frame_subset_mask(1, 7, 1000, 0.03)
    assert np.array_equal(a, frame_subset_mask(1, 7, 1000, 0.03))
    assert not np.array_equal(a, frame_subset_mask(2, 7, 1000, 0.03))
    assert not np.array_equal(a, frame_subset_mask(1, 8, 1000, 0.03))
    assert frame_subset_mask(1, 7, 1000, 1.0) is None
