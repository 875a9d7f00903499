"""Stage 0's library side: any supported corpus -> validated ``cuts_{train,dev,test}.jsonl.gz`` manifests.

Splits.  AN4 has its own train and test; a speaker-disjoint dev set is carved from train.  LibriSpeech parts named
``train*`` train, ``dev*`` tune, ``test*`` test; a corpus with no test part (Mini LibriSpeech: ``train-clean-5`` +
``dev-clean-2``) tests on its dev parts and carves dev out of train.  A corpus shipped as one directory gets
speaker-disjoint dev and test sets from ``dev_speakers``/``test_speakers`` (chosen by a stable hash of the speaker
names).  A dev set is never taken from test.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from lhotse.recipes.librispeech import download_librispeech
from lhotse.recipes.yesno import download_yesno

from ..utils import Pathlike
from .an4 import prepare_an4
from .corpus import (BadItem, CorpusError, Utterance, report_bad, speaker_disjoint_split, split_speakers,
                     write_splits, TARGET_RATE)
from .kaldi import read_kaldi_dir
from .librispeech import librispeech_parts, librispeech_root, read_librispeech
from .yesno import read_yesno

__all__ = ["CORPORA", "prepare_corpus"]

log = logging.getLogger(__name__)

Sets = Dict[str, List[Utterance]]


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


def _librispeech_parts(corpus_dir: Path, parts: Optional[Dict[str, Sequence[str]]], test_speakers) -> Dict:
    """Which parts make each split: explicit ``parts`` replace the name-based choice for every split."""
    found = librispeech_parts(corpus_dir)
    if not found:
        raise CorpusError(f"{corpus_dir}: no LibriSpeech parts (train-clean-100, dev-clean, train-clean-5, ...); "
                          f"pass --download to fetch Mini LibriSpeech")
    given = {s: list(v) for s, v in (parts or {}).items() if s in ("train", "dev", "test")}
    chosen = {s: given.get(s, []) if given else [p for p in found if p.startswith(s)] for s in ("train", "dev", "test")}
    missing = sorted({p for ps in chosen.values() for p in ps} - set(found))
    if missing:
        raise CorpusError(f"{corpus_dir}: no part(s) {missing} (found {found})")
    if not chosen["train"]:
        raise CorpusError(f"{corpus_dir}: no train* part among {found}")
    if not chosen["test"] and not test_speakers:  # Mini LibriSpeech: test on dev-clean-2, dev from train
        chosen["test"], chosen["dev"] = chosen["dev"], []
    log.info("LibriSpeech parts: %s", chosen)
    return chosen


def _read_librispeech(corpus_dir=None, parts=None, download=False, test_speakers=None, **_) -> Tuple[Sets, List]:
    corpus_dir = Path(corpus_dir)
    if download:
        corpus_dir.mkdir(parents=True, exist_ok=True)
        download_librispeech(corpus_dir, dataset_parts=list((parts or {}).get("download", ["mini_librispeech"])))
    root = librispeech_root(corpus_dir)
    sets: Sets = {"train": [], "dev": [], "test": []}
    bad: List[BadItem] = []
    for split, names in _librispeech_parts(root, parts, test_speakers).items():
        for part in names:
            utts, part_bad = read_librispeech(root, part)
            sets[split] += utts
            bad += part_bad
    return sets, bad


def _read_kaldi(train_dir=None, dev_dir=None, test_dir=None, **_) -> Tuple[Sets, List]:
    if train_dir is None:
        raise CorpusError("a Kaldi-directory corpus needs --train-dir (and --test-dir, or --test-speakers)")
    sets: Sets = {"train": [], "dev": [], "test": []}
    bad: List[BadItem] = []
    for split, d in (("train", train_dir), ("dev", dev_dir), ("test", test_dir)):
        if d is not None:
            utts, d_bad = read_kaldi_dir(d)
            sets[split] += utts
            bad += d_bad
    return sets, bad


def _read_yesno(corpus_dir=None, download=False, **_) -> Tuple[Sets, List]:
    corpus_dir = Path(corpus_dir)
    if download:
        download_yesno(corpus_dir)
    train, test, bad = read_yesno(corpus_dir)
    return {"train": train, "dev": [], "test": test}, bad


# kind -> reader(**options) -> ({split: utterances}, problems).  AN4 has a preparer of its own.
READERS: Dict[str, Callable[..., Tuple[Sets, List]]] = {
    "librispeech": _read_librispeech, "kaldi": _read_kaldi, "yesno": _read_yesno}
CORPORA = ("an4", *READERS)


def prepare_corpus(kind: str, output_dir: Pathlike, corpus_dir: Optional[Pathlike] = None,
                   train_dir: Optional[Pathlike] = None, dev_dir: Optional[Pathlike] = None,
                   test_dir: Optional[Pathlike] = None, skip_bad: bool = False, dev_fraction: float = 0.1,
                   dev_speakers: Optional[int] = None, test_speakers: Optional[int] = None,
                   parts: Optional[Dict[str, Sequence[str]]] = None, download: bool = False):
    """Validate a corpus of ``kind`` (:data:`CORPORA`) and write its train / dev / test cut manifests."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if kind not in CORPORA:
        raise CorpusError(f"unknown corpus kind {kind!r}; one of {', '.join(CORPORA)}")
    if kind == "an4":
        if dev_speakers or test_speakers:
            raise CorpusError("AN4 has its own test set; --dev-speakers/--test-speakers do not apply")
        return prepare_an4(corpus_dir, output_dir, skip_bad=skip_bad, dev_fraction=dev_fraction)
    # Kaldi: up to three directories, all named (a problem in the test one must not read as the train one's)
    source = corpus_dir or ", ".join(str(d) for d in (train_dir, dev_dir, test_dir) if d is not None)
    sets, bad = READERS[kind](corpus_dir=corpus_dir, train_dir=train_dir, dev_dir=dev_dir, test_dir=test_dir,
                              parts=parts, download=download, test_speakers=test_speakers)
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
