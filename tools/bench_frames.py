#!/usr/bin/env python3
"""Peak memory and speed of teacher training on the resident and the streaming frame paths, against corpus size.

A corpus k times AN4's size is made by repeating the experiment's labelled training cuts k times (ids suffixed,
the same feature and label storage: no audio or features are copied).  For each size and path a fresh process
opens the frames and trains a teacher (the recipe's 4x512 MLP, context +-5, batch 512) for ``--steps`` steps;
it reports the peak resident set size (``ru_maxrss``), the RSS once the frames are open, and training frames/s.

    python tools/bench_frames.py --exp-dir exp/an4 --repeats 1 4 16 --steps 1500 --out docs/results/frames_memory.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lhotse import CutSet  # noqa: E402

from asr_distill.experiment import Experiment  # noqa: E402


def repeated_manifest(exp: Experiment, k: int, out: Path) -> Path:
    """The training cuts repeated ``k`` times (ids ``<id>-r<i>``), written lazily to ``out``."""
    path = out / f"cuts_train_x{k}.jsonl.gz"
    if not path.exists():
        with CutSet.open_writer(path) as w:
            for i in range(k):
                for cut in CutSet.from_jsonl_lazy(exp.labelled_cuts_path("train")):
                    w.write(cut.with_id(f"{cut.id}-r{i}") if i else cut)
    return path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(exp_dir: str, manifest: str, mode: str, steps: int) -> dict:
    """In this (fresh) process: open the frames, train ``steps`` steps, report memory and speed."""
    import torch

    from asr_distill.nnet.frame_data import FrameSource
    from asr_distill.nnet.models import build_model
    from asr_distill.nnet.step import TrainStep
    from asr_distill.nnet.stream import open_frames
    from asr_distill.recipe import model_config

    exp = Experiment(exp_dir)
    t0 = time.time()
    train, _ = open_frames(FrameSource(Path(manifest), exp.cmvn("fbank")), 5, 5, mode=mode)
    open_s, rss_open = time.time() - t0, _rss_mb()
    torch.manual_seed(0)
    model = build_model(model_config("mlp", exp, 5, 5, hidden_dim=512, num_layers=4, dropout=0.0))
    step = TrainStep(model, frames=train if mode == "resident" else None, lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()
    frames = 0
    for batch in itertools.islice(itertools.chain.from_iterable(
            train.train_batches(512, gen) for _ in range(1000)), steps):
        loss = step.step(**batch)
        frames += len(batch["frame_index"] if "frame_index" in batch else batch["y"])
    float(loss)
    train_s = time.time() - t0
    return {"mode": mode, "corpus_frames": int(train.num_frames), "open_seconds": round(open_s, 1),
            "rss_after_open_mb": round(rss_open, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "steps": steps, "train_frames_per_second": round(frames / train_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp-dir", required=True)
    ap.add_argument("--repeats", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--modes", nargs="+", default=["resident", "stream"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    ap.add_argument("--_one", nargs=3, metavar=("MANIFEST", "MODE", "STEPS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._one:
        print(json.dumps(run_one(a.exp_dir, a._one[0], a._one[1], int(a._one[2]))))
        return
    exp = Experiment(a.exp_dir)
    work = exp.dir / "bench_frames"
    work.mkdir(exist_ok=True)
    rows = []
    for k in a.repeats:
        manifest = repeated_manifest(exp, k, work)
        for mode in a.modes:
            proc = subprocess.run([sys.executable, __file__, "--exp-dir", a.exp_dir, "--_one", str(manifest), mode,
                                   str(a.steps)], capture_output=True, text=True, check=True)
            rows.append({"repeats": k, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
