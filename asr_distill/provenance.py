"""Fingerprints of what a stage read: its marker (``EXP/.done/<stage>``) records them next to its options, so that a
finished stage asked again after its inputs changed (a corpus edited, a manifest or a model rewritten by hand)
refuses, naming what changed, instead of reporting "already done" over stale outputs.

Inputs are the files of the experiment directory a stage reads (:data:`STAGE_INPUTS`) and the files or
directories its options name (a corpus, a lexicon).  A file's fingerprint is its content's SHA-1, or for a large
one its size and the SHA-1 of its first and last MiB; a directory's is one SHA-1 over its files' relative paths,
sizes and, for transcripts, lists and other small files, contents.  Modification times are left out on purpose: a
copied experiment (``cp -r``) keeps its provenance.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional

from .utils import Pathlike

__all__ = ["STAGE_INPUTS", "file_fingerprint", "tree_fingerprint", "stage_inputs", "describe_changes"]

# What each stage reads from the experiment directory (globs; a stage's own outputs never appear in its list).
STAGE_INPUTS: Dict[str, tuple] = {
    "prepare": (),
    "features": ("data/cuts_*.jsonl.gz",),
    "lang": ("data/cuts_train.jsonl.gz",),
    "gmm": ("data/fbank_*.jsonl.gz", "data/mfcc_*.jsonl.gz", "data/cmvn_*.npz", "lang/L_disambig.fst", "lang/G.fst",
            "lang/phones.txt", "lang/words.txt", "lang/topo"),
    "teachers": ("gmm/cuts_*.jsonl.gz", "gmm/pdf_counts.npy", "data/cmvn_fbank.npz"),
    "evaluate": ("teachers/teacher*/best.pt", "gmm/cuts_*.jsonl.gz", "gmm/graph/HCLG.fst"),
    "distill": ("teachers/teacher*/best.pt", "gmm/cuts_*.jsonl.gz", "gmm/graph/HCLG.fst",
                "decode/ensemble-*/wer.json"),
}

_WHOLE = 64 << 20  # files up to this size are hashed whole
_EDGE = 1 << 20  # larger ones: size + first and last MiB
_SMALL = 64 << 10  # in a directory, files up to this size are hashed by content (transcripts, lists, short audio)
_TEXT_NAMES = {"text", "segments", "wav.scp", "utt2spk", "spk2utt", "spk2gender", "reco2file_and_channel"}
_TEXT_SUFFIXES = {".txt", ".transcription", ".fileids", ".dic", ".lst", ".scp"}


def _sha1_file(path: Path, limit: Optional[int] = None) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        if limit is None:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(limit))
            f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
            h.update(f.read(limit))
    return h.hexdigest()


def file_fingerprint(path: Pathlike) -> str:
    path = Path(path)
    size = path.stat().st_size
    return _sha1_file(path) if size <= _WHOLE else f"{size}:{_sha1_file(path, _EDGE)}"


def tree_fingerprint(root: Pathlike) -> str:
    """One digest of a directory tree: every file's relative path and size, and the content of small and text
    files (symlinks followed, as the readers follow them)."""
    root = Path(root)
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                size = path.stat().st_size
            except OSError:  # a dangling link: its name is the fingerprint
                size = -1
            h.update(f"{path.relative_to(root)}\0{size}\0".encode("utf-8", "surrogateescape"))
            if 0 <= size and (size <= _SMALL or name in _TEXT_NAMES or path.suffix in _TEXT_SUFFIXES):
                h.update(_sha1_file(path).encode())
    return h.hexdigest()


def _fingerprint(path: Path) -> str:
    return tree_fingerprint(path) if path.is_dir() else file_fingerprint(path)


def stage_inputs(exp_dir: Pathlike, stage: str, options: Mapping[str, object]) -> Dict[str, str]:
    """``{input: fingerprint}`` for ``stage``: its experiment files (relative names) and the existing files or
    directories named by its ``options`` (``--option: path``)."""
    exp_dir = Path(exp_dir)
    out: Dict[str, str] = {}
    for pattern in STAGE_INPUTS.get(stage, ()):
        for path in sorted(exp_dir.glob(pattern)):
            if path.is_file():
                out[path.relative_to(exp_dir).as_posix()] = file_fingerprint(path)
    for key, value in options.items():
        for item in _paths(value):
            if item.exists():
                out[f"--{key.replace('_', '-')}: {item}"] = _fingerprint(item)
    return out


def _paths(value: object) -> Iterable[Path]:
    if isinstance(value, str) and value and ("/" in value or os.path.exists(value)):
        yield Path(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _paths(v)


def describe_changes(recorded: Mapping[str, str], now: Mapping[str, str], limit: int = 5) -> str:
    """``"data/cuts_train.jsonl.gz changed, lang/G.fst missing now"``; empty when nothing differs."""
    parts = [f"{k} changed" for k in recorded if k in now and now[k] != recorded[k]]
    parts += [f"{k} missing now" for k in recorded if k not in now]
    parts += [f"{k} new" for k in now if k not in recorded]
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more
