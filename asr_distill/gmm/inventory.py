"""The HMM-state inventory of an acoustic model: topology, context-dependency tree, transition model, and the
transition-id -> pdf map.

Saved as ``topo`` (Kaldi text), ``tree`` (Kaldi binary, readable by Kaldi tools), ``transition_stats.npy`` (the
transition counts that re-estimate the trained transition probabilities; none before training) and
``tid2pdf.txt`` (what a deployed decoder needs).  The tree is either the monophone one or a tied-state triphone
tree (:mod:`.tree`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import kaldi_hmm_gmm as khg
import numpy as np
import torch

from ..fst import write_tid2pdf
from ..lang import Lang
from ..utils import Pathlike, atomic_path, atomic_write_text, read_json, write_json
from .tree import read_context_dependency

__all__ = ["StateInventory"]


class StateInventory:
    """HMM states of the acoustic model: topology + tree + transition model."""

    def __init__(self, topo_text: str, transition_stats: Optional[np.ndarray] = None, tree=None):
        self.topo_text = topo_text
        self.topo = khg.HmmTopology()
        self.topo.read(topo_text)
        if tree is None:
            tree = khg.monophone_context_dependency(phones=self.topo.phones,
                                                    phone2num_pdf_classes=self.topo.get_phone_to_num_pdf_classes())
        self.tree = tree
        self.transition_model = khg.TransitionModel(ctx_dep=self.tree, hmm_topo=self.topo)
        self._tid_phone_state: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self.transition_stats = transition_stats
        if transition_stats is not None:
            self.transition_model.mle_update(torch.from_numpy(transition_stats.astype(np.float64)),
                                             khg.MleTransitionUpdateConfig())

    @classmethod
    def monophone(cls, lang: Lang) -> "StateInventory":
        return cls(lang.topo_text)

    @property
    def kind(self) -> str:
        return "monophone" if self.tree.context_width == 1 else "triphone"

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

    @property
    def tid_phone_state(self) -> Tuple[np.ndarray, np.ndarray]:
        """(phone, HMM state) of every transition-id (index 0 unused).  The binding hides the transition model's
        tuples, so they are rebuilt as Kaldi builds them (sorted unique (phone, state, pdf) triples from the tree's
        pdf info) and checked against the model's own transition-id -> phone / pdf maps."""
        if self._tid_phone_state is None:
            self._tid_phone_state = self._rebuild_tid_table()
        return self._tid_phone_state

    def _rebuild_tid_table(self) -> Tuple[np.ndarray, np.ndarray]:
        classes = self.topo.get_phone_to_num_pdf_classes()
        info = self.tree.get_pdf_info(self.topo.phones, classes)
        # our topologies give HMM state s the pdf-class s, with one pdf for its forward and self-loop transitions
        triples = sorted({(p, c, pdf) for pdf, pairs in enumerate(info) for p, c in pairs})
        tm = self.transition_model
        if len(triples) != tm.num_transition_states:
            raise ValueError(f"transition model has {tm.num_transition_states} transition states, the tree "
                             f"gives {len(triples)}: a topology whose pdf-classes are not its HMM states?")
        n = self.num_transition_ids + 1
        phone, state = np.zeros(n, np.int64), np.zeros(n, np.int64)
        id2state, tid2pdf = tm.id2state, self.tid2pdf
        for tid in range(1, n):
            p, c, pdf = triples[id2state[tid] - 1]
            phone[tid], state[tid] = p, c
            if pdf != tid2pdf[tid] or p != tm.transition_id_to_phone(tid):
                raise ValueError(f"transition-id {tid}: rebuilt tuple ({p}, {c}, {pdf}) disagrees with the model")
        return phone, state

    def frame_phones(self, tids: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per frame of an alignment: phone, HMM state, and whether a phone instance starts there (the phone changes,
        or its entry state 0 follows another state: no topology of ours re-enters state 0)."""
        phone_of, state_of = self.tid_phone_state
        tids = np.asarray(tids, dtype=np.int64)
        phones, states = phone_of[tids], state_of[tids]
        starts = np.ones(len(tids), dtype=bool)
        starts[1:] = (phones[1:] != phones[:-1]) | ((states[1:] == 0) & (states[:-1] != 0))
        return phones, states, starts

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
        write_json({"kind": self.kind, "num_pdfs": self.num_pdfs, "context_width": self.tree.context_width,
                    "num_transition_ids": self.num_transition_ids}, out_dir / "inventory.json")

    @classmethod
    def load(cls, in_dir: Pathlike) -> "StateInventory":
        in_dir = Path(in_dir)
        meta = read_json(in_dir / "inventory.json")
        if meta["kind"] not in ("monophone", "triphone"):
            raise ValueError(f"{in_dir}: unknown state inventory kind {meta['kind']!r}")
        stats_path = in_dir / "transition_stats.npy"
        stats = np.load(stats_path, allow_pickle=False) if stats_path.exists() else None
        return cls((in_dir / "topo").read_text(), stats, read_context_dependency(in_dir / "tree"))
