"""Streaming recognition with an exported model directory: audio arrives in chunks, words come out as it goes.

A model directory holds the end-to-end graph (``model.onnx``: whole waveform -> pseudo log-likelihoods) and its two
parts, ``frontend.onnx`` (waveform -> fbank) and ``network.onnx`` (normalised windows -> pseudo log-likelihoods).
:class:`StreamingRecognizer` runs the parts with the state a stream needs in between:

* fbank: a frame is computed once the samples its 25 ms window covers have arrived (the front end runs on the
  pending samples plus one frame of history, whose edge frames are discarded); the last frames, whose windows
  reach past the end, when the input is finished (reflected at the end, as in one call on the whole recording);
* CMVN: causal, ``online`` (the export's :func:`~asr_distill.deploy.export.online_mean`: the last ``cmvn_window``
  frames, completed by the global mean at the start) or ``global``; the centred ``sliding`` and the
  ``utterance`` modes need future audio and are refused;
* splicing: frame t goes through the network when frame t + right has arrived (``right``: the model's right
  context, e.g. 2 frames for a streaming student); at the end the last frame is repeated, as in training;
* decoding: the decoder's search advances over each new block of frames (:meth:`HclgDecoder.advance`); a partial
  hypothesis is the best path so far, the final one ends in a final state of HCLG.

The loglikes are those of ``model.onnx`` on the whole recording (to float rounding): the stream changes when words
appear, not which words.  Light on purpose: numpy, onnxruntime, kaldi-decoder, kaldifst.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Callable, Deque, Iterable, List, Optional

import numpy as np
import onnxruntime as ort

from .decoder import open_model_dir, words_of

__all__ = ["StreamingRecognizer", "OnlineNormaliser", "STREAMABLE_CMVN", "recognize_stream", "onnx_session"]

STREAMABLE_CMVN = ("online", "global")
FRAME_SHIFT, FRAME_LENGTH = 160, 400  # samples at 16 kHz: the front end's (the model card's features)


def onnx_session(path: Path, num_threads: int, memory_arena: bool = True) -> ort.InferenceSession:
    """A CPU onnxruntime session with ``num_threads`` intra-op threads; ``memory_arena=False`` for whole
    recordings (the arena would keep the largest piece's buffers for the session's life)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = memory_arena
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnlineNormaliser:
    """Causal CMVN, chunk by chunk: ``online`` keeps the last ``window`` frames' float64 sum (the export's
    ``online_mean``); ``global`` subtracts the training set's mean.  Both divide by the training set's std."""

    def __init__(self, mode: str, mean: np.ndarray, std: np.ndarray, window: int = 600, prior_frames: int = 200):
        if mode not in STREAMABLE_CMVN:
            raise ValueError(f"cmvn {mode!r} cannot stream (it needs future audio); export with --cmvn online")
        self.mode, self.window, self.prior_frames = mode, int(window), int(prior_frames)
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)
        self.history = np.zeros((0, len(self.mean)), np.float64)  # the last window - 1 raw frames
        self.seen = 0

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        f64 = feats.astype(np.float64)
        if self.mode == "global":
            return ((f64 - self.mean) / self.std).astype(np.float32)
        both = np.concatenate([self.history, f64])
        cums = np.concatenate([np.zeros((1, both.shape[1])), np.cumsum(both, axis=0)])
        h = len(self.history)
        end_global = self.seen + np.arange(1, len(f64) + 1)  # frame t's window ends after t (global index + 1)
        start_global = np.maximum(end_global - self.window, 0)
        offset = self.seen - h  # global index of both[0]
        count = (end_global - start_global).astype(np.float64)[:, None]
        prior = np.maximum(self.prior_frames - count, 0.0)
        mean = (cums[end_global - offset] - cums[start_global - offset] + prior * self.mean) / (count + prior)
        self.seen += len(f64)
        self.history = both[-(self.window - 1):] if self.window > 1 else both[:0]
        return ((f64 - mean) / self.std).astype(np.float32)


class StreamingRecognizer:
    """One stream at a time: :meth:`accept_waveform` pieces of 16 kHz mono float32 audio, :meth:`partial` for the
    words so far, :meth:`finish` for the final words; :meth:`reset` starts the next stream."""

    def __init__(self, model_dir, use_int8: bool = False, num_threads: int = 1):
        model_dir = Path(model_dir)
        card, self.decoder, self.id2word = open_model_dir(model_dir)
        self.card = card
        files = card.get("files", {})
        if "frontend" not in files or "cmvn_stats" not in card:
            raise ValueError(f"{model_dir} was exported without the streaming parts (frontend.onnx, network.onnx): "
                             "export it again with this version")
        stats = card["cmvn_stats"]
        self.normaliser_args = (card["cmvn"], np.asarray(stats["global_mean"]), np.asarray(stats["global_std"]),
                                int(card.get("cmvn_window", 600)), int(card.get("cmvn_prior_frames", 200)))
        OnlineNormaliser(*self.normaliser_args)  # refuses a mode that cannot stream, before anything loads
        self.left, self.right = int(card["context"]["left"]), int(card["context"]["right"])
        self.frontend = onnx_session(model_dir / files["frontend"], num_threads)
        network = files.get("network_int8") if use_int8 else files["network"]
        if network is None:
            raise FileNotFoundError(f"{model_dir}: no int8 network (exported with --no-int8)")
        self.network = onnx_session(model_dir / network, num_threads)
        self.reset()

    def reset(self) -> None:
        self.samples = np.zeros(0, np.float32)  # pending audio, from sample self.sample_offset on
        self.sample_offset = 0
        self.num_samples = 0
        self.fbank_done = 0  # frames whose fbank is computed (and normalised)
        self.normaliser = OnlineNormaliser(*self.normaliser_args)
        self.frames: Deque[np.ndarray] = deque()  # normalised frames still needed as context
        self.frames_offset = 0  # global index of self.frames[0]
        self.network_done = 0  # frames gone through the network and the decoder
        self.finished = False
        self.decoder.start()

    # -- input ----------------------------------------------------------------------------------------------
    def accept_waveform(self, samples: np.ndarray) -> None:
        if self.finished:
            raise RuntimeError("the stream is finished: reset() before the next one")
        samples = np.asarray(samples, np.float32).reshape(-1)
        self.samples = np.concatenate([self.samples, samples])
        self.num_samples += len(samples)
        # frame t's window ends at sample t * shift + (length + shift) / 2 (snip_edges=False)
        ready = max(0, (self.num_samples - (FRAME_LENGTH + FRAME_SHIFT) // 2) // FRAME_SHIFT + 1)
        self._fbank_until(ready, at_end=False)
        self._network(at_end=False)

    def finish(self) -> List[str]:
        """End of input: the last frames, then the final words."""
        if not self.finished:
            total = (self.num_samples + FRAME_SHIFT // 2) // FRAME_SHIFT
            self._fbank_until(total, at_end=True)
            self._network(at_end=True)
            self.finished = True
        return words_of(self.decoder.best_words(final=True), self.id2word)

    def partial(self) -> List[str]:
        return words_of(self.decoder.best_words(final=False), self.id2word)

    # -- stages ---------------------------------------------------------------------------------------------
    def _fbank_until(self, ready: int, at_end: bool) -> None:
        if ready <= self.fbank_done:
            return
        first = max(0, self.fbank_done - 1)  # one frame of history: the piece's first frame is an edge frame
        start = first * FRAME_SHIFT
        stop = self.num_samples if at_end else (ready - 1) * FRAME_SHIFT + (FRAME_LENGTH + FRAME_SHIFT) // 2
        piece = self.samples[start - self.sample_offset:stop - self.sample_offset]
        fbank = self.frontend.run(None, {"waveform": np.ascontiguousarray(piece)})[0]
        new = fbank[self.fbank_done - first:ready - first]
        if len(new) != ready - self.fbank_done:  # a bug, not bad input
            raise RuntimeError(f"front end gave {len(new)} frames for {ready - self.fbank_done}")
        self.fbank_done = ready
        keep_from = max(0, self.fbank_done - 1) * FRAME_SHIFT - (FRAME_LENGTH - FRAME_SHIFT) // 2
        keep_from = max(keep_from - FRAME_SHIFT, self.sample_offset, 0)
        self.samples = self.samples[keep_from - self.sample_offset:]
        self.sample_offset = keep_from
        for row in self.normaliser(new):
            self.frames.append(row)

    def _network(self, at_end: bool) -> None:
        available = self.fbank_done
        until = available if at_end else available - self.right  # frames whose right context has arrived
        if until <= self.network_done or available == 0:
            return
        t = np.arange(self.network_done, until)
        idx = np.clip(t[:, None] + np.arange(-self.left, self.right + 1)[None, :], 0, available - 1)
        stacked = np.stack(self.frames)  # frames self.frames_offset .. available - 1
        windows = stacked[idx - self.frames_offset]
        loglikes = self.network.run(None, {"windows": np.ascontiguousarray(windows)})[0]
        self.decoder.advance(loglikes)
        self.network_done = until
        # keep what the next frames' left context needs
        while self.frames and self.frames_offset < self.network_done - self.left:
            self.frames.popleft()
            self.frames_offset += 1


def recognize_stream(recognizer: StreamingRecognizer, chunks: Iterable[np.ndarray],
                     on_partial: Optional[Callable[[List[str]], None]] = None) -> List[str]:
    """Feed ``chunks`` to a fresh stream; ``on_partial(words)`` whenever the partial hypothesis changes; returns
    the final words."""
    recognizer.reset()
    last: List[str] = []
    for chunk in chunks:
        recognizer.accept_waveform(chunk)
        if on_partial is not None:
            words = recognizer.partial()
            if words != last:
                on_partial(words)
                last = words
    return recognizer.finish()
