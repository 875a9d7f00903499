#!/usr/bin/env python3
"""Copy a small real slice of CMU AN4 into the repo as the embedded default corpus (FLAC, CMU layout kept).

    python tools/make_embedded_corpus.py ../shared/corpora/an4 asr_distill/corpora/an4_slice

Speakers are chosen deterministically (sorted; every k-th speaker) so the slice can be re-made.
"""
import argparse
import shutil
from pathlib import Path

import soundfile as sf


def main():
    p = argparse.ArgumentParser()
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--train-speakers", type=int, default=10)
    p.add_argument("--test-speakers", type=int, default=3)
    args = p.parse_args()
    etc = args.src / "etc"
    (args.dst / "etc").mkdir(parents=True, exist_ok=True)
    for part, n in (("train", args.train_speakers), ("test", args.test_speakers)):
        fileids = (etc / f"an4_{part}.fileids").read_text().split()
        trans = (etc / f"an4_{part}.transcription").read_text().splitlines()
        speakers = sorted({f.split("/")[1] for f in fileids})
        step = max(1, len(speakers) // n)
        keep = set(speakers[::step][:n])
        out_ids, out_trans = [], []
        for fid, line in zip(fileids, trans):
            if fid.split("/")[1] not in keep:
                continue
            audio, sr = sf.read(args.src / "wav" / f"{fid}.sph", dtype="int16")
            dst = args.dst / "wav" / f"{fid}.flac"
            dst.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dst, audio, sr, format="FLAC", subtype="PCM_16")
            out_ids.append(fid)
            out_trans.append(line)
        (args.dst / "etc" / f"an4_{part}.fileids").write_text("\n".join(out_ids) + "\n")
        (args.dst / "etc" / f"an4_{part}.transcription").write_text("\n".join(out_trans) + "\n")
        print(part, sorted(keep), len(out_ids), "utterances")
    for name in ("an4.dic", "an4.phone", "an4.filler"):
        shutil.copy(etc / name, args.dst / "etc" / name)
    shutil.copy(args.src / "LICENSE", args.dst / "LICENSE")
    (args.dst / "README.md").write_text(
        "# Embedded AN4 slice\n\nA small real slice of CMU AN4 (close-talking), re-encoded losslessly as FLAC, in CMU's own\n"
        "layout (`wav/<set>/<speaker>/<utt>.flac`, `etc/`). Made by `tools/make_embedded_corpus.py` from the full\n"
        "corpus. Copyright Carnegie Mellon University; see LICENSE (kept as the licence requires).\n")


if __name__ == "__main__":
    main()
