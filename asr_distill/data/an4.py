"""CMU AN4 in its own layout::

    wav/an4_clstk/<speaker>/<utt>.sph        (train; .flac/.wav are accepted too)
    wav/an4test_clstk/<speaker>/<utt>.sph    (test)
    etc/an4_{train,test}.fileids             (one path per line, relative to wav/, no extension)
    etc/an4_{train,test}.transcription       ("<s> WORDS </s> (utt-id)" per line)
    etc/an4.dic                              (pronunciations; alternates as WORD(2))

A speaker-disjoint dev set is carved from train (the test set is never used for any choice).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from lhotse import CutSet

from ..utils import Pathlike
from .corpus import (TARGET_RATE, BadItem, CorpusError, Utterance, check_audio, read_lines, report_bad,
                     speaker_disjoint_split, write_splits)

__all__ = ["read_an4", "prepare_an4", "AUDIO_EXTENSIONS"]

AUDIO_EXTENSIONS = (".sph", ".flac", ".wav")


_TRANS_RE = re.compile(r"^(?P<text>.*?)\s*\((?P<id>[^()\s]+)\)\s*$")


def _read_transcription(path: Path, bad: List[BadItem]) -> Dict[str, Optional[str]]:
    """utt id -> words; None for an utterance whose line is unreadable (reported here, once)."""
    texts: Dict[str, Optional[str]] = {}
    for lineno, line, problem in read_lines(path):
        if not line.strip():
            continue
        m = _TRANS_RE.match(line)
        if not m:
            bad.append(BadItem(f"{path.name}:{lineno}", problem or f"cannot parse transcription line {line!r}"))
            continue
        uid = m.group("id")
        words = [w for w in m.group("text").split() if w not in ("<s>", "</s>", "<sil>")]
        if uid in texts:
            bad.append(BadItem(uid, f"duplicate utterance id in {path.name}"))
            continue
        if problem:
            bad.append(BadItem(uid, problem))
        texts[uid] = None if problem else " ".join(words)
    return texts


def _find_audio(wav_dir: Path, fileid: str) -> Optional[Path]:
    for ext in AUDIO_EXTENSIONS:
        p = wav_dir / f"{fileid}{ext}"
        if p.is_file():
            return p
    return None


def read_an4(corpus_dir: Pathlike, part: str, check_audio_files: bool = True) -> Tuple[List[Utterance], List[BadItem]]:
    """Read and validate one AN4 part (``train`` or ``test``); returns the good utterances and the problems.  Audio
    at any sample rate is accepted (the manifests resample it: :func:`prepare_an4`)."""
    corpus_dir = Path(corpus_dir)
    etc, wav = corpus_dir / "etc", corpus_dir / "wav"
    fileids_path = etc / f"an4_{part}.fileids"
    trans_path = etc / f"an4_{part}.transcription"
    for p in (fileids_path, trans_path):
        if not p.is_file():
            raise CorpusError(f"{p}: missing (is {corpus_dir} an AN4 corpus in CMU's layout?)")
    bad: List[BadItem] = []
    texts = _read_transcription(trans_path, bad)
    seen: set = set()
    utts: List[Utterance] = []
    fileids = [line.strip() for line in fileids_path.read_text(errors="replace").splitlines() if line.strip()]
    for fileid in fileids:
        uid = Path(fileid).name
        if uid in seen:
            bad.append(BadItem(uid, f"duplicate utterance id in {fileids_path.name}"))
            continue
        seen.add(uid)
        audio = _find_audio(wav, fileid)
        if audio is None:
            bad.append(BadItem(str(wav / fileid), f"audio file missing (tried {', '.join(AUDIO_EXTENSIONS)})"))
            continue
        if uid not in texts:
            bad.append(BadItem(uid, f"no transcript in {trans_path.name} for {audio}"))
            continue
        if texts[uid] is None:  # an unreadable transcript line, already reported
            continue
        if not texts[uid]:
            bad.append(BadItem(uid, "empty transcript"))
            continue
        n, sr = 0, 0
        if check_audio_files:
            problem, n, sr = check_audio(audio, None)
            if problem:
                bad.append(BadItem(str(audio), problem))
                continue
        # AN4 file ids are <set>/<speaker>/<utt>
        speaker = Path(fileid).parent.name or uid.split("-")[1]
        utts.append(Utterance(uid, speaker, audio, texts[uid], n, sr))
    for uid in sorted(set(texts) - seen):
        bad.append(BadItem(uid, f"transcript in {trans_path.name} has no entry in {fileids_path.name}"))
    return utts, bad


def prepare_an4(corpus_dir: Pathlike, output_dir: Pathlike, skip_bad: bool = False, dev_fraction: float = 0.1,
                sampling_rate: int = TARGET_RATE) -> Dict[str, CutSet]:
    """Validate AN4 and write ``{train,dev,test}`` cut manifests (``.jsonl.gz``), resampled to ``sampling_rate``
    where the audio has another rate (8 kHz copies of AN4 exist)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train, bad_train = read_an4(corpus_dir, "train")
    test, bad_test = read_an4(corpus_dir, "test")
    bad = bad_train + bad_test
    train_ids, test_ids = {u.utt_id for u in train}, {u.utt_id for u in test}
    overlap = train_ids & test_ids
    for uid in sorted(overlap):
        bad.append(BadItem(uid, "utterance id appears in both train and test"))
    report_bad(bad, corpus_dir, output_dir, skip_bad)
    test = [u for u in test if u.utt_id not in overlap]
    train = [u for u in train if u.utt_id not in overlap]
    train, dev = speaker_disjoint_split(train, dev_fraction)
    return write_splits({"train": train, "dev": dev, "test": test}, output_dir, corpus_dir, sampling_rate)
