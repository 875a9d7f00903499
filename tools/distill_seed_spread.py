#!/usr/bin/env python3
"""Seed spread of table 1's three trained rows: the hard-label baseline (the teachers' recipe), the hard-label
control trained with the students' recipe, and the distilled student, each with several seeds (frame accuracy; with
``--decode`` also test WER, each system decoded and scored like stage 6's).  How much of a student's gain is more
than seed noise, and how much is the recipe's?

    python tools/distill_seed_spread.py --exp-dir exp/an4 --device cuda --seeds 100 101 102 -T 5 --alpha 0.5 \\
        --recipe 30:0.2:8

``--recipe EPOCHS:NOISE_STD:FREQ_MASK`` is the students' recipe (``asr-distill distill --student-epochs ...``).
Writes ``EXP/distill/seed_spread.json``; the runs go to ``EXP/distill/seeds/``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr_distill.distill.experiments import recovered  # noqa: E402
from asr_distill.distill.recipes import parse_recipe  # noqa: E402
from asr_distill.distill.runner import DistillRunner  # noqa: E402
from asr_distill.experiment import Experiment  # noqa: E402
from asr_distill.utils import setup_logging, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp-dir", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    ap.add_argument("-T", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--recipe", default="", help="EPOCHS:NOISE_STD:FREQ_MASK (empty: the teachers' recipe)")
    ap.add_argument("--systems", default="baseline,control,student", help="comma-separated subset")
    ap.add_argument("--decode", action="store_true", help="also decode: test WER per run")
    ap.add_argument("--jobs", type=int, default=2, help="decoding processes")
    args = ap.parse_args()
    setup_logging(False)
    recipe = parse_recipe(args.recipe)
    exp = Experiment(args.exp_dir)
    run = DistillRunner(exp, args.device, jobs=args.jobs)
    systems = {"baseline": (1.0, 0.0, {}), "control": (1.0, 0.0, recipe), "student": (args.T, args.alpha, recipe)}
    systems = {k: v for k, v in systems.items() if k in args.systems.split(",")}
    rows = []
    for seed in args.seeds:
        for name, (t, a, r) in systems.items():
            if name == "control" and not r:
                continue  # the control *is* the baseline when the students use the teachers' recipe
            m, _ = run.train(f"seeds/{name}-s{seed}", run.teacher_config, T=t, alpha=a, seed=seed, **r)
            rows.append({"system": name, "seed": seed, "dev_frame_acc": run.frame_acc(m, "dev"),
                         "test_frame_acc": run.frame_acc(m)})
            if args.decode:  # a results.json row "seed-<system>-s<seed>" too
                scored = run.decode(f"seed-{name}-s{seed}", "student" if name == "student" else "baseline", m,
                                    {"seed": seed, "T": t, "alpha": a, **r})
                rows[-1].update(test_wer=scored["wer"], dev_wer=scored["dev_wer"])
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for name in systems:
        for key in ("dev_frame_acc", "test_frame_acc", "test_wer"):
            vals = [r[key] for r in rows if r["system"] == name and key in r]
            if vals:
                summary[f"{name}_{key}"] = {"mean": round(statistics.mean(vals), 2),
                                            "min": min(vals), "max": max(vals)}
    if "baseline" in systems and "student" in systems:
        base, stud = summary["baseline_test_frame_acc"]["mean"], summary["student_test_frame_acc"]["mean"]
        fraction = recovered(stud, base, run.ensemble_acc)
        summary["recovered_fraction_of_means"] = fraction if fraction == fraction else None
    out = {"T": args.T, "alpha": args.alpha, "recipe": recipe, "ensemble_test_frame_acc": run.ensemble_acc,
           "rows": rows, "summary": summary}
    write_json(out, exp / "distill" / "seed_spread.json")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
