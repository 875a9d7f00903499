#!/usr/bin/env python3
"""Real-time factor of an exported model directory on ONE CPU thread: the network (waveform -> pseudo
log-likelihoods, front end included) and the HCLG decoding, timed separately, for the fp32 ONNX, int8 ONNX and
TorchScript models; plus file sizes.

RTF = processing seconds / audio seconds (lower is faster; 0.01 = 100x faster than real time).  Audio reading and
resampling are not timed.  Every engine runs the same files ``--repeats`` times after one warm-up pass; the best
repeat is reported (the least disturbed by other processes on the machine).

Example:  python tools/bench_infer.py --model-dir models/student [--audio a.flac b.sph ...] [--out bench.json]
          (without --audio: the embedded slice's test files)
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asr_distill.deploy.transcribe import AcousticModel, Transcriber, load_audio  # noqa: E402


def _time(fn, items, repeats):
    fn(items[0])  # warm-up (session / JIT initialisation)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--audio", nargs="*", default=None)
    p.add_argument("--max-files", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON here too")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    model_dir = Path(a.model_dir)
    card = json.loads((model_dir / "model_card.json").read_text())
    files = a.audio or sorted(glob.glob(str(REPO / "corpora" / "an4_slice" / "wav" / "an4test_clstk" / "*" / "*")))
    files = files[:a.max_files]
    waves = [load_audio(f) for f in files]
    seconds = sum(len(w) for w in waves) / 16000.0
    decoder = Transcriber(model_dir).decoder  # the deployed decoder, with the card's settings
    rows = []
    engines = [("onnx-fp32", dict(backend="onnx")), ("onnx-int8", dict(backend="onnx", use_int8=True)),
               ("torchscript", dict(backend="torchscript"))]
    for name, kw in engines:
        if kw.get("use_int8") and not (model_dir / "model.int8.onnx").exists():
            continue
        model = AcousticModel(model_dir, num_threads=1, **kw)
        net_s = _time(model, waves, a.repeats)
        loglikes = [model(w) for w in waves]
        dec_s = _time(decoder.decode, loglikes, a.repeats)
        fname = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx", "torchscript": "model.pt"}[name]
        rows.append({"engine": name, "file": fname, "size_mb": round(os.path.getsize(model_dir / fname) / 2**20, 3),
                     "network_rtf": round(net_s / seconds, 5), "decode_rtf": round(dec_s / seconds, 5),
                     "total_rtf": round((net_s + dec_s) / seconds, 5)})
    result = {"model_dir": str(model_dir), "system": card.get("system"), "files": len(files),
              "audio_seconds": round(seconds, 2), "threads": 1, "repeats": a.repeats,
              "hclg_mb": round(os.path.getsize(model_dir / "HCLG.fst") / 2**20, 3),
              "decoding": card["decoding"], "rows": rows}
    print(f"{result['files']} files, {seconds:.1f} s of audio, 1 thread, best of {a.repeats}; "
          f"HCLG {result['hclg_mb']} MB")
    print(f"{'engine':<12} {'file':<16} {'MB':>7} {'net RTF':>9} {'dec RTF':>9} {'total':>9}")
    for r in rows:
        print(f"{r['engine']:<12} {r['file']:<16} {r['size_mb']:>7.3f} {r['network_rtf']:>9.5f} "
              f"{r['decode_rtf']:>9.5f} {r['total_rtf']:>9.5f}")
    print(json.dumps(result))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
