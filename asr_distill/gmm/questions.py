"""Phone-set questions for the decision tree, found from the data as Kaldi's ``cluster-phones`` does: the phones'
statistics are clustered top-down into a binary tree (2-means under the Gaussian likelihood), and every node of that
tree is a question ("is the phone in this set?")."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from .tree_stats import TreeStats

__all__ = ["cluster_phones", "pdf_class_questions"]


def _phone_stats(stats: TreeStats, phones: Sequence[int], central: int, pdf_classes: Sequence[int]):
    """Per phone, the summed statistics of its central-position events in ``pdf_classes`` (cluster-phones uses
    only the middle state by default: the most context-independent part of a phone)."""
    sel = np.isin(stats.pdf_classes, pdf_classes)
    out = {}
    for p in phones:
        rows = sel & (stats.windows[:, central] == p)
        if stats.counts[rows].sum() > 0:
            out[p] = (stats.counts[rows].sum(), stats.sums[rows].sum(0), stats.sumsqs[rows].sum(0))
    return out


def _two_means(members: List[int], pstats: Dict[int, tuple], iters: int = 20) -> tuple:
    """Split ``members`` in two, maximising the summed likelihood of the two halves (k-means with k=2 under the
    Gaussian objective, initialised from the farthest pair of means)."""
    means = np.stack([pstats[p][1] / pstats[p][0] for p in members])
    d2 = ((means[:, None] - means[None]) ** 2).sum(-1)
    a, b = np.unravel_index(np.argmax(d2), d2.shape)
    assign = (((means - means[b]) ** 2).sum(-1) < ((means - means[a]) ** 2).sum(-1)).astype(int)
    for _ in range(iters):
        cents = []
        for k in (0, 1):
            idx = [members[i] for i in np.flatnonzero(assign == k)]
            if not idx:
                return assign
            cents.append(tuple(sum(pstats[p][j] for p in idx) for j in range(3)))
        # move each phone to the cluster whose pooled Gaussian gives it the higher likelihood
        new = np.empty_like(assign)
        for i, p in enumerate(members):
            n, s, s2 = pstats[p]
            scores = []
            for c in cents:
                mean = c[1] / c[0]
                var = np.maximum(c[2] / c[0] - mean ** 2, 0.01)
                scores.append(-0.5 * (n * np.log(var).sum() + ((s2 - 2 * mean * s + n * mean ** 2) / var).sum()))
            new[i] = int(np.argmax(scores))
        if (new == assign).all() or new.min() == new.max():
            break
        assign = new
    return assign


def cluster_phones(stats: TreeStats, phones: Sequence[int], central: int = 1,
                   pdf_classes: Sequence[int] = (1,)) -> List[List[int]]:
    """Questions: every node of a top-down binary clustering of ``phones`` (those without statistics are left out
    of all but the root set)."""
    pstats = _phone_stats(stats, phones, central, pdf_classes)
    questions: List[List[int]] = [sorted(phones)]
    stack = [sorted(pstats)]
    while stack:
        members = stack.pop()
        if len(members) < 2:
            continue
        assign = _two_means(members, pstats)
        halves = [[p for p, a in zip(members, assign) if a == k] for k in (0, 1)]
        if not halves[0] or not halves[1]:  # degenerate: split off the phone farthest from the rest
            halves = [members[:1], members[1:]]
        for h in halves:
            questions.append(sorted(h))
            stack.append(h)
    unique = {tuple(q) for q in questions}
    return [list(q) for q in sorted(unique, key=lambda q: (len(q), q))]


def pdf_class_questions(num_pdf_classes: int) -> List[List[int]]:
    """Questions about the HMM state: "is the pdf-class below k?" for a left-to-right topology (Kaldi's
    compile-questions adds the same kind for a shared root)."""
    return [list(range(k)) for k in range(1, num_pdf_classes)]
