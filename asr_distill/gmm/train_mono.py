"""Monophone GMM-HMM training as Kaldi's ``steps/train_mono.sh``: one Gaussian per pdf initialised from global
statistics, equal alignment, then Viterbi EM (realigning on a schedule, mixing Gaussians up to a target)."""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Sequence, Tuple

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
import torch
from tqdm import tqdm

from .align import AlignmentError, TrainingGraphs, align_utterances
from .inventory import StateInventory
from .model import GmmModel

__all__ = ["train_monophone", "equal_alignments", "accumulate_stats", "mle_update", "split_gaussians"]

log = logging.getLogger(__name__)

REALIGN_ITERS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29, 32, 35, 38)


def _flat_start(inventory: StateInventory, feats: Mapping[str, np.ndarray]):
    """Every pdf one Gaussian with the global mean and variance (Kaldi's ``gmm-init-mono``)."""
    dim = next(iter(feats.values())).shape[1]
    allf = np.concatenate(list(feats.values())).astype(np.float64)
    mean, var = allf.mean(0), allf.var(0)
    g = khg.DiagGmm(nmix=1, dim=dim)
    g.set_weights(torch.ones(1))
    g.set_means(torch.from_numpy(mean[None].astype(np.float32)))
    g.set_invvars(torch.from_numpy((1.0 / var[None]).astype(np.float32)))
    g.compute_gconsts()
    am = khg.AmDiagGmm()
    for _ in range(inventory.num_pdfs):
        am.add_pdf(g)
    return am


def equal_alignments(graphs: TrainingGraphs, feats: Mapping[str, np.ndarray], seed: int = 0) -> Dict[str, List[int]]:
    """Each utterance's graph traversed with its frames spread evenly (``align-equal-compiled``)."""
    alis: Dict[str, List[int]] = {}
    for i, (utt, f) in enumerate(feats.items()):
        ok, linear = kaldifst.equal_align(ifst=graphs.graphs[utt], length=len(f), rand_seed=seed + i, num_retries=10)
        if ok:
            ok, seq, _, _ = kaldifst.get_linear_symbol_sequence(linear)
        if not ok or len(seq) != len(f):
            log.warning("utterance %s: no equal alignment (%d frames, too short for its transcript?); skipped",
                        utt, len(f))
            continue
        alis[utt] = list(seq)
    if not alis:
        raise AlignmentError("no utterance could be equally aligned")
    return alis


def accumulate_stats(am, inventory: StateInventory, feats: Mapping[str, np.ndarray], alis: Mapping[str, List[int]]):
    """Gaussian statistics of the aligned frames, and transition counts (Kaldi's TransitionModel::Accumulate adds
    each frame's transition-id once: a bincount)."""
    accs = khg.AccumAmDiagGmm()
    accs.init(model=am, flags=khg.GmmUpdateFlags.kGmmAll)
    tid2pdf = inventory.tid2pdf
    all_tids = []
    for utt, ali in alis.items():
        f = torch.from_numpy(np.ascontiguousarray(feats[utt]))
        for t, tid in enumerate(ali):
            accs.accumulate_for_gmm(model=am, data=f[t], gmm_index=int(tid2pdf[tid]), weight=1.0)
        all_tids.append(np.asarray(ali, dtype=np.int64))
    tstats = np.bincount(np.concatenate(all_tids), minlength=inventory.num_transition_ids + 1).astype(np.float64)
    return accs, tstats


def mle_update(am, inventory: StateInventory, accs, tstats, target_gauss: int, opts, power: float = 0.2) -> None:
    """Re-estimate transitions and Gaussians, then split Gaussians towards ``target_gauss`` (``gmm-est --mix-up``)."""
    inventory.update_transitions(np.asarray(tstats, dtype=np.float64))
    khg.mle_am_diag_gmm_update(config=opts, amdiag_gmm_acc=accs, flags=khg.str_to_gmm_flags("mvwt"), am_gmm=am)
    occs = torch.tensor([accs.get_acc(j).occupancy.sum().item() for j in range(accs.num_accs)], dtype=torch.float32)
    split_gaussians(am, occs, target_gauss, power)


def split_gaussians(am, state_occs: torch.Tensor, target_gauss: int, power: float, perturb_factor: float = 0.01,
                    min_count: float = 20.0) -> None:
    """``AmDiagGmm::SplitByCount`` with a reproducible perturbation.  kaldi_hmm_gmm draws the split copies' offsets
    from an unseeded generator (two runs of one recipe trained different GMMs), so the copies are made unperturbed
    and then moved apart here as Kaldi moves them: Gaussian offsets of ``perturb_factor`` standard deviations that
    sum to zero over each group of copies (+r and -r for a pair), from a generator seeded by the model's size."""
    before = [am.get_pdf(j).num_gauss for j in range(am.num_pdfs)]
    am.split_by_count(state_occs=state_occs, target_components=target_gauss, perturb_factor=0.0, power=power,
                      min_count=min_count)
    rng = np.random.default_rng(sum(before))
    for j, n in enumerate(before):
        pdf = am.get_pdf(j)
        if pdf.num_gauss == n:
            continue
        inv_vars = np.asarray(pdf.inv_vars, dtype=np.float64)
        means = np.asarray(pdf.means_invvars, dtype=np.float64) / inv_vars
        _, group, counts = np.unique(means, axis=0, return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        for g in np.flatnonzero(counts > 1):
            members = np.flatnonzero(group == g)
            offsets = rng.standard_normal((len(members), means.shape[1]))
            offsets -= offsets.mean(axis=0)
            means[members] += perturb_factor * offsets / np.sqrt(inv_vars[members])
        pdf.set_invvars_and_means(torch.from_numpy(inv_vars.astype(np.float32)),
                                  torch.from_numpy(means.astype(np.float32)))
        pdf.compute_gconsts()


def train_monophone(inventory: StateInventory, graphs: TrainingGraphs, feats: Mapping[str, np.ndarray],
                    num_iters: int = 40, total_gauss: int = 1000, max_iter_inc: int = 30,
                    realign_iters: Sequence[int] = REALIGN_ITERS, seed: int = 0,
                    progress: bool = True) -> Tuple[GmmModel, Dict[str, List[int]]]:
    """Kaldi's train_mono.sh schedule; returns the GMM and the final training alignments (transition-ids).

    ``inventory``'s transition model is re-estimated in place.
    """
    am = _flat_start(inventory, feats)
    alis = equal_alignments(graphs, feats, seed)
    num_gauss = inventory.num_pdfs
    inc_gauss = max(0, (total_gauss - num_gauss) // max_iter_inc)
    first_opts = khg.MleDiagGmmOptions()
    first_opts.min_gaussian_occupancy = 3  # first pass: few frames per state
    mle_update(am, inventory, *accumulate_stats(am, inventory, feats, alis), num_gauss, first_opts)
    opts = khg.MleDiagGmmOptions()
    beam = 6.0
    bar = tqdm(range(1, num_iters), desc="GMM-HMM training", disable=not progress)
    for it in bar:
        if it in realign_iters:
            alis, failed, avg = align_utterances(am, inventory, graphs, feats, beam=beam)
            beam = 10.0  # train_mono.sh: a narrow beam only for the first, equal-aligned, pass
            if failed:
                log.warning("iteration %d: %d utterance(s) failed to align: %s", it, len(failed), failed[:5])
            bar.set_postfix(loglike=f"{avg:.3f}", gauss=am.num_gauss)
        mle_update(am, inventory, *accumulate_stats(am, inventory, feats, alis), num_gauss, opts)
        if it <= max_iter_inc:
            num_gauss += inc_gauss
    log.info("monophone GMM: %d pdfs, %d Gaussians", am.num_pdfs, am.num_gauss)
    return GmmModel.from_am(am), alis
