"""LibriSpeech and Mini LibriSpeech: ``<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` listing
``<utt-id> WORDS``, audio in ``<utt-id>.flac`` (``.wav`` accepted) beside it.

Why not Lhotse's ``prepare_librispeech``: it drops a transcript whose audio is missing with only a log warning and
stops at the first unreadable file, where this project reports every bad item by name and drops nothing silently.
The layout, the part names (Lhotse's ``LIBRISPEECH``/``MINI_LIBRISPEECH``) and the download are Lhotse's.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH

from ..utils import Pathlike
from .corpus import BadItem, CorpusError, Utterance, normalise_text, read_lines, validate_audio

__all__ = ["librispeech_parts", "librispeech_root", "read_librispeech"]


def librispeech_parts(corpus_dir: Pathlike) -> List[str]:
    """The LibriSpeech / Mini LibriSpeech part directories present in ``corpus_dir`` (a ``LibriSpeech`` folder
    inside it is looked into as well, as the archives unpack)."""
    corpus_dir = Path(corpus_dir)
    known = set(LIBRISPEECH) | set(MINI_LIBRISPEECH)
    return sorted(p.name for p in corpus_dir.iterdir() if p.is_dir() and p.name in known)


def librispeech_root(corpus_dir: Path) -> Path:
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
        for lineno, line, problem in read_lines(trans):
            if not line.strip():
                continue
            fields = line.split(maxsplit=1)  # any whitespace after the id, as Kaldi's readers split
            uid, text = fields[0], (fields[1] if len(fields) > 1 else "")
            where = f"{trans}:{lineno}"
            if uid in seen:
                bad.append(BadItem(uid, f"duplicate utterance id ({where})"))
                continue
            seen.add(uid)
            text = normalise_text(text)
            audio = next((trans.parent / f"{uid}{ext}" for ext in (".flac", ".wav")
                          if (trans.parent / f"{uid}{ext}").is_file()), None)
            if problem:  # left out, reported once: by its id, or by its line where the id itself is damaged
                bad.append(BadItem(where if "\ufffd" in uid else uid, problem))
                if audio is not None:
                    listed_audio.add(audio.resolve())
                continue
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
    return validate_audio(utts, bad), bad
