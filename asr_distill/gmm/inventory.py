"""The HMM-state inventory of an acoustic model: topology, context-dependency tree, transition model, and the
transition-id -> pdf map.

Saved as ``topo`` (Kaldi text), ``tree`` (Kaldi binary, readable by Kaldi tools), ``transition_stats.npy`` (the
transition counts that re-estimate the trained transition probabilities; none before training) and
``tid2pdf.txt`` (what a deployed decoder needs).  Only the monophone tree exists today; a tied-state triphone
tree is another constructor of the same class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import kaldi_hmm_gmm as khg
import numpy as np
import torch

from ..fst import write_tid2pdf
from ..lang import Lang
from ..utils import Pathlike, atomic_path, atomic_write_text, read_json, write_json

__all__ = ["StateInventory"]


class StateInventory:
    """HMM states of the acoustic model: topology + tree + transition model."""

    def __init__(self, topo_text: str, transition_stats: Optional[np.ndarray] = None):
        self.topo_text = topo_text
        self.topo = khg.HmmTopology()
        self.topo.read(topo_text)
        self.tree = khg.monophone_context_dependency(phones=self.topo.phones,
                                                     phone2num_pdf_classes=self.topo.get_phone_to_num_pdf_classes())
        self.transition_model = khg.TransitionModel(ctx_dep=self.tree, hmm_topo=self.topo)
        self.transition_stats = transition_stats
        if transition_stats is not None:
            self.transition_model.mle_update(torch.from_numpy(transition_stats.astype(np.float64)),
                                             khg.MleTransitionUpdateConfig())

    @classmethod
    def monophone(cls, lang: Lang) -> "StateInventory":
        return cls(lang.topo_text)

    @property
    def num_pdfs(self) -> int:
        return self.tree.num_pdfs

    @property
    def num_transition_ids(self) -> int:
        return self.transition_model.num_transition_ids

    @property
    def tid2pdf(self) -> np.ndarray:
        """``tid2pdf[t]`` = pdf of transition-id ``t`` (index 0, which is no transition-id, maps to pdf 0)."""
        arr = np.asarray(self.transition_model.transition_id_to_pdf_array(), dtype=np.int64)
        if len(arr) == self.num_transition_ids:  # some versions omit the unused index 0
            arr = np.concatenate([[0], arr])
        return arr

    def tids_to_pdfs(self, tids: Sequence[int]) -> np.ndarray:
        return self.tid2pdf[np.asarray(tids, dtype=np.int64)]

    def update_transitions(self, stats: np.ndarray) -> None:
        self.transition_stats = stats
        self.transition_model.mle_update(torch.from_numpy(stats.astype(np.float64)), khg.MleTransitionUpdateConfig())

    def save(self, out_dir: Pathlike) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "topo", self.topo_text)
        with atomic_path(out_dir / "tree", suffix="") as tmp:
            self.tree.write(binary=True, filename=tmp)
        if self.transition_stats is not None:
            with atomic_path(out_dir / "transition_stats.npy") as tmp:
                np.save(tmp, self.transition_stats)
        write_tid2pdf(self.tid2pdf, out_dir / "tid2pdf.txt")
        write_json({"kind": "monophone", "num_pdfs": self.num_pdfs,
                    "num_transition_ids": self.num_transition_ids}, out_dir / "inventory.json")

    @classmethod
    def load(cls, in_dir: Pathlike) -> "StateInventory":
        in_dir = Path(in_dir)
        meta = read_json(in_dir / "inventory.json")
        if meta["kind"] != "monophone":
            raise ValueError(f"{in_dir}: unknown state inventory kind {meta['kind']!r}")
        stats_path = in_dir / "transition_stats.npy"
        stats = np.load(stats_path, allow_pickle=False) if stats_path.exists() else None
        return cls((in_dir / "topo").read_text(), stats)
