"""Audio for the deployed path: a recording read on demand, mono, resampled to 16 kHz with a windowed-sinc
interpolator in numpy, so a long recording is never held whole; and a WAV or raw PCM stream read from a pipe.

Light on purpose (numpy, soundfile): the stand-alone transcriber imports it.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Tuple

import numpy as np
import soundfile as sf

__all__ = ["SAMPLE_RATE", "resample", "AudioFile", "load_audio", "pcm_stream"]

SAMPLE_RATE = 16000



def _resample_taps(sr_in: int, sr_out: int, zero_crossings: int) -> Tuple[float, int]:
    cutoff = 0.97 * min(1.0, sr_out / sr_in)  # in units of the input Nyquist frequency
    return cutoff, int(math.ceil(zero_crossings / cutoff))


def _resample_span(x: np.ndarray, x_start: int, n_in: int, sr_in: int, sr_out: int, m0: int, m1: int,
                   zero_crossings: int = 16, block: int = 32768) -> np.ndarray:
    """Output samples ``m0 .. m1 - 1`` of :func:`resample` of a signal of ``n_in`` samples, of which ``x`` holds
    samples ``x_start ..`` (at least every input sample those outputs' taps reach).  Each output sample is computed
    from the same taps and samples as in one call on the whole signal, so pieces join exactly."""
    cutoff, width = _resample_taps(sr_in, sr_out, zero_crossings)
    taps = np.arange(-width + 1, width + 1)
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(max(0, m1 - m0), dtype=np.float64)
    for start in range(m0, m1, block):
        m = np.arange(start, min(m1, start + block))
        t = m * (sr_in / sr_out)  # output sample positions in input samples
        idx = np.floor(t).astype(np.int64)[:, None] + taps[None, :]
        d = t[:, None] - idx
        h = cutoff * np.sinc(cutoff * d) * (0.5 + 0.5 * np.cos(np.pi * np.clip(d / width, -1.0, 1.0)))
        valid = (idx >= 0) & (idx < n_in)
        local = np.clip(idx - x_start, 0, max(0, len(x) - 1))
        out[m - m0] = (np.where(valid, x[local], 0.0) * h).sum(1)
    return out.astype(np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE, zero_crossings: int = 16,
             block: int = 32768) -> np.ndarray:
    """Band-limited (windowed-sinc, Hann window) resampling of a 1-D signal; low-pass at 0.97 x the lower Nyquist."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    n_out = int(len(x) * sr_out // sr_in)
    return _resample_span(x, 0, len(x), sr_in, sr_out, 0, n_out, zero_crossings, block)


class AudioFile:
    """A recording read on demand, mono, at ``sample_rate``: ``len(audio)`` samples, ``audio[a:b]`` reads (and
    resamples) only what samples ``a .. b - 1`` need, so a long recording is never held whole.  The samples are
    those :func:`load_audio` returns, piece for piece."""

    def __init__(self, path, sample_rate: int = SAMPLE_RATE, zero_crossings: int = 16):
        if not Path(path).is_file():
            raise FileNotFoundError("no such file")
        self.file = sf.SoundFile(str(path))
        self.sr_in, self.n_in = self.file.samplerate, self.file.frames
        if self.n_in <= 0:
            raise ValueError("audio has no samples")
        self.sample_rate, self.zero_crossings = sample_rate, zero_crossings
        self.num_samples = self.n_in if self.sr_in == sample_rate else int(self.n_in * sample_rate // self.sr_in)
        self._whole: Optional[np.ndarray] = None
        if not self.file.seekable():  # a stream libsndfile cannot seek in: read once, keep it
            self._whole = self._read_input(0, self.n_in)

    @property
    def duration(self) -> float:
        return self.n_in / self.sr_in

    def __len__(self) -> int:
        return self.num_samples

    def _read_input(self, a: int, b: int) -> np.ndarray:
        if self._whole is not None:
            return self._whole[a:b]
        self.file.seek(a)
        data = self.file.read(b - a, dtype="float32", always_2d=True)
        return data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)

    def __getitem__(self, piece: slice) -> np.ndarray:
        a, b, _ = piece.indices(self.num_samples)
        b = max(a, b)
        if self.sr_in == self.sample_rate:
            return np.ascontiguousarray(self._read_input(a, b), dtype=np.float32)
        _, width = _resample_taps(self.sr_in, self.sample_rate, self.zero_crossings)
        ratio = self.sr_in / self.sample_rate
        lo = max(0, int(np.floor(a * ratio)) - width + 1)
        hi = min(self.n_in, int(np.floor(max(a, b - 1) * ratio)) + width + 1)
        return _resample_span(self._read_input(lo, hi), lo, self.n_in, self.sr_in, self.sample_rate, a, b,
                              self.zero_crossings)

    def close(self) -> None:
        self.file.close()


def load_audio(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 mono in [-1, 1] at ``sample_rate`` (as Lhotse/soundfile read it for training)."""
    audio = AudioFile(path, sample_rate)
    try:
        return audio[0:len(audio)]
    finally:
        audio.close()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = stream.read(n - len(out))
        if not got:
            break
        out += got
    return out


def _wav_header(stream: BinaryIO, riff: bytes) -> Tuple[int, int, str]:
    """(sample_rate, channels, numpy dtype) of a WAV stream whose first 4 bytes ``riff`` were read; leaves the
    stream at the first sample.  Only PCM 16-bit and IEEE float 32-bit: what recorders write to a pipe."""
    head = riff + _read_exact(stream, 8)
    if len(head) < 12 or head[8:12] != b"WAVE":
        raise ValueError("stream starts with RIFF but is not WAVE")
    fmt = None
    while True:
        chunk = _read_exact(stream, 8)
        if len(chunk) < 8:
            raise ValueError("WAV stream ended before its data chunk")
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"data":
            break
        body = _read_exact(stream, size + (size & 1))
        if cid == b"fmt ":
            fmt = struct.unpack("<HHIIHH", body[:16])
    if fmt is None:
        raise ValueError("WAV stream has no fmt chunk before its data")
    tag, channels, rate, _, _, bits = fmt
    if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes are the tag
        tag = struct.unpack("<H", body[24:26])[0]
    if (tag, bits) == (1, 16):
        return rate, channels, "<i2"
    if (tag, bits) == (3, 32):
        return rate, channels, "<f4"
    raise ValueError(f"WAV stream format {tag} with {bits} bits: only 16-bit PCM and 32-bit float are read from a "
                     "pipe (convert it, e.g. sox - -b 16 -t wav -)")


def pcm_stream(stream: BinaryIO, chunk_samples: int, sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Mono float32 pieces of ``chunk_samples`` samples (the last one shorter) from a pipe, as they arrive: a WAV
    stream (16-bit PCM or 32-bit float, channels averaged), or, without a RIFF header, raw 16-bit little-endian
    mono PCM at ``sample_rate``.  A WAV stream at another rate is refused (resample it before the pipe)."""
    first = _read_exact(stream, 4)
    if first == b"RIFF":
        rate, channels, dtype = _wav_header(stream, first)
        pending = b""
    else:
        rate, channels, dtype, pending = sample_rate, 1, "<i2", first
    if rate != sample_rate:
        raise ValueError(f"the stream is at {rate} Hz; the model takes {sample_rate} Hz (resample it before the pipe, "
                         f"e.g. sox - -r {sample_rate} -t wav -)")
    width = np.dtype(dtype).itemsize * channels
    scale = 1.0 / 32768.0 if dtype == "<i2" else 1.0
    while True:
        data = pending + _read_exact(stream, chunk_samples * width - len(pending))
        whole = len(data) // width * width
        data, pending = data[:whole], data[whole:]
        if data:
            x = np.frombuffer(data, dtype=dtype).astype(np.float32).reshape(-1, channels) * np.float32(scale)
            yield x[:, 0] if channels == 1 else x.mean(axis=1)
        if whole < chunk_samples * width:  # the stream ended
            return
