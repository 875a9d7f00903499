"""Untranscribed audio as a transfer set (Li et al. 2014): any directory of audio files, without transcripts,
becomes extra training frames that only the teachers label.

:func:`prepare_transfer` reads every audio file under the directory (``.wav``, ``.flac``, ``.sph``, ``.ogg``; each
one decoded once, as stage 0 checks a corpus), resamples it to the corpus rate, cuts recordings longer than
``max_duration`` into windows, computes the same fbank features as stage 1 and CMVN statistics per directory (a
LibriSpeech-style ``speaker/chapter/`` layout normalises each chapter on its own; a flat directory is one "speaker"),
and writes labelled cuts whose ``pdf_ids`` are all -1 (no label): the distillation loss drops the hard-label term on
such frames and learns only the teachers' posteriors there.  Hard-label baselines never see them.

Everything lives under ``EXP/transfer/`` (``cuts_transfer.jsonl.gz``, ``cmvn_fbank.npz``, ``transfer.json``); a
second call with the same directory and settings reuses it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import numpy as np

from ..utils import Pathlike, read_json, write_json
from .arrays import attach_frame_arrays
from .corpus import TARGET_RATE, BadItem, CorpusError, Utterance, make_cutset, report_bad, validate_audio, \
    write_manifest
from .features import CmvnStats, compute_cmvn, compute_features

__all__ = ["AUDIO_SUFFIXES", "NO_LABEL", "find_audio", "prepare_transfer", "transfer_paths"]

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".sph", ".ogg")
NO_LABEL = -1  # a frame's pdf-id when nothing aligned it: the loss's cross-entropy term skips it


def find_audio(audio_dir: Pathlike) -> List[Path]:
    """Every audio file under ``audio_dir`` (recursively, sorted); :class:`CorpusError` when there is none."""
    root = Path(audio_dir)
    if not root.is_dir():
        raise CorpusError(f"transfer data {root}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise CorpusError(f"transfer data {root}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under it")
    return files


def _long_enough(cut) -> bool:
    return cut.duration >= 0.1


def transfer_paths(transfer_dir: Pathlike) -> dict:
    d = Path(transfer_dir)
    return {"dir": d, "raw": d / "cuts_raw.jsonl.gz", "fbank": d / "fbank_transfer.jsonl.gz",
            "labelled": d / "cuts_transfer.jsonl.gz", "cmvn": d / "cmvn_fbank.npz", "meta": d / "transfer.json",
            "feats": d / "feats", "arrays": d / "pdf_ids"}


def _utterances(root: Path, files: List[Path]) -> List[Utterance]:
    utts = []
    for f in files:
        rel = f.relative_to(root)
        # ids from the relative path: unique however deep the layout, stable across machines
        uid = "transfer-" + "_".join(rel.with_suffix("").parts)
        speaker = "transfer-" + ("_".join(rel.parent.parts) or "all")
        utts.append(Utterance(utt_id=uid, speaker=speaker, audio_path=f, text=""))
    return utts


def prepare_transfer(transfer_dir: Pathlike, audio_dir: Pathlike, train_fbank_cuts, cmvn_mode: str = "speaker",
                     max_duration: float = 30.0, skip_bad: bool = False) -> dict:
    """Make ``transfer_dir`` hold the transfer set of ``audio_dir`` (see the module docstring) and return its
    description (``transfer.json``).  ``train_fbank_cuts``: the training set's fbank cuts, whose global statistics
    normalise the transfer audio when its mode is ``global`` (as stage 1 does for every split)."""
    paths = transfer_paths(transfer_dir)
    root = Path(audio_dir).resolve()
    settings = {"audio_dir": str(root), "max_duration": float(max_duration), "cmvn_mode": cmvn_mode,
                "sampling_rate": TARGET_RATE}
    if paths["meta"].exists() and paths["labelled"].exists():
        meta = read_json(paths["meta"])
        if {k: meta.get(k) for k in settings} == settings:
            return meta
        log.info("%s was made from other settings (%s): made again", paths["dir"], meta.get("audio_dir"))
    files = find_audio(root)
    bad: List[BadItem] = []
    utts = validate_audio(_utterances(root, files), bad)
    report_bad(bad, root, paths["dir"], skip_bad)
    if not utts:
        raise CorpusError(f"transfer data {root}: none of its {len(files)} audio file(s) could be read")
    paths["dir"].mkdir(parents=True, exist_ok=True)
    cuts = make_cutset(utts, TARGET_RATE)
    # long recordings in windows: a frame's context never needs more, and the streaming reader's chunks stay small
    if max_duration > 0:  # (a last window of under 0.1 s holds too few frames to be worth its own utterance)
        cuts = cuts.cut_into_windows(duration=max_duration).filter(_long_enough).to_eager()
    write_manifest(cuts, paths["raw"])
    with_feats = compute_features(cuts, "fbank", paths["feats"], paths["fbank"])
    stats: CmvnStats = compute_cmvn([with_feats], cmvn_mode, global_from=train_fbank_cuts, norm_vars=True)
    stats.save(paths["cmvn"])
    frames = attach_frame_arrays(((c, {"pdf_ids": np.full(c.num_frames, NO_LABEL, dtype=np.int32)})
                                  for c in with_feats), paths["arrays"], paths["labelled"])
    meta = {**settings, "files": len(utts), "cuts": frames, "frames": int(sum(c.num_frames for c in with_feats)),
            "hours": round(sum(c.duration for c in with_feats) / 3600, 3)}
    write_json(meta, paths["meta"])
    log.info("transfer data %s: %d files, %d cuts, %.2f h, %d frames", root, meta["files"], meta["cuts"],
             meta["hours"], meta["frames"])
    return meta
