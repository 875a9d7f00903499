"""WER of an exported model at several input levels, for each CMVN mode of the export (issue 16: a deployed model
that does not depend on the input level).

    python tools/level_table.py --exp-dir exp/an4 --system student [--levels 0.25,0.5,1,2] [--out FILE.json]

Each mode exports the system's checkpoint (fp32 ONNX only) into a scratch directory; every dev and test recording
is scaled by each level and transcribed by the stand-alone transcriber (decoding settings: the recipe's, tuned on
dev for the system).  The mode to ship is chosen on DEV; test is reported beside it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from asr_distill.decode.scoring import compute_wer, words_of
from asr_distill.deploy.export import CMVN_MODES, export_model
from asr_distill.deploy.measure import split_audio
from asr_distill.deploy.transcribe import Transcriber, load_audio
from asr_distill.experiment import Experiment


def level_wers(model_dir: Path, exp: Experiment, split: str, levels) -> dict:
    tr = Transcriber(model_dir)
    audio = split_audio(exp.dir, split)
    refs = {u: t.split() for u, t in exp.texts(split).items()}
    waves = {u: load_audio(p) for u, p in audio.items()}
    out = {}
    for level in levels:
        hyps = {u: words_of(tr.decoder.decode(tr.model(w * level)), tr.id2word) for u, w in waves.items()}
        out[f"{level:g}"] = round(compute_wer(refs, hyps, bootstrap_replications=0).wer, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exp-dir", required=True)
    ap.add_argument("--system", default="student")
    ap.add_argument("--levels", default="0.25,0.5,1,2")
    ap.add_argument("--modes", default=",".join(CMVN_MODES))
    ap.add_argument("--out")
    args = ap.parse_args()
    exp = Experiment(args.exp_dir)
    levels = [float(x) for x in args.levels.split(",")]
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            model_dir = Path(tmp) / mode
            export_model(exp.dir, exp.system_checkpoint(args.system), model_dir, system=args.system, cmvn=mode,
                         int8=False)
            table[mode] = {split: level_wers(model_dir, exp, split, levels) for split in ("dev", "test")}
            print(mode, json.dumps(table[mode]), flush=True)
    lines = ["| CMVN | split | " + " | ".join(f"{lv:g}x" for lv in levels) + " |",
             "|---|---|" + "---|" * len(levels)]
    for mode, rows in table.items():
        for split, wers in rows.items():
            lines.append(f"| {mode} | {split} | " + " | ".join(f"{w:.2f}" for w in wers.values()) + " |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"exp_dir": args.exp_dir, "system": args.system, "table": table},
                                             indent=1) + "\n")


if __name__ == "__main__":
    main()
