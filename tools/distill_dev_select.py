#!/usr/bin/env python3
"""Choose the distillation temperature and soft-target weight on DEV frame accuracy, a few (T, alpha) pairs at a
time (the recipe's ``--experiments sweep`` trains the full 4 x 3 grid; on 2 CPU cores that is hours).

    python tools/distill_dev_select.py --exp-dir exp/an4 --pairs 2:0.5 1:0.5 2:0.9

Each pair trains a student with the teachers' architecture and training settings (stage 6's ``sweep-T{T}-a{alpha}``
directories, so a later full sweep reuses them) and prints its dev and test frame accuracy; the choice is the best
DEV number, and the test column is reported, never used.  Writes ``EXP/distill/dev_select.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr_distill.pipeline import DistillRunner, Experiment  # noqa: E402
from asr_distill.utils import setup_logging, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp-dir", required=True)
    ap.add_argument("--pairs", nargs="+", default=["2:0.5", "1:0.5", "2:0.9"], help="T:alpha")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    setup_logging(False)
    exp = Experiment(args.exp_dir)
    run = DistillRunner(exp, args.device, jobs=2)
    rows = []
    for pair in args.pairs:
        t, a = (float(x) for x in pair.split(":"))
        model, _ = run.train(f"sweep-T{t:g}-a{a:g}", run.teacher_config, T=t, alpha=a)
        rows.append({"T": t, "alpha": a, "dev_frame_acc": round(run.frame_acc(model, "dev"), 2),
                     "test_frame_acc": round(run.frame_acc(model), 2)})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["dev_frame_acc"])
    write_json({"rows": rows, "chosen_on_dev": best}, exp / "distill" / "dev_select.json")
    print("chosen on dev:", json.dumps(best))


if __name__ == "__main__":
    main()
