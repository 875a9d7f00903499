#!/usr/bin/env python3
"""Score one model checkpoint of an experiment on dev and test (dev-tuned WER, frame accuracy) without touching
results.json or the decode directories: an early look at a teacher while stage 4 is still training the others.

    python tools/score_checkpoint.py --exp-dir exp/minilibri --corpus librispeech \
        --checkpoint exp/minilibri/teachers/teacher0/best.pt --tuning lattice
"""
from __future__ import annotations

import argparse
import json
import time

from asr_distill.decode.priors import pseudo_loglikes
from asr_distill.decode.scorer import TUNERS, Scorer
from asr_distill.experiment import Experiment
from asr_distill.nnet.checkpoint import load_model
from asr_distill.nnet.inference import log_posteriors
from asr_distill.nnet.stream import open_frames
from asr_distill.utils import setup_logging


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp-dir", required=True)
    ap.add_argument("--corpus", default="an4")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--left", type=int, default=5)
    ap.add_argument("--right", type=int, default=5)
    ap.add_argument("--tuning", choices=TUNERS, default="search")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    setup_logging()
    t0 = time.time()
    exp = Experiment(args.exp_dir, corpus=args.corpus)
    model = load_model(args.checkpoint, "cpu")
    scorer = Scorer(exp, args.jobs, tuning=args.tuning)
    post = {s: log_posteriors(model, open_frames(exp.frame_source(s), args.left, args.right, "cpu")[0])
            for s in ("dev", "test")}
    loglikes = {s: {u: pseudo_loglikes(p, scorer.log_priors) for u, p in post[s].items()} for s in post}
    cfg, dev_wers = scorer.tune(loglikes["dev"])
    _, wer = scorer.decode("test", loglikes["test"], cfg)
    key = f"{cfg.acoustic_scale:g}/{cfg.word_penalty:g}"
    print(json.dumps({"checkpoint": args.checkpoint, "test_wer": round(wer.wer, 2),
                      "test_wer_ci": [round(wer.ci_low, 2), round(wer.ci_high, 2)], "dev_wer": round(dev_wers[key], 2),
                      "frame_acc": round(scorer.frame_accuracy("test", loglikes["test"]), 2),
                      "dev_frame_acc": round(scorer.frame_accuracy("dev", loglikes["dev"]), 2),
                      "oov_rates": scorer.oov_rates, "choice": key, "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
