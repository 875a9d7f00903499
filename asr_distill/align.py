"""GMM-HMM bootstrap: every frame gets its HMM-state (pdf-id) label, as the paper's targets came from a GMM system.

* :class:`StateInventory` is the one interface to the HMM-state inventory (topology, context-dependency tree,
  transition model, transition-id -> pdf map).  Only the monophone tree exists today; a tied-state triphone tree
  would be another constructor of the same class.
* :func:`train_monophone` follows Kaldi's ``steps/train_mono.sh``: one Gaussian per pdf initialised from global
  statistics, equal alignment, then Viterbi EM (realigning on a schedule, mixing Gaussians up to a target).
* :class:`GmmModel` stores the GMM as plain arrays (no pickle) and computes frame log-likelihoods in numpy, so the
  GMM decodes through exactly the same hybrid path as the DNNs (:mod:`asr_distill.decode`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .lang import Lang
from .utils import Pathlike, atomic_path, read_json, write_json

__all__ = ["StateInventory", "GmmModel", "add_deltas", "train_monophone", "align_utterances", "TrainingGraphs",
           "save_alignments", "load_alignments", "AlignmentError"]

log = logging.getLogger(__name__)


class AlignmentError(RuntimeError):
    pass


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


# ------------------------------------------------------------------------------------------------------------------

class StateInventory:
    """HMM states of the acoustic model: topology + tree + transition model.

    Saved as ``topo`` (Kaldi text), ``tree`` (Kaldi binary, readable by Kaldi tools), ``transition_stats.npy``
    (the transition counts that re-estimate the trained transition probabilities; none before training) and
    ``tid2pdf.txt`` (what a deployed decoder needs).
    """

    def __init__(self, topo_text: str, transition_stats: Optional[np.ndarray] = None):
        import kaldi_hmm_gmm as khg
        import torch

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
        import kaldi_hmm_gmm as khg
        import torch

        self.transition_stats = stats
        self.transition_model.mle_update(torch.from_numpy(stats.astype(np.float64)), khg.MleTransitionUpdateConfig())

    def save(self, out_dir: Pathlike) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "topo").write_text(self.topo_text)
        self.tree.write(binary=True, filename=str(out_dir / "tree"))
        if self.transition_stats is not None:
            with atomic_path(out_dir / "transition_stats.npy") as tmp:
                np.save(tmp, self.transition_stats)
        (out_dir / "tid2pdf.txt").write_text("".join(f"{t} {p}\n" for t, p in enumerate(self.tid2pdf) if t > 0))
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


# ------------------------------------------------------------------------------------------------------------------

@dataclass
class GmmModel:
    """Diagonal-covariance GMMs, one per pdf, as flat arrays over all Gaussians."""

    pdf_of_gauss: np.ndarray  # (G,) int
    weights: np.ndarray  # (G,)
    means: np.ndarray  # (G, D)
    variances: np.ndarray  # (G, D)

    @classmethod
    def from_am(cls, am) -> "GmmModel":
        pdfs, ws, ms, vs = [], [], [], []
        for j in range(am.num_pdfs):
            g = am.get_pdf(j)
            ws.append(np.asarray(g.weights, dtype=np.float64))
            ms.append(np.asarray(g.means, dtype=np.float64))
            vs.append(1.0 / np.asarray(g.inv_vars, dtype=np.float64))
            pdfs.append(np.full(len(ws[-1]), j))
        return cls(np.concatenate(pdfs), np.concatenate(ws), np.concatenate(ms), np.concatenate(vs))

    def to_am(self):
        import kaldi_hmm_gmm as khg
        import torch

        am = khg.AmDiagGmm()
        for j in range(int(self.pdf_of_gauss.max()) + 1):
            sel = self.pdf_of_gauss == j
            g = khg.DiagGmm(nmix=int(sel.sum()), dim=self.means.shape[1])
            g.set_weights(torch.from_numpy(self.weights[sel].astype(np.float32)))
            g.set_means(torch.from_numpy(self.means[sel].astype(np.float32)))
            g.set_invvars(torch.from_numpy((1.0 / self.variances[sel]).astype(np.float32)))
            g.compute_gconsts()
            am.add_pdf(g)
        return am

    @property
    def num_pdfs(self) -> int:
        return int(self.pdf_of_gauss.max()) + 1

    def loglikes(self, feats: np.ndarray) -> np.ndarray:
        """(frames, num_pdfs) log p(x | pdf), each pdf's mixture summed with log-sum-exp."""
        x = feats.astype(np.float64)
        inv = 1.0 / self.variances
        const = (np.log(self.weights) - 0.5 * (np.log(2 * np.pi * self.variances).sum(1)
                                               + (self.means ** 2 * inv).sum(1)))
        comp = x @ (self.means * inv).T - 0.5 * (x ** 2) @ inv.T + const  # (T, G)
        order = np.argsort(self.pdf_of_gauss, kind="stable")
        comp, pdfs = comp[:, order], self.pdf_of_gauss[order]
        starts = np.flatnonzero(np.r_[True, pdfs[1:] != pdfs[:-1]])
        peak = np.maximum.reduceat(comp, starts, axis=1)
        summed = np.add.reduceat(np.exp(comp - np.repeat(peak, np.diff(np.r_[starts, len(pdfs)]), axis=1)),
                                 starts, axis=1)
        return (peak + np.log(summed)).astype(np.float32)

    def save(self, path: Pathlike) -> None:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, pdf_of_gauss=self.pdf_of_gauss, weights=self.weights, means=self.means,
                     variances=self.variances)

    @classmethod
    def load(cls, path: Pathlike) -> "GmmModel":
        z = np.load(path, allow_pickle=False)
        return cls(z["pdf_of_gauss"], z["weights"], z["means"], z["variances"])


# ------------------------------------------------------------------------------------------------------------------

class TrainingGraphs:
    """Per-utterance training graphs (H C L over the transcript), compiled once and reused every realignment."""

    def __init__(self, lang: Lang, inventory: StateInventory, texts: Mapping[str, str]):
        import kaldi_hmm_gmm as khg
        import kaldifst

        L = lang.lexicon_fst(disambig=False)
        kaldifst.arcsort(L, sort_type="olabel")
        self.compiler = khg.TrainingGraphCompiler(trans_model=inventory.transition_model, ctx_dep=inventory.tree,
                                                  lex_fst=L, disambig_syms=lang.disambig_phones,
                                                  opts=khg.TrainingGraphCompilerOptions())
        self.graphs = {utt: self.compiler.compile_graph_from_text(lang.word_ids(text, utt))
                       for utt, text in texts.items()}


def _gmm_decodable(am, inventory: StateInventory, feats: np.ndarray, scale: float):
    import kaldi_hmm_gmm as khg
    import torch

    return khg.DecodableAmDiagGmmScaled(am=am, tm=inventory.transition_model,
                                        feats=torch.from_numpy(np.ascontiguousarray(feats)), scale=scale)


def align_utterances(am, inventory: StateInventory, graphs: TrainingGraphs, feats: Mapping[str, np.ndarray],
                     beam: float = 10.0, retry_beam: float = 40.0, acoustic_scale: float = 0.1,
                     self_loop_scale: float = 0.1) -> Tuple[Dict[str, List[int]], List[str], float]:
    """Viterbi forced alignment (Kaldi's ``gmm-align-compiled``); returns (utt -> transition-ids, failed utts,
    average log-likelihood per frame)."""
    import kaldi_hmm_gmm as khg

    cfg = khg.AlignConfig()
    cfg.beam, cfg.retry_beam, cfg.careful = beam, retry_beam, False
    alis, failed = {}, []
    tot_like, frames = 0.0, 0
    for utt, f in feats.items():
        fst = graphs.graphs[utt].copy()
        khg.add_transition_probs(trans_model=inventory.transition_model, transition_scale=1.0,
                                 self_loop_scale=self_loop_scale, fst=fst)
        res = khg.align_utterance_wrapper(config=cfg, utt=utt, acoustic_scale=acoustic_scale, fst=fst,
                                          decodable=_gmm_decodable(am, inventory, f, acoustic_scale),
                                          num_done=0, num_error=0, num_retried=0, tot_like=0.0, frame_count=0)
        num_done, _, _, like, count, ali, _ = res
        if num_done != 1 or len(ali) != len(f):
            failed.append(utt)
            continue
        alis[utt] = list(ali)
        tot_like += like
        frames += count
    return alis, failed, tot_like / max(1, frames)


def _accumulate(am, inventory: StateInventory, feats: Mapping[str, np.ndarray], alis: Mapping[str, List[int]]):
    import kaldi_hmm_gmm as khg
    import torch

    accs = khg.AccumAmDiagGmm()
    accs.init(model=am, flags=khg.GmmUpdateFlags.kGmmAll)
    tstats = inventory.transition_model.init_stats()
    tm = inventory.transition_model
    tid2pdf = inventory.tid2pdf
    for utt, ali in alis.items():
        f = torch.from_numpy(np.ascontiguousarray(feats[utt]))
        for t, tid in enumerate(ali):
            # the binding returns the updated statistics (a copy); it does not update ``tstats`` in place
            tstats = tm.accumulate(prob=1.0, trans_id=int(tid), stats=tstats)
            accs.accumulate_for_gmm(model=am, data=f[t], gmm_index=int(tid2pdf[tid]), weight=1.0)
    return accs, tstats


def train_monophone(inventory: StateInventory, graphs: TrainingGraphs, feats: Mapping[str, np.ndarray],
                    num_iters: int = 40, total_gauss: int = 1000, max_iter_inc: int = 30,
                    realign_iters: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29,
                                                    32, 35, 38),
                    seed: int = 0, progress: bool = True) -> Tuple[GmmModel, Dict[str, List[int]]]:
    """Kaldi's train_mono.sh schedule; returns the GMM and the final training alignments (transition-ids).

    ``inventory``'s transition model is re-estimated in place.
    """
    import kaldi_hmm_gmm as khg
    import kaldifst
    import torch
    from tqdm import tqdm

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
    # Equal alignment: each utterance's graph traversed with its frames spread evenly (align-equal-compiled).
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
    num_gauss = inventory.num_pdfs
    inc_gauss = max(0, (total_gauss - num_gauss) // max_iter_inc)
    gmm_opts = khg.MleDiagGmmOptions()
    gmm_opts.min_gaussian_occupancy = 3  # first pass: few frames per state

    def update(accs, tstats, target):
        inventory.update_transitions(np.asarray(tstats, dtype=np.float64))
        khg.mle_am_diag_gmm_update(config=gmm_opts, amdiag_gmm_acc=accs, flags=khg.str_to_gmm_flags("mvwt"),
                                   am_gmm=am)
        occs = torch.tensor([accs.get_acc(j).occupancy.sum().item() for j in range(accs.num_accs)],
                            dtype=torch.float32)
        am.split_by_count(state_occs=occs, target_components=target, perturb_factor=0.01, power=0.2,
                          min_count=20.0)

    accs, tstats = _accumulate(am, inventory, feats, alis)
    update(accs, tstats, num_gauss)
    gmm_opts = khg.MleDiagGmmOptions()
    beam = 6.0
    bar = tqdm(range(1, num_iters), desc="GMM-HMM training", disable=not progress)
    for it in bar:
        if it in realign_iters:
            alis, failed, avg = align_utterances(am, inventory, graphs, feats, beam=beam)
            beam = 10.0  # train_mono.sh: a narrow beam only for the first, equal-aligned, pass
            if failed:
                log.warning("iteration %d: %d utterance(s) failed to align: %s", it, len(failed), failed[:5])
            bar.set_postfix(loglike=f"{avg:.3f}", gauss=am.num_gauss)
        accs, tstats = _accumulate(am, inventory, feats, alis)
        update(accs, tstats, num_gauss)
        if it <= max_iter_inc:
            num_gauss += inc_gauss
    log.info("monophone GMM: %d pdfs, %d Gaussians", am.num_pdfs, am.num_gauss)
    return GmmModel.from_am(am), alis


def save_alignments(alis: Mapping[str, Sequence[int]], path: Pathlike) -> None:
    """utt -> int32 arrays in an ``.npz`` (no pickle), written atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **{u: np.asarray(a, dtype=np.int32) for u, a in alis.items()})


def load_alignments(path: Pathlike) -> Dict[str, np.ndarray]:
    z = np.load(path, allow_pickle=False)
    return {u: z[u] for u in z.files}
