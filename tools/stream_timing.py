#!/usr/bin/env python3
"""WER, one-thread real-time factor and latency of ``transcribe --stream`` on an experiment's split.

    python tools/stream_timing.py --exp-dir exp/an4_sen --model-dir exp/an4_sen/export/student-stream \
        [--split test] [--chunk-ms 100] [--int8]

Each recording is fed chunk by chunk as fast as the recogniser takes it (one ONNX thread), so the numbers are
compute, not waiting:

* RTF: compute time of all chunks and the finish, over the audio's duration;
* end-of-stream latency: when the audio stops, the time until the final words are out (the last chunk's compute
  plus ``finish``); with live audio that is the delay after the last sample arrives;
* partial delay (algorithmic, not measured): a word can show in a partial hypothesis only once the frames of its
  end and ``right`` frames of look-ahead are in: up to one chunk, plus the look-ahead, plus half a 25 ms window;
* WER of the streamed words and of the offline transcriber on the same model directory, and whether they agree.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from asr_distill.decode.scoring import compute_wer  # noqa: E402
from asr_distill.deploy.audio import AudioFile  # noqa: E402
from asr_distill.deploy.measure import split_audio  # noqa: E402
from asr_distill.deploy.streaming import StreamingRecognizer  # noqa: E402
from asr_distill.deploy.transcribe import Transcriber  # noqa: E402
from asr_distill.experiment import Experiment  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--chunk-ms", type=float, default=100.0)
    p.add_argument("--int8", action="store_true")
    a = p.parse_args()
    audio = split_audio(a.exp_dir, a.split)
    refs = {u: t.split() for u, t in Experiment(a.exp_dir).texts(a.split).items()}
    rec = StreamingRecognizer(a.model_dir, a.int8, num_threads=1)
    offline = Transcriber(a.model_dir, a.int8, num_threads=1)
    chunk = int(round(a.chunk_ms * 16))
    streamed, whole, latency, compute, seconds = {}, {}, [], 0.0, 0.0
    for utt in sorted(audio):
        f = AudioFile(audio[utt])
        pieces = [f[s:s + chunk] for s in range(0, len(f), chunk)]
        f.close()
        seconds += sum(len(x) for x in pieces) / 16000
        rec.reset()
        t_last = 0.0
        for x in pieces:
            t0 = time.perf_counter()
            rec.accept_waveform(x)
            t_last = time.perf_counter() - t0
            compute += t_last
        t0 = time.perf_counter()
        streamed[utt] = rec.finish()
        t_finish = time.perf_counter() - t0
        compute += t_finish
        latency.append(t_last + t_finish)
        whole[utt] = offline(audio[utt])
    card = rec.card
    right = int(card["context"]["right"])
    out = {
        "model_dir": a.model_dir, "split": a.split, "utterances": len(audio), "audio_s": round(seconds, 1),
        "chunk_ms": a.chunk_ms, "int8": a.int8, "cmvn": card["cmvn"], "context": card["context"],
        "wer_stream": round(compute_wer(refs, streamed, bootstrap_replications=0).wer, 2),
        "wer_offline": round(compute_wer(refs, whole, bootstrap_replications=0).wer, 2),
        "utterances_differing": sum(streamed[u] != whole[u] for u in audio),
        "rtf_one_thread": round(compute / seconds, 4),
        "end_of_stream_latency_ms": {"mean": round(1000 * float(np.mean(latency)), 1),
                                     "p95": round(1000 * float(np.percentile(latency, 95)), 1),
                                     "max": round(1000 * float(np.max(latency)), 1)},
        "partial_delay_ms_algorithmic": f"<= {a.chunk_ms:g} (chunk) + {10 * right} (look-ahead) + 12.5 (window)",
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
