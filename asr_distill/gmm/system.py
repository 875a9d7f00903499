"""One GMM system of the bootstrap chain (Kaldi's mono, tri1, tri2, tri3): what it reads, its states, its model and
its training alignment, saved in its own directory (``EXP/gmm/<name>/``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ..utils import atomic_path, read_json, write_json
from .features import GmmFeatures
from .inventory import StateInventory
from .model import GmmModel

__all__ = ["GmmSystem", "GMM_SYSTEMS", "DESCRIPTIONS", "check_gmm_systems"]

GMM_SYSTEMS = ("mono", "tri1", "tri2", "tri3")
DESCRIPTIONS = {"mono": "monophone, MFCC+deltas", "tri1": "triphone, MFCC+deltas", "tri2": "triphone, LDA+MLLT",
                "tri3": "triphone, LDA+MLLT+SAT (fMLLR)"}


def check_gmm_systems(systems: Sequence[str]) -> List[str]:
    """Validate a ``--gmm-stages`` chain: known names, in order, starting with mono; SAT needs LDA+MLLT below it."""
    systems = list(systems)
    unknown = [s for s in systems if s not in GMM_SYSTEMS]
    if unknown or not systems:
        raise ValueError(f"unknown GMM system(s) {unknown} (choose from {', '.join(GMM_SYSTEMS)})")
    if systems[0] != "mono":
        raise ValueError(f"the GMM chain starts with mono (every tree needs an alignment), not {systems[0]!r}")
    order = [GMM_SYSTEMS.index(s) for s in systems]
    if order != sorted(set(order)):
        raise ValueError(f"GMM systems must be listed once each in the order {', '.join(GMM_SYSTEMS)}: {systems}")
    if "tri3" in systems and "tri2" not in systems:
        raise ValueError("tri3 (SAT) is trained on tri2's LDA+MLLT features: list tri2 before it")
    return systems


@dataclass
class GmmSystem:
    """A trained GMM system: what it reads, its states, its model, its training alignment (transition-ids)."""

    name: str
    features: GmmFeatures
    inventory: StateInventory
    gmm: GmmModel
    train_alis: Dict[str, List[int]]

    def save(self, out_dir: Path, options: dict, train_seconds: float) -> None:
        self.features.save(out_dir)
        self.inventory.save(out_dir / "inventory")
        with atomic_path(out_dir / "ali_train.npz", suffix=".npz") as tmp:
            np.savez(tmp, **{u: np.asarray(a, dtype=np.int32) for u, a in self.train_alis.items()})
        self.gmm.save(out_dir / "final_gmm.npz")
        write_json({"name": self.name, "options": options, "train_seconds": round(train_seconds, 1),
                    "num_pdfs": self.inventory.num_pdfs,
                    "num_gauss": int(self.gmm.weights.size)}, out_dir / "system.json")  # last: training finished

    @classmethod
    def load(cls, in_dir: Path) -> "GmmSystem":
        z = np.load(in_dir / "ali_train.npz", allow_pickle=False)
        return cls(read_json(in_dir / "system.json")["name"], GmmFeatures.load(in_dir),
                   StateInventory.load(in_dir / "inventory"), GmmModel.load(in_dir / "final_gmm.npz"),
                   {u: z[u].tolist() for u in z.files})
