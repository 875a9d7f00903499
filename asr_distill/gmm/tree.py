"""Tied-state context-dependency trees (Kaldi's ``build-tree``): one root per phone whose HMM states share it, split
greedily on the question of largest likelihood gain (about the left or right phone or the HMM state) until the leaf
budget is spent, then leaves of the same root merged bottom-up while merging costs less than the smallest split
gained.  The result is written in Kaldi's binary tree format, so ``ContextDependency`` (and Kaldi's own tools) read
it, and the decoding graph is built with a context width of 3."""
from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import kaldi_hmm_gmm as khg
import numpy as np

from ..utils import Pathlike, atomic_path
from .tree_stats import TreeStats, gauss_objf

__all__ = ["Tree", "Leaf", "Split", "build_tree", "context_dependency_from_bytes", "read_context_dependency"]

PDF_CLASS_KEY = -1  # Kaldi's kPdfClass


@dataclass
class Leaf:
    pdf: int = -1


@dataclass
class Split:
    key: int
    yes_set: Tuple[int, ...]
    yes: "Node"
    no: "Node"


Node = Union[Leaf, Split]


@dataclass
class Tree:
    """Per root phone, a binary tree of questions whose leaves are pdf-ids."""

    roots: Dict[int, Node]
    num_pdfs: int
    context_width: int = 3
    central: int = 1
    split_gains: List[float] = field(default_factory=list)

    def pdf(self, window: Sequence[int], pdf_class: int) -> int:
        node = self.roots[window[self.central]]
        while isinstance(node, Split):
            value = pdf_class if node.key == PDF_CLASS_KEY else window[node.key]
            node = node.yes if value in node.yes_set else node.no
        return node.pdf

    def event_pdfs(self, stats: TreeStats) -> np.ndarray:
        return np.array([self.pdf(w, c) for w, c in zip(stats.windows.tolist(), stats.pdf_classes.tolist())],
                        dtype=np.int64)

    def kaldi_bytes(self, max_phone: int) -> bytes:
        """The tree in Kaldi's binary ``ContextDependency`` format (without the binary-mode header)."""
        table = b"".join(_node_bytes(self.roots[p]) if p in self.roots else _token("NULL")
                         for p in range(max_phone + 1))
        to_pdf = (_token("TE") + _int(self.central) + _uint(max_phone + 1) + _token("(") + table + _token(")"))
        return (_token("ContextDependency") + _int(self.context_width) + _int(self.central) + _token("ToPdf")
                + to_pdf + _token("EndContextDependency"))

    def write(self, path: Pathlike, max_phone: int) -> None:
        with atomic_path(path, suffix="") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"\0B" + self.kaldi_bytes(max_phone))

    def context_dependency(self, max_phone: int):
        return context_dependency_from_bytes(self.kaldi_bytes(max_phone))


def _token(s: str) -> bytes:
    return s.encode() + b" "


def _int(v: int) -> bytes:
    return b"\x04" + struct.pack("<i", v)


def _uint(v: int) -> bytes:
    return b"\xfc" + struct.pack("<I", v)  # Kaldi marks an unsigned basic type by a negated size


def _node_bytes(node: Node) -> bytes:
    if isinstance(node, Leaf):
        return _token("CE") + _int(node.pdf)
    ys = sorted(node.yes_set)
    return (_token("SE") + _int(node.key) + b"\x04" + struct.pack(f"<i{len(ys)}i", len(ys), *ys) + _token("{")
            + _node_bytes(node.yes) + _node_bytes(node.no) + _token("}"))


def context_dependency_from_bytes(body: bytes):
    cd = khg.ContextDependency.__new__(khg.ContextDependency)
    cd.__setstate__(([b - 256 if b > 127 else b for b in body],))  # the binding's state: signed chars
    return cd


def read_context_dependency(path: Pathlike):
    """A Kaldi binary tree file (as ``Tree.write`` or Kaldi's ``build-tree`` writes it)."""
    data = open(path, "rb").read()
    if not data.startswith(b"\0B"):
        raise ValueError(f"{path}: not a Kaldi binary tree file")
    return context_dependency_from_bytes(data[2:])


# ---------------------------------------------------------------------------------------------------------------
# building


@dataclass
class _Candidate:
    gain: float
    key: int = 0
    yes_set: Tuple[int, ...] = ()


def _aggregate(stats: TreeStats, rows: np.ndarray, key: int):
    values = stats.key_values(key)[rows]
    uniq, inv = np.unique(values, return_inverse=True)
    V = len(uniq)
    cnt = np.bincount(inv, weights=stats.counts[rows], minlength=V)
    s1 = np.zeros((V, stats.dim))
    s2 = np.zeros((V, stats.dim))
    np.add.at(s1, inv, stats.sums[rows])
    np.add.at(s2, inv, stats.sumsqs[rows])
    return uniq, cnt, s1, s2


def _best_split(stats: TreeStats, rows: np.ndarray, questions: Dict[int, List[Tuple[int, ...]]],
                min_count: float) -> _Candidate:
    tc, ts, ts2 = stats.counts[rows].sum(), stats.sums[rows].sum(0), stats.sumsqs[rows].sum(0)
    parent = gauss_objf(tc, ts, ts2)
    best = _Candidate(-np.inf)
    for key, qs in questions.items():
        uniq, cnt, s1, s2 = _aggregate(stats, rows, key)
        if len(uniq) < 2:
            continue
        member = np.array([np.isin(uniq, q) for q in qs], dtype=np.float64)  # (Q, V)
        yc, ys, ys2 = member @ cnt, member @ s1, member @ s2
        gain = gauss_objf(yc, ys, ys2) + gauss_objf(tc - yc, ts - ys, ts2 - ys2) - parent
        gain[(yc < min_count) | (tc - yc < min_count)] = -np.inf
        i = int(np.argmax(gain))
        if gain[i] > best.gain:
            best = _Candidate(float(gain[i]), key, tuple(sorted(set(uniq[member[i] > 0].tolist()))))
    return best


def _split_greedily(stats: TreeStats, roots: Dict[int, np.ndarray], questions, max_leaves: int, min_gain: float,
                    min_count: float):
    """Split the leaf of largest gain until ``max_leaves`` leaves or no gain above ``min_gain``; returns the root
    nodes, each leaf's event rows and the gains of the splits made."""
    leaves: List[Tuple[Leaf, np.ndarray]] = []
    nodes: Dict[int, Node] = {}
    heap: list = []

    def add_leaf(rows: np.ndarray) -> Leaf:
        leaf = Leaf(len(leaves))
        leaves.append((leaf, rows))
        cand = _best_split(stats, rows, questions, min_count)
        if np.isfinite(cand.gain):
            heapq.heappush(heap, (-cand.gain, leaf.pdf, cand))
        return leaf

    parents: Dict[int, Tuple[Optional[Split], str, int]] = {}
    for phone, rows in roots.items():
        nodes[phone] = add_leaf(rows)
        parents[nodes[phone].pdf] = (None, "root", phone)
    gains: List[float] = []
    while heap and len(leaves) - len(gains) < max_leaves:
        neg_gain, leaf_id, cand = heapq.heappop(heap)
        if -neg_gain < min_gain:
            break
        _, rows = leaves[leaf_id]
        in_yes = np.isin(stats.key_values(cand.key)[rows], cand.yes_set)
        split = Split(cand.key, cand.yes_set, add_leaf(rows[in_yes]), add_leaf(rows[~in_yes]))
        parents[split.yes.pdf] = (split, "yes", -1)
        parents[split.no.pdf] = (split, "no", -1)
        parent, side, phone = parents[leaf_id]
        if parent is None:
            nodes[phone] = split
        else:
            setattr(parent, side, split)
        leaves[leaf_id] = (None, rows)  # split: no longer a leaf
        gains.append(-neg_gain)
    final = [(leaf, rows) for leaf, rows in leaves if leaf is not None]
    return nodes, final, gains


def _merge_within_roots(stats: TreeStats, leaves: List[Tuple[Leaf, np.ndarray]], thresh: float) -> int:
    """Bottom-up clustering of each root's leaves (Kaldi's ClusterEventMapRestrictedByMap): merge the pair whose
    merge loses least likelihood while that loss is below ``thresh``; merged leaves share a pdf.  Numbers the pdfs
    root by root and returns their count."""
    by_root: Dict[int, List[int]] = {}
    for i, (_, rows) in enumerate(leaves):
        root = int(stats.windows[rows[0], 1]) if len(rows) else -1 - i  # an unseen phone's leaf stays alone
        by_root.setdefault(root, []).append(i)
    next_pdf = 0
    for root in sorted(by_root, key=lambda r: (r < 0, abs(r))):
        members = by_root[root]
        clusters = [[i] for i in members]
        acc = [(stats.counts[leaves[i][1]].sum(), stats.sums[leaves[i][1]].sum(0), stats.sumsqs[leaves[i][1]].sum(0))
               for i in members]
        while len(clusters) > 1:
            c = np.array([a[0] for a in acc])
            s = np.stack([a[1] for a in acc])
            s2 = np.stack([a[2] for a in acc])
            own = gauss_objf(c, s, s2)
            cost = own[:, None] + own[None] - gauss_objf(c[:, None] + c[None], s[:, None] + s[None],
                                                         s2[:, None] + s2[None])
            np.fill_diagonal(cost, np.inf)
            a, b = np.unravel_index(np.argmin(cost), cost.shape)
            if cost[a, b] >= thresh:
                break
            a, b = min(a, b), max(a, b)
            clusters[a] += clusters.pop(b)
            merged = acc.pop(b)
            acc[a] = (acc[a][0] + merged[0], acc[a][1] + merged[1], acc[a][2] + merged[2])
        for cluster in clusters:
            for i in cluster:
                leaves[i][0].pdf = next_pdf
            next_pdf += 1
    return next_pdf


def build_tree(stats: TreeStats, phones: Sequence[int], phone_questions: Sequence[Sequence[int]],
               num_pdf_classes: Dict[int, int], max_leaves: int, min_gain: float = 300.0, min_count: float = 100.0,
               cluster_thresh: float = -1.0) -> Tree:
    """Kaldi's ``build-tree`` with one shared, splittable root per phone.

    ``phone_questions``: phone sets asked about the left and right context (:func:`~.questions.cluster_phones`);
    the HMM-state questions come from ``num_pdf_classes``.  ``min_count``: the fewest frames a leaf may hold.
    ``cluster_thresh`` below 0: merge while the loss is below the smallest gain of a split made (Kaldi's default);
    0: no merging."""
    if stats.context_width != 3:
        raise ValueError(f"only triphone trees are built (context width 3), not {stats.context_width}")
    qs = [tuple(sorted(set(q))) for q in phone_questions]
    max_classes = max(num_pdf_classes.values())
    questions = {0: qs, 2: qs, PDF_CLASS_KEY: [tuple(range(k)) for k in range(1, max_classes)]}
    roots = {p: np.flatnonzero(stats.windows[:, 1] == p) for p in phones}
    if len(roots) > max_leaves:
        raise ValueError(f"a tree of at most {max_leaves} leaves cannot give each of {len(roots)} phones a root")
    nodes, leaves, gains = _split_greedily(stats, roots, questions, max_leaves, min_gain, max(min_count, 1e-6))
    thresh = (min(gains) if gains else 0.0) if cluster_thresh < 0 else cluster_thresh
    num_pdfs = _merge_within_roots(stats, leaves, thresh)
    return Tree(nodes, num_pdfs, split_gains=gains)
