"""Features: fbank (for the DNNs) and MFCC (for the GMM) stored Lilcom-compressed with the cuts, and the CMVN
statistics that normalise them when they are read (:func:`load_normalised`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter, Mfcc, MfccConfig

from ..utils import Pathlike, atomic_path
from .corpus import set_soundfile_backend, write_manifest

__all__ = ["FEATURE_CONFIGS", "feature_extractor", "compute_features", "CmvnStats", "compute_cmvn", "moments",
           "load_features", "load_normalised", "add_deltas"]

FEATURE_CONFIGS = {
    # 40 log-mel filterbanks as in the paper; Lhotse's defaults otherwise (high_freq=-400, no dither), kept identical
    # at export time.
    "fbank": dict(num_filters=40),
    # 13 MFCCs for the GMM; deltas and CMVN are applied when the GMM reads them.
    "mfcc": dict(num_ceps=13, num_filters=23),
}


def feature_extractor(kind: str):
    if kind == "fbank":
        return Fbank(FbankConfig(**FEATURE_CONFIGS["fbank"]))
    if kind == "mfcc":
        return Mfcc(MfccConfig(**FEATURE_CONFIGS["mfcc"]))
    raise ValueError(f"unknown feature kind {kind!r}")


def compute_features(cuts: CutSet, kind: str, storage_dir: Pathlike, manifest_path: Pathlike) -> CutSet:
    """Extract ``kind`` features (Lilcom-compressed, chunked) and write the cut manifest that points to them.

    The features go to a temporary storage file, which is renamed onto the final name once complete, and the
    manifest is written last, atomically: an interrupted run leaves no manifest (the stage is redone), and a reader
    of the previous manifest keeps reading the previous, complete, storage file.
    """
    set_soundfile_backend()
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    name = Path(manifest_path).name.split(".")[0]
    final, tmp = storage_dir / f"{name}.lca", storage_dir / f".{name}.{os.getpid()}.tmp.lca"
    # Worker processes would lose the soundfile backend set above, so extraction runs in this process.
    with_feats = cuts.compute_and_store_features(
        extractor=feature_extractor(kind), storage_path=tmp, num_jobs=1, storage_type=LilcomChunkyWriter,
        progress_bar=True)
    os.replace(tmp, final)
    with_feats = CutSet.from_cuts(_with_storage(c, final) for c in with_feats)
    write_manifest(with_feats, manifest_path)
    return with_feats


def _with_storage(cut, storage: Path):
    cut.features.storage_path = str(storage)
    return cut


@dataclass
class CmvnStats:
    """Per-speaker (and global) mean / standard deviation of a feature kind, for mean-variance normalisation.

    ``mode="speaker"`` normalises each utterance with its speaker's statistics (unseen speakers at test time get
    their own statistics computed from their utterances: like Kaldi's per-speaker CMVN on a test set); ``"global"``
    uses one mean/std from the training set; ``"none"`` leaves features alone.
    """

    mode: str
    global_mean: np.ndarray
    global_std: np.ndarray
    speaker_mean: Dict[str, np.ndarray] = field(default_factory=dict)
    speaker_std: Dict[str, np.ndarray] = field(default_factory=dict)
    norm_vars: bool = True  # False: mean normalisation only (Kaldi's default for GMM features)

    def apply(self, feats: np.ndarray, speaker: str) -> np.ndarray:
        if self.mode == "none":
            return feats
        if self.mode == "speaker" and speaker in self.speaker_mean:
            mean, std = self.speaker_mean[speaker], self.speaker_std[speaker]
        else:
            mean, std = self.global_mean, self.global_std
        return (feats - mean) / std if self.norm_vars else feats - mean

    def save(self, path: Pathlike) -> None:
        arrays = {"global_mean": self.global_mean, "global_std": self.global_std,
                  "mode": np.array(self.mode),
                  "norm_vars": np.array(self.norm_vars)}
        for spk in self.speaker_mean:
            arrays[f"mean/{spk}"] = self.speaker_mean[spk]
            arrays[f"std/{spk}"] = self.speaker_std[spk]
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: Pathlike) -> "CmvnStats":
        z = np.load(path, allow_pickle=False)
        stats = cls(str(z["mode"]), z["global_mean"], z["global_std"], norm_vars=bool(z["norm_vars"]))
        for key in z.files:
            if key.startswith("mean/"):
                spk = key[5:]
                stats.speaker_mean[spk] = z[key]
                stats.speaker_std[spk] = z[f"std/{spk}"]
        return stats


def moments(mats: Iterable[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    n, s, s2 = 0, 0.0, 0.0
    for m in mats:
        m = m.astype(np.float64)
        n += len(m)
        s = s + m.sum(0)
        s2 = s2 + (m * m).sum(0)
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 1e-10))
    return mean.astype(np.float32), std.astype(np.float32)


def compute_cmvn(cutsets: Sequence, mode: str = "speaker", global_from=None, norm_vars: bool = True) -> CmvnStats:
    """Statistics of the loaded features: global ones from ``global_from`` (the training cuts), per-speaker ones from
    every cut of ``cutsets`` (a speaker's own statistics need no labels, so test speakers get theirs too)."""
    if mode not in ("speaker", "global", "none"):
        raise ValueError(f"CMVN mode must be speaker, global or none, not {mode!r}")
    global_from = global_from if global_from is not None else cutsets[0]
    gmean, gstd = moments(c.load_features() for c in global_from)
    stats = CmvnStats(mode, gmean, gstd, norm_vars=norm_vars)
    if mode == "speaker":
        by_speaker: Dict[str, List] = {}
        for cuts in cutsets:
            for c in cuts:
                by_speaker.setdefault(c.supervisions[0].speaker, []).append(c)
        for spk, cs in by_speaker.items():
            stats.speaker_mean[spk], stats.speaker_std[spk] = moments(c.load_features() for c in cs)
    return stats


def load_features(cuts, cmvn: Optional[CmvnStats] = None) -> Tuple[List[str], List[np.ndarray]]:
    """All cuts' features as float32 arrays, CMVN applied; returns (utterance ids, matrices)."""
    ids, mats = [], []
    for c in cuts:
        ids.append(c.id)
        mats.append(load_normalised(c, cmvn))
    return ids, mats


def load_normalised(cut, cmvn: Optional[CmvnStats]) -> np.ndarray:
    """One cut's features as float32 ``(frames, dim)``, CMVN applied (the speaker's, else global statistics)."""
    feats = cut.load_features().astype(np.float32)
    if cmvn is None:
        return feats
    return cmvn.apply(feats, cut.supervisions[0].speaker).astype(np.float32)


def add_deltas(feats: np.ndarray, order: int = 2, window: int = 2) -> np.ndarray:
    """Kaldi's ``add-deltas``: append delta and delta-delta features (regression over +-``window`` frames, edge
    frames repeated)."""
    # As Kaldi's DeltaFeatures: the order-i filter is the i-fold convolution of the first-order regression window,
    # applied to the ORIGINAL features with clamped (edge-repeated) frame indices.  (Re-applying the first-order
    # filter to edge-padded deltas differs from Kaldi in the first/last 2*window frames.)
    denom = 2 * sum(n * n for n in range(1, window + 1))
    base = np.arange(-window, window + 1, dtype=np.float64) / denom
    scales = [np.ones(1)]
    for _ in range(order):
        scales.append(np.convolve(scales[-1], base))
    t = len(feats)
    out = []
    for s in scales:
        m = (len(s) - 1) // 2
        padded = np.pad(feats.astype(np.float64), ((m, m), (0, 0)), mode="edge")
        out.append(sum(c * padded[k:k + t] for k, c in enumerate(s) if c != 0))
    return np.concatenate(out, axis=1).astype(np.float32)

