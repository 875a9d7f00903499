"""Kaldi data directories: ``wav.scp`` (``<rec> <path>`` or ``<rec> <command> |``), ``text``, ``utt2spk`` and
optionally ``segments`` (``<utt> <rec> <start> <end>``).  Without ``segments`` utterance = recording."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..utils import Pathlike
from .corpus import BadItem, CorpusError, Utterance, normalise_text, read_lines, validate_audio

__all__ = ["read_kaldi_table", "read_kaldi_dir"]


def read_kaldi_table(path: Path, bad: List[BadItem], min_fields: int = 2) -> Dict[str, Optional[str]]:
    """id -> value; None for an id whose line is not UTF-8 (reported here, once: callers leave it out)."""
    table: Dict[str, Optional[str]] = {}
    for lineno, line, problem in read_lines(path):
        if not line.strip():
            continue
        # any whitespace separates the key from the value, as Kaldi's own readers split (a TAB included)
        fields = line.split(maxsplit=1)
        key, value = fields[0], (fields[1].strip() if len(fields) > 1 else "")
        if len(value.split()) < min_fields - 1:
            bad.append(BadItem(f"{path}:{lineno}", f"expected '<id> <value>', got {line.strip()!r}"))
            continue
        if key in table:
            bad.append(BadItem(key, f"duplicate id in {path.name} (line {lineno})"))
            continue
        if problem:
            if "\ufffd" in key:  # the id itself is damaged: the files that list the real one report it missing
                bad.append(BadItem(f"{path}:{lineno}", problem))
                continue
            bad.append(BadItem(key, problem))
            value = None
        table[key] = value
    return table


def read_kaldi_dir(data_dir: Pathlike) -> Tuple[List[Utterance], List[BadItem]]:
    """A Kaldi data directory: ``wav.scp`` (``<rec> <path>`` or ``<rec> <command> |``), ``text``, ``utt2spk`` and
    optionally ``segments`` (``<utt> <rec> <start> <end>``).  Without ``segments`` utterance = recording."""
    data_dir = Path(data_dir)
    for name in ("wav.scp", "text", "utt2spk"):
        if not (data_dir / name).is_file():
            raise CorpusError(f"{data_dir / name}: missing (a Kaldi data directory needs wav.scp, text, utt2spk)")
    bad: List[BadItem] = []
    wav = read_kaldi_table(data_dir / "wav.scp", bad)
    text = read_kaldi_table(data_dir / "text", bad, min_fields=1)
    utt2spk = read_kaldi_table(data_dir / "utt2spk", bad)
    segments: Optional[Dict[str, Optional[Tuple[str, float, float]]]] = None
    if (data_dir / "segments").is_file():
        segments = {}
        for utt, value in read_kaldi_table(data_dir / "segments", bad).items():
            segments[utt] = None  # until its line parses: a bad line is reported once, here, not as missing too
            if value is None:
                continue
            fields = value.split()
            try:
                rec, start, end = fields[0], float(fields[1]), float(fields[2])
            except (IndexError, ValueError):
                bad.append(BadItem(utt, f"cannot parse segments line {utt} {value!r}"))
                continue
            if not start >= 0:  # float() reads "-.05" and "nan" as well
                bad.append(BadItem(utt, f"segment start {start} is not a time in its recording"))
                continue
            if not end > start:
                bad.append(BadItem(utt, f"segment end {end} is not after its start {start}"))
                continue
            segments[utt] = (rec, start, end)
    utts: List[Utterance] = []
    for utt in sorted(text):
        if text[utt] is None or utt2spk.get(utt, "") is None or (segments or {}).get(utt, ()) is None:
            continue  # a line not UTF-8 or a bad segment, reported above
        words = normalise_text(text[utt])
        if not words:
            bad.append(BadItem(utt, "empty transcript"))
            continue
        if utt not in utt2spk:
            bad.append(BadItem(utt, "in text but not in utt2spk"))
            continue
        if segments is not None:
            if utt not in segments:
                bad.append(BadItem(utt, "in text but not in segments"))
                continue
            rec, start, end = segments[utt]
        else:
            rec, start, end = utt, 0.0, None
        if rec not in wav:
            bad.append(BadItem(utt, f"recording {rec!r} is not in wav.scp"))
            continue
        entry = wav[rec]
        if entry is None:
            continue  # not UTF-8, reported by read_kaldi_table
        command = entry[:-1].strip() if entry.endswith("|") else None
        path = None if command else Path(entry) if Path(entry).is_absolute() else (data_dir / entry)
        if path is not None and not path.is_file():
            path = Path(entry)  # Kaldi's paths are relative to the recipe directory, not the data directory
        if path is not None and not path.is_file():
            bad.append(BadItem(entry, f"audio file missing (recording {rec}, utterance {utt})"))
            continue
        utts.append(Utterance(utt, utt2spk[utt], path if path is not None else Path(rec), words,
                              start=start, duration=None if end is None else end - start, recording_id=rec,
                              command=command))
    for utt in sorted(set(utt2spk) - set(text)):
        bad.append(BadItem(utt, "in utt2spk but has no transcript in text"))
    return validate_audio(utts, bad), bad
