"""The yesno corpus: ``waves_yesno/<0|1>_..._<0|1>.wav`` (8 kHz, one speaker, eight words each)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

from ..utils import Pathlike
from .corpus import BadItem, CorpusError, Utterance, validate_audio

__all__ = ["read_yesno"]


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
    utts = validate_audio(utts, bad)
    n_train = min(31, len(utts) - 1) if len(files) == 60 else max(1, len(utts) // 2)
    return utts[:n_train], utts[n_train:], bad
