"""What a GMM system reads, from the per-speaker mean-normalised MFCCs: deltas and delta-deltas (mono, tri1), or
frames spliced +-3 and projected by LDA+MLLT (tri2), followed by a per-speaker fMLLR (tri3, speaker-adaptive).

Saved as ``features.json`` + ``lda_mllt.npy`` + ``fmllr_<split>.npz`` (speaker -> (D, D+1) transform) in a
system's directory, readable without this toolkit."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np

from ..data.features import add_deltas
from ..utils import Pathlike, atomic_path, read_json, write_json
from .fmllr import apply_fmllr
from .lda_mllt import splice_frames

__all__ = ["GmmFeatures", "FEATURE_KINDS", "adapt"]

FEATURE_KINDS = ("delta", "lda")


def adapt(feats: Mapping[str, np.ndarray], speakers: Mapping[str, str], transforms: Mapping[str, np.ndarray]
          ) -> Dict[str, np.ndarray]:
    """Each utterance through its speaker's fMLLR transform (the identity for a speaker without one: none of
    their utterances aligned)."""
    dim = next(iter(feats.values())).shape[1] if feats else 0
    identity = np.concatenate([np.eye(dim), np.zeros((dim, 1))], axis=1)
    return {u: apply_fmllr(transforms.get(speakers[u], identity), f).astype(np.float32) for u, f in feats.items()}


@dataclass
class GmmFeatures:
    kind: str = "delta"
    splice: int = 3
    lda_mllt: Optional[np.ndarray] = None  # (dim, 13 * (2 * splice + 1)): LDA, then every MLLT composed on top
    fmllr: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)  # split -> speaker -> [A b]

    def __post_init__(self):
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"unknown GMM feature kind {self.kind!r} (one of {FEATURE_KINDS})")

    @property
    def speaker_adapted(self) -> bool:
        return bool(self.fmllr)

    def speaker_independent(self, mfcc: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The features before any speaker transform."""
        if self.kind == "delta":
            return {u: add_deltas(f) for u, f in mfcc.items()}
        if self.lda_mllt is None:
            raise ValueError("LDA features without an LDA matrix")
        m = self.lda_mllt.astype(np.float32)
        return {u: splice_frames(f, self.splice).astype(np.float32) @ m.T for u, f in mfcc.items()}

    def __call__(self, split: str, mfcc: Mapping[str, np.ndarray], speakers: Mapping[str, str]
                 ) -> Dict[str, np.ndarray]:
        """``split``'s features; with fMLLR, each utterance gets its speaker's transform for the split (the identity
        for a speaker none could be estimated for: no utterance of theirs aligned)."""
        feats = self.speaker_independent(mfcc)
        if not self.speaker_adapted:
            return feats
        transforms = self.fmllr.get(split)
        if transforms is None:
            raise ValueError(f"no fMLLR transforms for split {split!r} (have {sorted(self.fmllr)})")
        return adapt(feats, speakers, transforms)

    def save(self, out_dir: Pathlike) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.lda_mllt is not None:
            with atomic_path(out_dir / "lda_mllt.npy") as tmp:
                np.save(tmp, self.lda_mllt)
        for split, transforms in self.fmllr.items():
            with atomic_path(out_dir / f"fmllr_{split}.npz", suffix=".npz") as tmp:
                np.savez(tmp, **transforms)
        write_json({"kind": self.kind, "splice": self.splice, "fmllr_splits": sorted(self.fmllr)},
                   out_dir / "features.json")

    @classmethod
    def load(cls, in_dir: Pathlike) -> "GmmFeatures":
        in_dir = Path(in_dir)
        meta = read_json(in_dir / "features.json")
        lda = np.load(in_dir / "lda_mllt.npy", allow_pickle=False) if meta["kind"] == "lda" else None
        fmllr = {}
        for split in meta["fmllr_splits"]:
            z = np.load(in_dir / f"fmllr_{split}.npz", allow_pickle=False)
            fmllr[split] = {k: z[k] for k in z.files}
        return cls(meta["kind"], meta["splice"], lda, fmllr)
