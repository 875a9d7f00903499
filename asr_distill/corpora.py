"""Corpus readers beyond AN4: LibriSpeech layout, Kaldi data directories, and yesno.

Each reader returns validated :class:`~asr_distill.data.Utterance` lists plus every problem found
(:class:`~asr_distill.data.BadItem`: missing or unreadable audio, transcripts without audio, audio without
transcripts, empty texts, duplicate ids, segments past the end of their recording), and :func:`prepare_corpus`
turns them into the same ``cuts_{train,dev,test}.jsonl.gz`` manifests as AN4, so every later stage is shared.

Why LibriSpeech is not parsed with Lhotse's ``prepare_librispeech``: it drops a transcript whose audio is missing
with only a log warning and stops at the first unreadable file, where this project reports every bad item by name
and drops nothing silently.  The layout, the part names (Lhotse's ``LIBRISPEECH``/``MINI_LIBRISPEECH``) and the
download (``download_librispeech``, only with ``--download``) are Lhotse's.

Splits.  Parts named ``train*`` train, ``dev*`` tune, ``test*`` test.  A corpus with no test part (Mini LibriSpeech:
``train-clean-5`` + ``dev-clean-2``) tests on its dev parts and carves its dev set out of train.  A corpus shipped as
one directory gets speaker-disjoint dev and test sets from ``dev_speakers``/``test_speakers`` (chosen by a stable
hash of the speaker names).  A dev set is never taken from test.
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .data import (BadItem, CorpusError, Utterance, check_audio, report_bad, speaker_disjoint_split, write_splits)
from .utils import Pathlike

__all__ = ["CORPORA", "read_librispeech", "librispeech_parts", "read_kaldi_dir", "read_yesno", "split_speakers",
           "prepare_corpus", "normalise_text"]

log = logging.getLogger(__name__)

CORPORA = ("an4", "librispeech", "kaldi", "yesno")
TARGET_RATE = 16000  # every corpus is resampled to this: one fbank configuration, one exported front-end


def normalise_text(text: str) -> str:
    """Upper case, whitespace collapsed (LibriSpeech and most Kaldi ``text`` files are upper case already)."""
    return " ".join(text.upper().split())


def _validate(utts: List[Utterance], bad: List[BadItem]) -> List[Utterance]:
    """Decode every recording once; keep the utterances whose audio is sound and whose segment lies inside it."""
    good = []
    checked: Dict[str, Tuple[Optional[str], int, int]] = {}
    for u in utts:
        key = u.command or str(u.audio_path)
        if key not in checked:
            checked[key] = check_audio(Path(u.audio_path), None, u.command)
        problem, n, sr = checked[key]
        if problem:
            bad.append(BadItem(u.command or str(u.audio_path), problem))
            continue
        u.num_samples, u.sampling_rate = n, sr
        if u.duration is not None:
            end = u.start + u.duration
            if u.duration <= 0 or end > n / sr + 0.02:  # 20 ms: segment ends are often rounded up
                bad.append(BadItem(u.utt_id, f"segment {u.start:.2f}-{end:.2f} s lies outside its recording "
                                             f"({n / sr:.2f} s)"))
                continue
            u.duration = min(u.duration, n / sr - u.start)
        good.append(u)
    return good


# ------------------------------------------------------------------------------------------------------------------
# LibriSpeech

def librispeech_parts(corpus_dir: Pathlike) -> List[str]:
    """The LibriSpeech / Mini LibriSpeech part directories present in ``corpus_dir`` (a ``LibriSpeech`` folder
    inside it is looked into as well, as the archives unpack)."""
    from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH

    corpus_dir = Path(corpus_dir)
    known = set(LIBRISPEECH) | set(MINI_LIBRISPEECH)
    return sorted(p.name for p in corpus_dir.iterdir() if p.is_dir() and p.name in known)


def _librispeech_root(corpus_dir: Path) -> Path:
    if not librispeech_parts(corpus_dir) and (corpus_dir / "LibriSpeech").is_dir():
        return corpus_dir / "LibriSpeech"
    return corpus_dir


def read_librispeech(corpus_dir: Pathlike, part: str) -> Tuple[List[Utterance], List[BadItem]]:
    """One part: ``<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` listing ``<utt-id> WORDS``, audio in
    ``<utt-id>.flac`` (``.wav`` accepted) beside it."""
    part_dir = Path(corpus_dir) / part
    if not part_dir.is_dir():
        raise CorpusError(f"{part_dir}: no such LibriSpeech part")
    utts: List[Utterance] = []
    bad: List[BadItem] = []
    seen: set = set()
    listed_audio: set = set()
    for trans in sorted(part_dir.rglob("*.trans.txt")):
        for lineno, line in enumerate(trans.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            where = f"{trans}:{lineno}"
            if uid in seen:
                bad.append(BadItem(uid, f"duplicate utterance id ({where})"))
                continue
            seen.add(uid)
            text = normalise_text(text)
            audio = next((trans.parent / f"{uid}{ext}" for ext in (".flac", ".wav")
                          if (trans.parent / f"{uid}{ext}").is_file()), None)
            if audio is None:
                bad.append(BadItem(str(trans.parent / f"{uid}.flac"), f"audio file missing (transcript {where})"))
                continue
            listed_audio.add(audio.resolve())
            if not text:
                bad.append(BadItem(uid, f"empty transcript ({where})"))
                continue
            utts.append(Utterance(uid, uid.split("-")[0], audio, text))
    for audio in sorted(part_dir.rglob("*.flac")):
        if audio.resolve() not in listed_audio:
            bad.append(BadItem(str(audio), "audio file has no transcript in its chapter's .trans.txt"))
    if not utts and not bad:
        raise CorpusError(f"{part_dir}: no *.trans.txt transcripts found (is this a LibriSpeech-layout part?)")
    return _validate(utts, bad), bad


# ------------------------------------------------------------------------------------------------------------------
# Kaldi data directories

def _read_table(path: Path, bad: List[BadItem], min_fields: int = 2) -> Dict[str, str]:
    table: Dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        value = value.strip()
        if len(value.split()) < min_fields - 1:
            bad.append(BadItem(f"{path}:{lineno}", f"expected '<id> <value>', got {line.strip()!r}"))
            continue
        if key in table:
            bad.append(BadItem(key, f"duplicate id in {path.name} (line {lineno})"))
            continue
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
    wav = _read_table(data_dir / "wav.scp", bad)
    text = _read_table(data_dir / "text", bad, min_fields=1)
    utt2spk = _read_table(data_dir / "utt2spk", bad)
    segments: Optional[Dict[str, Tuple[str, float, float]]] = None
    if (data_dir / "segments").is_file():
        segments = {}
        for utt, value in _read_table(data_dir / "segments", bad).items():
            fields = value.split()
            try:
                rec, start, end = fields[0], float(fields[1]), float(fields[2])
            except (IndexError, ValueError):
                bad.append(BadItem(utt, f"cannot parse segments line {utt} {value!r}"))
                continue
            if end <= start:
                bad.append(BadItem(utt, f"segment end {end} is not after its start {start}"))
                continue
            segments[utt] = (rec, start, end)
    utts: List[Utterance] = []
    for utt in sorted(text):
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
    return _validate(utts, bad), bad


# ------------------------------------------------------------------------------------------------------------------
# yesno

def read_yesno(corpus_dir: Pathlike) -> Tuple[List[Utterance], List[Utterance], List[BadItem]]:
    """``waves_yesno/<0|1>_..._<0|1>.wav`` (8 kHz, one speaker, eight words each: 1 = YES, 0 = NO); the first 31
    files (sorted) train and the other 29 test, as Kaldi's and Lhotse's yesno recipes split them."""
    corpus_dir = Path(corpus_dir)
    wav_dir = corpus_dir / "waves_yesno" if (corpus_dir / "waves_yesno").is_dir() else corpus_dir
    files = sorted(wav_dir.glob("*.wav"))
    if not files:
        raise CorpusError(f"{wav_dir}: no .wav files (expected the waves_yesno directory)")
    utts, bad = [], []
    for f in files:
        if not re.fullmatch(r"[01](_[01])*", f.stem):
            bad.append(BadItem(str(f), "file name is not a 0/1 sequence like 0_1_1_0_0_1_0_1"))
            continue
        words = " ".join("YES" if b == "1" else "NO" for b in f.stem.split("_"))
        utts.append(Utterance(f.stem, "yesno", f, words))
    utts = _validate(utts, bad)
    n_train = min(31, len(utts) - 1) if len(files) == 60 else max(1, len(utts) // 2)
    return utts[:n_train], utts[n_train:], bad


# ------------------------------------------------------------------------------------------------------------------
# Splits and manifests

def split_speakers(utts: Sequence[Utterance], num_speakers: int, what: str) -> Tuple[List[Utterance], List[Utterance]]:
    """(rest, held out): ``num_speakers`` whole speakers held out, chosen by a stable hash of their names."""
    speakers = sorted({u.speaker for u in utts}, key=lambda s: hashlib.md5(f"{what}:{s}".encode()).hexdigest())
    if num_speakers >= len(speakers):
        raise CorpusError(f"cannot hold out {num_speakers} {what} speaker(s): the corpus has {len(speakers)}")
    held = set(speakers[:num_speakers])
    return [u for u in utts if u.speaker not in held], [u for u in utts if u.speaker in held]


def _dev_from_train(train: List[Utterance], dev_fraction: float, dev_speakers: Optional[int]):
    if dev_speakers:
        return split_speakers(train, dev_speakers, "dev")
    if len({u.speaker for u in train}) < 2:
        # One speaker (yesno): a speaker-disjoint dev set is impossible, so hold out utterances instead.
        n_dev = max(1, int(round(dev_fraction * len(train))))
        order = sorted(train, key=lambda u: hashlib.md5(u.utt_id.encode()).hexdigest())
        held = {u.utt_id for u in order[:n_dev]}
        log.warning("one training speaker: dev = %d held-out utterances (not speaker-disjoint)", n_dev)
        return [u for u in train if u.utt_id not in held], [u for u in train if u.utt_id in held]
    return speaker_disjoint_split(train, dev_fraction)


def prepare_corpus(kind: str, output_dir: Pathlike, corpus_dir: Optional[Pathlike] = None,
                   train_dir: Optional[Pathlike] = None, dev_dir: Optional[Pathlike] = None,
                   test_dir: Optional[Pathlike] = None, skip_bad: bool = False, dev_fraction: float = 0.1,
                   dev_speakers: Optional[int] = None, test_speakers: Optional[int] = None,
                   parts: Optional[Dict[str, Sequence[str]]] = None, download: bool = False):
    """Validate a corpus of ``kind`` (:data:`CORPORA`) and write its train / dev / test cut manifests."""
    from .data import prepare_an4

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if kind not in CORPORA:
        raise CorpusError(f"unknown corpus kind {kind!r}; one of {CORPORA}")
    if kind == "an4":
        if dev_speakers or test_speakers:
            raise CorpusError("AN4 has its own test set; --dev-speakers/--test-speakers do not apply")
        return prepare_an4(corpus_dir, output_dir, skip_bad=skip_bad, dev_fraction=dev_fraction)
    source = corpus_dir or train_dir
    bad: List[BadItem] = []
    sets: Dict[str, List[Utterance]] = {"train": [], "dev": [], "test": []}
    if kind == "librispeech":
        corpus_dir = Path(corpus_dir)
        if download:
            from lhotse.recipes.librispeech import download_librispeech

            corpus_dir.mkdir(parents=True, exist_ok=True)
            download_librispeech(corpus_dir, dataset_parts=list(parts.get("download", ["mini_librispeech"])
                                                                 if parts else ["mini_librispeech"]))
        root = _librispeech_root(corpus_dir)
        found = librispeech_parts(root)
        if not found:
            raise CorpusError(f"{corpus_dir}: no LibriSpeech parts (train-clean-100, dev-clean, train-clean-5, ...); "
                              f"pass --download to fetch Mini LibriSpeech")
        given = {s: list(v) for s, v in (parts or {}).items() if s in ("train", "dev", "test")}
        # explicit parts replace the name-based choice for every split (an unnamed split is then empty)
        chosen = {s: given.get(s, []) if given else [p for p in found if p.startswith(s)]
                  for s in ("train", "dev", "test")}
        missing = sorted({p for ps in chosen.values() for p in ps} - set(found))
        if missing:
            raise CorpusError(f"{corpus_dir}: no part(s) {missing} (found {found})")
        if not chosen["train"]:
            raise CorpusError(f"{corpus_dir}: no train* part among {found}")
        if not chosen["test"] and not test_speakers:  # Mini LibriSpeech: test on dev-clean-2, dev from train
            chosen["test"], chosen["dev"] = chosen["dev"], []
        log.info("LibriSpeech parts: %s", chosen)
        for split, names in chosen.items():
            for part in names:
                utts, part_bad = read_librispeech(root, part)
                sets[split] += utts
                bad += part_bad
    elif kind == "kaldi":
        if train_dir is None:
            raise CorpusError("a Kaldi-directory corpus needs --train-dir (and --test-dir, or --test-speakers)")
        for split, d in (("train", train_dir), ("dev", dev_dir), ("test", test_dir)):
            if d is not None:
                utts, d_bad = read_kaldi_dir(d)
                sets[split] += utts
                bad += d_bad
    elif kind == "yesno":
        corpus_dir = Path(corpus_dir)
        if download:
            from lhotse.recipes.yesno import download_yesno

            download_yesno(corpus_dir)
        sets["train"], sets["test"], bad = read_yesno(corpus_dir)
    report_bad(bad, source, output_dir, skip_bad)
    if test_speakers:
        if sets["test"]:
            raise CorpusError("--test-speakers makes a test set out of train, but the corpus has one already")
        sets["train"], sets["test"] = split_speakers(sets["train"], test_speakers, "test")
    if not sets["test"]:
        raise CorpusError(f"{source}: no test set (give a test directory/part or --test-speakers N)")
    if not sets["dev"]:
        sets["train"], sets["dev"] = _dev_from_train(sets["train"], dev_fraction, dev_speakers)
    elif dev_speakers:
        raise CorpusError("--dev-speakers carves dev out of train, but the corpus has a dev set already")
    shared = {u.speaker for u in sets["train"]} & {u.speaker for u in sets["test"]}
    if shared and kind != "yesno":
        log.warning("%d speaker(s) appear in both train and test, e.g. %s", len(shared), sorted(shared)[:3])
    return write_splits(sets, output_dir, source, sampling_rate=TARGET_RATE)
