"""Transcribe audio files with an exported model directory (``asr_distill.export``), without the training code.

Only numpy, soundfile, onnxruntime (or torch for the TorchScript module), kaldi_decoder, kaldifst and the standard
library are imported (and, of this package, only the light :mod:`asr_distill.fst` and
:mod:`asr_distill.deploy.decoder`): this module runs wherever those wheels install, with a model directory copied
anywhere.

    python -m asr_distill.deploy.transcribe --model-dir DIR [--int8] [--backend onnx|torchscript] AUDIO...
    asr-distill transcribe --model-dir DIR [--int8] AUDIO...

prints ``utt-id<TAB>words`` per file (utt-id = the file's stem, or its path where two inputs share a stem).  A
file that cannot be read or decoded is reported
on stderr with its name; the others are still transcribed and the exit status is 1 at the end.

Audio: any format libsndfile reads (.wav, .flac, .sph, ...), any sample rate (resampled to 16 kHz with a windowed-sinc
interpolator in numpy), several channels averaged to mono.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

import numpy as np
import onnxruntime as ort
import soundfile as sf

from ..fst import invert_symbols, read_symbols, read_tid2pdf
from .decoder import HclgDecoder, words_of

__all__ = ["load_audio", "resample", "AudioFile", "AcousticModel", "iter_loglikes", "chunked_loglikes", "Transcriber",
           "transcribe", "main"]

SAMPLE_RATE = 16000


# ------------------------------------------------------------------------------------------------------------------
# Audio

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


# ------------------------------------------------------------------------------------------------------------------
# Acoustic model: waveform -> pseudo log-likelihoods

class AcousticModel:
    """The exported network, run by onnxruntime (``model.onnx`` / ``model.int8.onnx``) or TorchScript
    (``model.pt``)."""

    def __init__(self, model_dir, use_int8: bool = False, backend: str = "onnx", num_threads: int = 1):
        model_dir = Path(model_dir)
        self.backend = backend
        if backend == "onnx":
            path = model_dir / ("model.int8.onnx" if use_int8 else "model.onnx")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
            # no memory arena: it keeps the largest piece's buffers for the session's life
            opts.enable_cpu_mem_arena = False
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
        elif backend == "torchscript":
            if use_int8:
                raise ValueError("int8 is only exported as ONNX (model.int8.onnx); use the onnx backend")
            import torch

            torch.set_num_threads(num_threads)
            self.module = torch.jit.load(str(model_dir / "model.pt"), map_location="cpu").eval()
        else:
            raise ValueError(f"backend must be onnx or torchscript, not {backend!r}")

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        if self.backend == "onnx":
            return self.session.run(None, {self.input_name: wave})[0]
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(wave)).numpy()


def iter_loglikes(model, wave, chunk_frames: int, margin_frames: int, frame_shift: int = 160,
                  frame_length: int = 400) -> Iterator[np.ndarray]:
    """``model(wave)`` computed and yielded piece by piece, so memory is bounded by a piece, not by the recording:
    each piece of ``chunk_frames`` frames is run with ``margin_frames`` frames of audio on either side and only its
    own frames are kept.  Exact wherever the model's frames depend only on nearby samples (fbank, global CMVN, a
    sliding CMVN window inside the margin, splicing of fewer than ``margin_frames - 1`` frames each side): a kept
    frame sees the very samples and neighbours it sees in one call; only the discarded margins see a piece's edges.
    ``wave``: an array, or an :class:`AudioFile` (read piece by piece)."""
    n = len(wave)
    total = (n + frame_shift // 2) // frame_shift
    if total <= chunk_frames + 2 * margin_frames:
        yield model(wave[0:n])
        return
    for start in range(0, total, chunk_frames):
        end = min(total, start + chunk_frames)
        a, b = max(0, start - margin_frames), min(total, end + margin_frames)
        piece = wave[a * frame_shift:min(n, b * frame_shift + frame_length)]
        yield model(piece)[start - a:end - a]


def chunked_loglikes(model, wave, chunk_frames: int, margin_frames: int, frame_shift: int = 160,
                     frame_length: int = 400) -> np.ndarray:
    """:func:`iter_loglikes`' pieces joined: the frames of one whole ``model(wave)`` call."""
    return np.concatenate(list(iter_loglikes(model, wave, chunk_frames, margin_frames, frame_shift, frame_length)))


# ------------------------------------------------------------------------------------------------------------------

class Transcriber:
    """Audio file -> words with an exported model directory.  Recordings are read, run through the network and
    decoded piece by piece (``CHUNK_FRAMES``), so memory does not grow with their length, except with a model
    exported with per-utterance CMVN, whose statistics need the whole recording at once.  ``max_duration``
    (seconds): longer recordings are refused, naming their length."""

    # Pieces of this many frames (1 minute) go through the network: its activations are the largest arrays.
    CHUNK_FRAMES = 6_000

    def __init__(self, model_dir, use_int8: bool = False, backend: str = "onnx", num_threads: int = 1,
                 max_duration: Optional[float] = None):
        self.model_dir = Path(model_dir)
        card_path = self.model_dir / "model_card.json"
        if not card_path.is_file():
            raise FileNotFoundError(f"{card_path}: missing (is {model_dir} a model directory written by "
                                    f"'asr-distill export'?)")
        self.card = json.loads(card_path.read_text())
        self.sample_rate = int(self.card.get("input", {}).get("sample_rate", SAMPLE_RATE))
        self.max_duration = max_duration
        self.model = AcousticModel(self.model_dir, use_int8, backend, num_threads)
        tid2pdf = read_tid2pdf(self.model_dir / "tid2pdf.txt")
        self.decoder = HclgDecoder.from_settings(self.model_dir / "HCLG.fst", tid2pdf, self.card["decoding"])
        self.id2word = invert_symbols(read_symbols(self.model_dir / "words.txt"))

    def loglike_pieces(self, path) -> Iterator[np.ndarray]:
        """The recording's pseudo log-likelihoods, piece after piece."""
        audio = AudioFile(path, self.sample_rate)
        try:
            if self.max_duration is not None and audio.duration > self.max_duration:
                raise ValueError(f"{audio.duration:.1f} s of audio is longer than --max-duration "
                                 f"{self.max_duration:g} s")
            cmvn = self.card.get("cmvn")
            if cmvn not in ("global", "sliding"):  # per-utterance statistics need the whole recording at once
                yield self.model(audio[0:len(audio)])
                return
            context = self.card.get("context", {})
            margin = max(int(context.get("left", 0)), int(context.get("right", 0))) + 2
            if cmvn == "sliding":  # a kept frame's window (shifted inward at the recording's edges) in its piece
                margin += int(self.card["cmvn_window"])
            yield from iter_loglikes(self.model, audio, self.CHUNK_FRAMES, margin)
        finally:
            audio.close()

    def loglikes(self, path) -> np.ndarray:
        return np.concatenate(list(self.loglike_pieces(path)))

    def __call__(self, path) -> List[str]:
        return words_of(self.decoder.decode_pieces(self.loglike_pieces(path)), self.id2word)


def transcribe(model_dir, audio_paths: Sequence, use_int8: bool = False, backend: str = "onnx",
               out: Optional[TextIO] = None, err: Optional[TextIO] = None,
               num_threads: int = 1, max_duration: Optional[float] = None
               ) -> Tuple[Dict[str, List[str]], List[Tuple[str, str]]]:
    """Transcribe each file, printing ``utt-id<TAB>words`` to ``out`` (stdout) as it goes.

    Returns (utt-id -> words for the files that worked, [(path, error message)] for those that did not); every
    failure is also reported on ``err`` (stderr) naming the file."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    tr = Transcriber(model_dir, use_int8, backend, num_threads, max_duration)
    hyps: Dict[str, List[str]] = {}
    failed: List[Tuple[str, str]] = []
    stems = [Path(p).stem for p in audio_paths]
    for path, stem in zip(audio_paths, stems):
        try:
            words = tr(path)
        except Exception as e:  # unreadable / corrupt / empty audio: report it, go on with the next file
            msg = f"{type(e).__name__}: {str(e).strip()}"
            print(f"transcribe: error: {path}: {msg}", file=err, flush=True)
            failed.append((str(path), msg))
            continue
        utt = stem if stems.count(stem) == 1 else str(path)  # good.wav and good.flac: name each by its path
        hyps[utt] = words
        print(f"{utt}\t{' '.join(words)}", file=out, flush=True)
    return hyps, failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--int8", action="store_true", help="use model.int8.onnx")
    p.add_argument("--backend", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--max-duration", type=float, default=None,
                   help="refuse (naming them) recordings longer than this many seconds [default: no limit]")
    p.add_argument("audio", nargs="+")
    a = p.parse_args(argv)
    if a.max_duration is not None and a.max_duration <= 0:
        p.error("--max-duration must be positive")
    try:
        _, failed = transcribe(a.model_dir, a.audio, a.int8, a.backend, num_threads=a.num_threads,
                               max_duration=a.max_duration)
    except (FileNotFoundError, ValueError) as e:
        print(f"transcribe: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a damaged model file: onnxruntime / torch / kaldifst raise their own types
        print(f"transcribe: error: cannot load the model directory {a.model_dir} ({type(e).__name__}: "
              f"{str(e).strip()[:300]})", file=sys.stderr)
        return 2
    if failed:
        print(f"transcribe: {len(failed)} of {len(a.audio)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
