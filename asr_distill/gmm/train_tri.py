"""Tied-state triphone GMM-HMM training as Kaldi's ``steps/train_deltas.sh`` (and the core of ``train_lda_mllt.sh``
and ``train_sat.sh``): tree statistics from the previous system's alignment, phone questions from the data, a tree
of ``num_leaves`` leaves, one Gaussian per leaf from the tree statistics, then Viterbi EM that realigns on a schedule
and mixes up to ``total_gauss`` Gaussians.  A caller-supplied feature update (MLLT, fMLLR) runs on its own
iterations."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import kaldi_hmm_gmm as khg
import numpy as np
from tqdm import tqdm

from ..lang import Lang
from .align import TrainingGraphs, align_utterances
from .inventory import StateInventory
from .model import GmmModel
from .questions import cluster_phones
from .train_mono import accumulate_stats, mle_update
from .tree import Tree, build_tree
from .tree_stats import VAR_FLOOR, TreeStats, accumulate_tree_stats

__all__ = ["TriphoneConfig", "train_triphone", "triphone_tree", "gmm_from_tree_stats", "FeatureUpdate"]

log = logging.getLogger(__name__)

# (iteration, current GMM, inventory, current alignments) -> new features and the GMM moved into their space, or None
FeatureUpdate = Callable[[int, GmmModel, StateInventory, Dict[str, List[int]]],
                         Optional[Tuple[Dict[str, np.ndarray], GmmModel]]]


@dataclass
class TriphoneConfig:
    """train_deltas.sh's schedule; leaves and Gaussians are the recipe's to choose per corpus."""

    num_leaves: int = 2000
    total_gauss: int = 10000
    num_iters: int = 35
    realign_iters: Sequence[int] = (10, 20, 30)
    max_iter_inc: int = 25
    power: float = 0.25  # Gaussians per leaf grow with occupancy ** power
    min_leaf_count: float = 100.0
    min_gain: float = 300.0  # build-tree's --thresh: a split must gain at least this much log-likelihood
    beam: float = 10.0
    retry_beam: float = 40.0


def _phone_questions(lang: Lang, stats: TreeStats) -> List[List[int]]:
    phones = sorted(set(lang.nonsilence_phones) | set(lang.silence_phones))
    questions = cluster_phones(stats, phones)
    # the utterance edge (phone 0) and silence as context: Kaldi gets these from extra_questions.txt
    questions += [list(lang.silence_phones), [0], [0] + list(lang.silence_phones)]
    return questions


def triphone_tree(lang: Lang, prev: StateInventory, prev_alis: Mapping[str, Sequence[int]],
                  feats: Mapping[str, np.ndarray], num_leaves: int, min_leaf_count: float = 100.0,
                  min_gain: float = 300.0) -> Tuple[Tree, TreeStats]:
    """Tree statistics from ``prev``'s alignment, data-driven questions, and the tree (acc-tree-stats,
    cluster-phones, build-tree)."""
    framed = {u: prev.frame_phones(a) for u, a in prev_alis.items()}
    stats = accumulate_tree_stats({u: f[0] for u, f in framed.items()}, {u: f[1] for u, f in framed.items()},
                                  {u: f[2] for u, f in framed.items()}, feats)
    classes = prev.topo.get_phone_to_num_pdf_classes()
    phones = list(prev.topo.phones)
    tree = build_tree(stats, phones, _phone_questions(lang, stats), {p: classes[p] for p in phones}, num_leaves,
                      min_gain=min_gain, min_count=min_leaf_count)
    log.info("tree: %d events, %d leaves after merging (%d splits, smallest gain %.1f)", len(stats.counts),
             tree.num_pdfs, len(tree.split_gains), min(tree.split_gains) if tree.split_gains else 0.0)
    return tree, stats


def gmm_from_tree_stats(tree: Tree, stats: TreeStats) -> GmmModel:
    """One Gaussian per leaf from its events' statistics (gmm-init-model); a leaf no frame reached (a phone absent
    from the training alignment) gets the global Gaussian."""
    pdfs = tree.event_pdfs(stats)
    n = np.bincount(pdfs, weights=stats.counts, minlength=tree.num_pdfs)
    s1 = np.stack([np.bincount(pdfs, weights=stats.sums[:, d], minlength=tree.num_pdfs) for d in range(stats.dim)], 1)
    s2 = np.stack([np.bincount(pdfs, weights=stats.sumsqs[:, d], minlength=tree.num_pdfs)
                   for d in range(stats.dim)], 1)
    empty = n <= 0
    n[empty], s1[empty], s2[empty] = stats.counts.sum(), stats.sums.sum(0), stats.sumsqs.sum(0)
    means = s1 / n[:, None]
    variances = np.maximum(s2 / n[:, None] - means ** 2, VAR_FLOOR)
    return GmmModel(np.arange(tree.num_pdfs), np.ones(tree.num_pdfs), means, variances)


def train_triphone(lang: Lang, prev: StateInventory, prev_alis: Mapping[str, Sequence[int]],
                   feats: Mapping[str, np.ndarray], texts: Mapping[str, str], config: TriphoneConfig,
                   feature_update: Optional[FeatureUpdate] = None, name: str = "tri", progress: bool = True
                   ) -> Tuple[StateInventory, GmmModel, Dict[str, List[int]], Dict[str, np.ndarray]]:
    """Returns the triphone inventory, its GMM, its final training alignments and the (final) features."""
    feats = {u: feats[u] for u in prev_alis}
    tree, stats = triphone_tree(lang, prev, prev_alis, feats, config.num_leaves, config.min_leaf_count,
                                config.min_gain)
    inventory = StateInventory(lang.topo_text, None, tree.context_dependency(max(lang.phones.values())))
    graphs = TrainingGraphs(lang, inventory, {u: texts[u] for u in feats})
    am = gmm_from_tree_stats(tree, stats).to_am()
    num_gauss = inventory.num_pdfs
    inc_gauss = max(0, (config.total_gauss - num_gauss) // max(1, config.max_iter_inc))
    opts = khg.MleDiagGmmOptions()
    # the previous system's alignment in this tree's transition-ids (Kaldi's convert-ali): a first Viterbi pass
    # with the leaves' single Gaussians, which already model every context the alignment saw
    alis = _realign(am, inventory, graphs, feats, config, 0)
    bar = tqdm(range(1, config.num_iters + 1), desc=f"{name} training", disable=not progress)
    for it in bar:
        if it in config.realign_iters:
            alis = _realign(am, inventory, graphs, feats, config, it)
        if feature_update is not None:
            update = feature_update(it, GmmModel.from_am(am), inventory, alis)
            if update is not None:
                feats, moved = update
                am = moved.to_am()
        accs, tstats = accumulate_stats(am, inventory, feats, alis)
        mle_update(am, inventory, accs, tstats, num_gauss, opts, power=config.power)
        if it <= config.max_iter_inc:
            num_gauss += inc_gauss
        bar.set_postfix(gauss=am.num_gauss)
    log.info("%s GMM: %d pdfs, %d Gaussians", name, am.num_pdfs, am.num_gauss)
    return inventory, GmmModel.from_am(am), alis, feats


def _realign(am, inventory: StateInventory, graphs: TrainingGraphs, feats: Mapping[str, np.ndarray],
             config: TriphoneConfig, it: int) -> Dict[str, List[int]]:
    alis, failed, avg = align_utterances(am, inventory, graphs, feats, beam=config.beam,
                                         retry_beam=config.retry_beam)
    if failed:
        log.warning("iteration %d: %d utterance(s) failed to align: %s", it, len(failed), failed[:5])
    log.info("iteration %d: realigned, avg log-likelihood per frame %.3f", it, avg)
    return alis
