#!/usr/bin/env python3
"""Test corpora in other layouts, built from an AN4 copy (CMU layout) or synthesised.

    tools/make_layouts.py librispeech SRC_AN4 DEST [--train-part train-clean-5 --test-part dev-clean-2]
    tools/make_layouts.py kaldi SRC_AN4 DEST          # DEST/{train,test}/{wav.scp,text,utt2spk,segments}
    tools/make_layouts.py yesno DEST                  # DEST/waves_yesno/*.wav: synthetic 8 kHz tones

LibriSpeech layout: ``<part>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac`` with one ``.trans.txt`` per
chapter; AN4 speakers become numeric ids (100, 101, ...), AN4's train set one part and its test set another.
The Kaldi layout exercises what real Kaldi directories hold: absolute paths, ``cmd |`` pipes, and ``segments``
that start after the leading silence.  yesno: the real corpus (Hebrew "ken"/"lo" at 8 kHz) needs a download, so a
stand-in with the same names and rate is synthesised: each word a 0.4 s harmonic tone (YES 220 Hz, NO 410 Hz) with
noise between words, deterministic from a seed.
"""
from __future__ import annotations

import argparse
import itertools
import re
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np


def _an4_part(src: Path, part: str) -> List[Tuple[str, str, Path, str]]:
    """(utt id, speaker, audio path, words) of one AN4 part, in file order."""
    texts = {}
    for line in (src / "etc" / f"an4_{part}.transcription").read_text().splitlines():
        m = re.match(r"^(.*)\(([^()\s]+)\)\s*$", line.strip())
        if m:
            texts[m.group(2)] = " ".join(w for w in m.group(1).split() if w not in ("<s>", "</s>", "<sil>"))
    out = []
    for fid in (src / "etc" / f"an4_{part}.fileids").read_text().split():
        audio = next(p for ext in (".flac", ".sph", ".wav") if (p := src / "wav" / f"{fid}{ext}").is_file())
        out.append((Path(fid).name, Path(fid).parent.name, audio, texts[Path(fid).name]))
    return out


def _write_flac(src: Path, dest: Path) -> None:
    import soundfile as sf

    if src.suffix == ".flac":
        shutil.copyfile(src, dest)
    else:
        audio, sr = sf.read(str(src), dtype="int16")
        sf.write(str(dest), audio, sr, format="FLAC")


def _joined(utts: List[Tuple[str, str, Path, str]], join: int) -> List[Tuple[str, str, List[Path], str]]:
    """Consecutive utterances of one speaker, ``join`` at a time, as one (id, speaker, audio files, words)."""
    by_speaker: Dict[str, List[Tuple[str, str, Path, str]]] = {}
    for u in utts:
        by_speaker.setdefault(u[1], []).append(u)
    out = []
    for spk, items in by_speaker.items():
        for i in range(0, len(items), join):
            group = items[i:i + join]
            out.append((group[0][0], spk, [g[2] for g in group], " ".join(g[3] for g in group)))
    return out


def _write_joined_flac(srcs: List[Path], dest: Path) -> None:
    import soundfile as sf

    if len(srcs) == 1:
        return _write_flac(srcs[0], dest)
    parts = [sf.read(str(p), dtype="int16") for p in srcs]
    sf.write(str(dest), np.concatenate([a for a, _ in parts]), parts[0][1], format="FLAC")


def librispeech(src: Path, dest: Path, train_part: str = "train-clean-5", test_part: str = "dev-clean-2",
                max_per_part: int = 0, join: int = 1) -> Dict[str, int]:
    """AN4 rearranged as LibriSpeech (speaker/chapter/utterance flac + trans.txt); ``join`` > 1 concatenates that
    many consecutive utterances of a speaker into one (long utterances from short ones)."""
    speaker_ids: Dict[str, int] = {}
    counts = {}
    for an4_part, part in (("train", train_part), ("test", test_part)):
        utts = _an4_part(src, an4_part)
        if max_per_part:
            utts = utts[:max_per_part]
        n_by_chapter: Dict[Tuple[int, int], List[str]] = {}
        joined = _joined(utts, join)
        for uid, spk, audio, words in joined:
            sid = speaker_ids.setdefault(spk, 100 + len(speaker_ids))
            chapter = 1000 + sid
            lines = n_by_chapter.setdefault((sid, chapter), [])
            lib_id = f"{sid}-{chapter}-{len(lines):04d}"
            d = dest / part / str(sid) / str(chapter)
            d.mkdir(parents=True, exist_ok=True)
            _write_joined_flac(audio, d / f"{lib_id}.flac")
            lines.append(f"{lib_id} {words}")
        for (sid, chapter), lines in n_by_chapter.items():
            (dest / part / str(sid) / str(chapter) / f"{sid}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
        counts[part] = len(joined)
    return counts


def kaldi(src: Path, dest: Path, max_per_part: int = 0) -> Dict[str, int]:
    import soundfile as sf

    counts = {}
    for part in ("train", "test"):
        utts = _an4_part(src, part)
        if max_per_part:
            utts = utts[:max_per_part]
        d = dest / part
        (d / "audio").mkdir(parents=True, exist_ok=True)
        wav, text, utt2spk, segments = [], [], [], []
        for i, (uid, spk, audio, words) in enumerate(utts):
            utt = f"{spk}-{uid}"  # Kaldi convention: speaker id as the utterance-id prefix
            flac = d / "audio" / f"{uid}.flac"
            _write_flac(audio, flac)
            rec = f"rec-{uid}"
            # every third recording through a pipe, as Kaldi recipes write sph2pipe/sox commands
            wav.append(f"{rec} cat {flac.resolve()} |" if i % 3 == 0 else f"{rec} {flac.resolve()}")
            dur = sf.info(str(flac)).duration
            segments.append(f"{utt} {rec} 0.05 {dur:.2f}")  # skip 50 ms of the leading silence
            text.append(f"{utt} {words}")
            utt2spk.append(f"{utt} {spk}")
        for name, lines in (("wav.scp", wav), ("text", text), ("utt2spk", utt2spk), ("segments", segments)):
            (d / name).write_text("\n".join(sorted(lines)) + "\n")
        counts[part] = len(utts)
    return counts


def yesno(dest: Path, num_files: int = 60, seed: int = 0) -> int:
    import soundfile as sf

    rate = 8000
    rng = np.random.default_rng(seed)
    out = dest / "waves_yesno"
    out.mkdir(parents=True, exist_ok=True)
    codes = sorted(itertools.product("01", repeat=8), key=lambda c: int("".join(c), 2) * 7919 % 256)[:num_files]
    for code in sorted(codes):
        pieces = [0.003 * rng.standard_normal(int(0.5 * rate))]
        for bit in code:
            t = np.arange(int(0.4 * rate)) / rate
            f0 = 220.0 if bit == "1" else 410.0
            tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3)) * np.hanning(len(t)) * 0.3
            pieces += [tone + 0.003 * rng.standard_normal(len(t)),
                       0.003 * rng.standard_normal(int(rng.uniform(0.2, 0.4) * rate))]
        sf.write(str(out / ("_".join(code) + ".wav")), np.concatenate(pieces).astype(np.float32), rate,
                 subtype="PCM_16")
    return len(codes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("layout", choices=["librispeech", "kaldi", "yesno"])
    ap.add_argument("paths", nargs="+", help="SRC_AN4 DEST (librispeech, kaldi) or DEST (yesno)")
    ap.add_argument("--train-part", default="train-clean-5")
    ap.add_argument("--test-part", default="dev-clean-2")
    ap.add_argument("--max-per-part", type=int, default=0)
    args = ap.parse_args()
    if args.layout == "yesno":
        print(yesno(Path(args.paths[-1])), "files")
    elif args.layout == "librispeech":
        print(librispeech(Path(args.paths[0]), Path(args.paths[1]), args.train_part, args.test_part,
                          args.max_per_part))
    else:
        print(kaldi(Path(args.paths[0]), Path(args.paths[1]), args.max_per_part))


if __name__ == "__main__":
    main()
