"""Transcribe audio files with an exported model directory (``asr_distill.export``), without the training code.

Only numpy, soundfile, onnxruntime (or torch for the TorchScript module), kaldi_decoder, kaldifst and the standard
library are imported (and, of this package, only the light :mod:`asr_distill.fst`, :mod:`asr_distill.deploy.audio`,
:mod:`asr_distill.deploy.decoder` and :mod:`asr_distill.deploy.streaming`): this module runs wherever those wheels install, with a model directory copied
anywhere.

    python -m asr_distill.deploy.transcribe --model-dir DIR [--int8] [--backend onnx|torchscript] AUDIO...
    asr-distill transcribe --model-dir DIR [--int8] AUDIO...
    asr-distill transcribe --model-dir DIR --stream [--chunk-ms 100] [--partial] AUDIO... | -

prints ``utt-id<TAB>words`` per file (utt-id = the file's stem, or its path where two inputs share a stem).  A
file that cannot be read or decoded is reported
on stderr with its name; the others are still transcribed and the exit status is 1 at the end.

``--stream`` (:mod:`asr_distill.deploy.streaming`) feeds each file to the recogniser in chunks of ``--chunk-ms`` as
if it arrived live, or reads ``-`` (standard input: a WAV stream or raw 16-bit 16 kHz mono PCM) as it arrives;
``--partial`` prints the changing partial hypotheses to stderr (``utt-id<TAB>partial<TAB>words``).  It needs a
model exported with a causal CMVN (``--cmvn online`` or ``global``).

Audio: any format libsndfile reads (.wav, .flac, .sph, ...), any sample rate (resampled to 16 kHz with a windowed-sinc
interpolator in numpy), several channels averaged to mono.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from .audio import SAMPLE_RATE, AudioFile, load_audio, pcm_stream, resample
from .decoder import open_model_dir, words_of
from .streaming import StreamingRecognizer, onnx_session, recognize_stream

__all__ = ["load_audio", "resample", "AudioFile", "AcousticModel", "iter_loglikes", "chunked_loglikes", "Transcriber",
           "stream_chunks", "transcribe", "main"]


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
            self.session = onnx_session(path, num_threads, memory_arena=False)  # whole recordings: no arena
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
                 max_duration: Optional[float] = None, decoder: str = "kaldi-decoder"):
        self.model_dir = Path(model_dir)
        self.card, self.decoder, self.id2word = open_model_dir(self.model_dir)
        self.k2 = None
        if decoder == "k2":  # decodes a whole recording at once (no piece-by-piece search)
            from ..decode.backend import DecodingConfig, get_backend
            from ..fst import read_tid2pdf
            keys = ("acoustic_scale", "word_penalty", "beam", "max_active", "min_active")
            config = DecodingConfig(backend="k2", **{k: v for k, v in self.card["decoding"].items() if k in keys})
            self.k2 = get_backend("k2")(self.model_dir / "HCLG.fst", read_tid2pdf(self.model_dir / "tid2pdf.txt"),
                                        config)
        elif decoder != "kaldi-decoder":
            raise ValueError(f"decoder must be kaldi-decoder or k2, not {decoder!r}")
        self.sample_rate = int(self.card.get("input", {}).get("sample_rate", SAMPLE_RATE))
        self.max_duration = max_duration
        self.model = AcousticModel(self.model_dir, use_int8, backend, num_threads)

    def loglike_pieces(self, path) -> Iterator[np.ndarray]:
        """The recording's pseudo log-likelihoods, piece after piece."""
        audio = AudioFile(path, self.sample_rate)
        try:
            check_duration(audio, self.max_duration)
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
        if self.k2 is not None:
            return words_of(self.k2.decode(self.loglikes(path)), self.id2word)
        return words_of(self.decoder.decode_pieces(self.loglike_pieces(path)), self.id2word)


def check_duration(audio: AudioFile, max_duration: Optional[float]) -> None:
    if max_duration is not None and audio.duration > max_duration:
        raise ValueError(f"{audio.duration:.1f} s of audio is longer than --max-duration {max_duration:g} s")


def stream_chunks(path, chunk_samples: int, max_duration: Optional[float] = None,
                  stdin=None) -> Iterator[np.ndarray]:
    """A file's audio in pieces of ``chunk_samples`` (16 kHz mono), read as they are needed; ``-``: standard
    input (:func:`asr_distill.deploy.audio.pcm_stream`), as it arrives."""
    if str(path) == "-":
        yield from pcm_stream(stdin if stdin is not None else sys.stdin.buffer, chunk_samples)
        return
    audio = AudioFile(path, SAMPLE_RATE)
    try:
        check_duration(audio, max_duration)
        for a in range(0, len(audio), chunk_samples):
            yield audio[a:a + chunk_samples]
    finally:
        audio.close()


def transcribe(model_dir, audio_paths: Sequence, use_int8: bool = False, backend: str = "onnx",
               out: Optional[TextIO] = None, err: Optional[TextIO] = None,
               num_threads: int = 1, max_duration: Optional[float] = None, stream: bool = False,
               chunk_ms: float = 100.0, partial: bool = False, decoder: str = "kaldi-decoder"
               ) -> Tuple[Dict[str, List[str]], List[Tuple[str, str]]]:
    """Transcribe each file, printing ``utt-id<TAB>words`` to ``out`` (stdout) as it goes; ``stream``: through
    the :class:`~asr_distill.deploy.streaming.StreamingRecognizer` in chunks of ``chunk_ms``, with the partial
    hypotheses on ``err`` when ``partial``.

    Returns (utt-id -> words for the files that worked, [(path, error message)] for those that did not); every
    failure is also reported on ``err`` (stderr) naming the file."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if stream:
        if backend != "onnx":
            raise ValueError("--stream runs the ONNX parts (frontend.onnx, network.onnx): use the onnx backend")
        if decoder != "kaldi-decoder":
            raise ValueError("--stream advances kaldi-decoder's search chunk by chunk: use --decoder kaldi-decoder")
        rec = StreamingRecognizer(model_dir, use_int8, num_threads)
        chunk = max(1, int(round(chunk_ms * SAMPLE_RATE / 1000)))
    else:
        tr = Transcriber(model_dir, use_int8, backend, num_threads, max_duration, decoder)
    hyps: Dict[str, List[str]] = {}
    failed: List[Tuple[str, str]] = []
    stems = ["stdin" if str(p) == "-" else Path(p).stem for p in audio_paths]
    for path, stem in zip(audio_paths, stems):
        try:
            if stream:
                def show(words, stem=stem):
                    print(f"{stem}\tpartial\t{' '.join(words)}", file=err, flush=True)

                words = recognize_stream(rec, stream_chunks(path, chunk, max_duration), show if partial else None)
            else:
                if str(path) == "-":
                    raise ValueError("standard input is read with --stream only")
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
    p.add_argument("--decoder", choices=["kaldi-decoder", "k2"], default="kaldi-decoder",
                   help="decoding backend (k2: whole recordings at once; needs k2)")
    p.add_argument("--max-duration", type=float, default=None,
                   help="refuse (naming them) recordings longer than this many seconds [default: no limit]")
    p.add_argument("--stream", action="store_true",
                   help="streaming recognition: audio fed in chunks (AUDIO '-': standard input, as it arrives)")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="with --stream: chunk length [default: 100]")
    p.add_argument("--partial", action="store_true",
                   help="with --stream: print partial hypotheses to stderr as 'utt-id<TAB>partial<TAB>words'")
    p.add_argument("audio", nargs="+")
    a = p.parse_args(argv)
    if a.max_duration is not None and a.max_duration <= 0:
        p.error("--max-duration must be positive")
    if a.chunk_ms <= 0:
        p.error("--chunk-ms must be positive")
    if (a.partial or "-" in a.audio) and not a.stream:
        p.error("--partial and '-' (standard input) need --stream")
    try:
        _, failed = transcribe(a.model_dir, a.audio, a.int8, a.backend, num_threads=a.num_threads,
                               max_duration=a.max_duration, stream=a.stream, chunk_ms=a.chunk_ms,
                               partial=a.partial, decoder=a.decoder)
    except (FileNotFoundError, ValueError, ImportError) as e:  # ImportError: --decoder k2 without k2
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
