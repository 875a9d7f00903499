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
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

import numpy as np
import onnxruntime as ort
import soundfile as sf

from ..fst import invert_symbols, read_symbols, read_tid2pdf
from .decoder import HclgDecoder, words_of

__all__ = ["load_audio", "resample", "AcousticModel", "chunked_loglikes", "Transcriber", "transcribe", "main"]

SAMPLE_RATE = 16000


# ------------------------------------------------------------------------------------------------------------------
# Audio

def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE, zero_crossings: int = 16,
             block: int = 32768) -> np.ndarray:
    """Band-limited (windowed-sinc, Hann window) resampling of a 1-D signal; low-pass at 0.97 x the lower Nyquist."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    x = np.asarray(x, dtype=np.float64)
    n_out = int(len(x) * sr_out // sr_in)
    cutoff = 0.97 * min(1.0, sr_out / sr_in)  # in units of the input Nyquist frequency
    width = int(math.ceil(zero_crossings / cutoff))
    taps = np.arange(-width + 1, width + 1)
    out = np.empty(n_out, dtype=np.float64)
    for start in range(0, n_out, block):
        m = np.arange(start, min(n_out, start + block))
        t = m * (sr_in / sr_out)  # output sample positions in input samples
        idx = np.floor(t).astype(np.int64)[:, None] + taps[None, :]
        d = t[:, None] - idx
        h = cutoff * np.sinc(cutoff * d) * (0.5 + 0.5 * np.cos(np.pi * np.clip(d / width, -1.0, 1.0)))
        valid = (idx >= 0) & (idx < len(x))
        out[m] = (np.where(valid, x[np.clip(idx, 0, max(0, len(x) - 1))], 0.0) * h).sum(1)
    return out.astype(np.float32)


def load_audio(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 mono in [-1, 1] at ``sample_rate`` (as Lhotse/soundfile read it for training)."""
    if not Path(path).is_file():
        raise FileNotFoundError("no such file")
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if audio.shape[0] == 0:
        raise ValueError("audio has no samples")
    audio = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)
    if sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


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


def chunked_loglikes(model, wave: np.ndarray, chunk_frames: int, margin_frames: int, frame_shift: int = 160,
                     frame_length: int = 400) -> np.ndarray:
    """``model(wave)`` computed piece by piece, so memory is bounded by a piece, not by the recording: each piece of
    ``chunk_frames`` frames is run with ``margin_frames`` frames of audio on either side and only its own frames are
    kept.  Exact wherever the model's frames depend only on nearby samples (fbank, global CMVN, splicing of fewer
    than ``margin_frames - 1`` frames each side): a kept frame sees the very samples and neighbours it sees in one
    call; only the discarded margins see a piece's edges."""
    n = len(wave)
    total = (n + frame_shift // 2) // frame_shift
    if total <= chunk_frames + 2 * margin_frames:
        return model(wave)
    out = []
    for start in range(0, total, chunk_frames):
        end = min(total, start + chunk_frames)
        a, b = max(0, start - margin_frames), min(total, end + margin_frames)
        piece = wave[a * frame_shift:min(n, b * frame_shift + frame_length)]
        out.append(model(piece)[start - a:end - a])
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------------------------

class Transcriber:
    # Long recordings go through the network in pieces of this many frames (5 minutes) where that is exact.
    CHUNK_FRAMES = 30_000

    def __init__(self, model_dir, use_int8: bool = False, backend: str = "onnx", num_threads: int = 1):
        self.model_dir = Path(model_dir)
        card_path = self.model_dir / "model_card.json"
        if not card_path.is_file():
            raise FileNotFoundError(f"{card_path}: missing (is {model_dir} a model directory written by "
                                    f"'asr-distill export'?)")
        self.card = json.loads(card_path.read_text())
        self.sample_rate = int(self.card.get("input", {}).get("sample_rate", SAMPLE_RATE))
        self.model = AcousticModel(self.model_dir, use_int8, backend, num_threads)
        tid2pdf = read_tid2pdf(self.model_dir / "tid2pdf.txt")
        self.decoder = HclgDecoder.from_settings(self.model_dir / "HCLG.fst", tid2pdf, self.card["decoding"])
        self.id2word = invert_symbols(read_symbols(self.model_dir / "words.txt"))

    def loglikes(self, path) -> np.ndarray:
        wave = load_audio(path, self.sample_rate)
        cmvn = self.card.get("cmvn")
        if cmvn not in ("global", "sliding"):  # per-utterance statistics need the whole recording at once
            return self.model(wave)
        context = self.card.get("context", {})
        margin = max(int(context.get("left", 0)), int(context.get("right", 0))) + 2
        if cmvn == "sliding":  # a kept frame's window (shifted up to a half inward at the recording's edges) in its piece
            margin += int(self.card["cmvn_window"])
        return chunked_loglikes(self.model, wave, self.CHUNK_FRAMES, margin)

    def __call__(self, path) -> List[str]:
        return words_of(self.decoder.decode(self.loglikes(path)), self.id2word)


def transcribe(model_dir, audio_paths: Sequence, use_int8: bool = False, backend: str = "onnx",
               out: Optional[TextIO] = None, err: Optional[TextIO] = None,
               num_threads: int = 1) -> Tuple[Dict[str, List[str]], List[Tuple[str, str]]]:
    """Transcribe each file, printing ``utt-id<TAB>words`` to ``out`` (stdout) as it goes.

    Returns (utt-id -> words for the files that worked, [(path, error message)] for those that did not); every
    failure is also reported on ``err`` (stderr) naming the file."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    tr = Transcriber(model_dir, use_int8, backend, num_threads)
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
    p.add_argument("audio", nargs="+")
    a = p.parse_args(argv)
    try:
        _, failed = transcribe(a.model_dir, a.audio, a.int8, a.backend, num_threads=a.num_threads)
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
