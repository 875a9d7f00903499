"""Stage 3: the monophone GMM-HMM, its decoding graph, the frame labels of every split (stored with the fbank
cuts), and the GMM scored like every other system."""
from __future__ import annotations

import logging
import shutil
import time
from typing import Dict, Mapping, Tuple

import numpy as np

from ..data.arrays import attach_frame_arrays
from ..data.corpus import SPLITS
from ..data.features import add_deltas
from ..decode.priors import pdf_counts
from ..decode.scorer import GMM_SCALES, Scorer
from ..experiment import Experiment
from ..gmm import GmmModel, StateInventory, TrainingGraphs, align_utterances, train_monophone
from ..lang import Lang, make_hclg
from ..utils import atomic_path, atomic_write_text

__all__ = ["stage_gmm", "gmm_features"]

log = logging.getLogger(__name__)


def gmm_features(exp: Experiment, split: str) -> Dict[str, np.ndarray]:
    """MFCC + deltas + delta-deltas, per-speaker mean-normalised: what the GMM reads."""
    return {u: add_deltas(f) for u, f in exp.features("mfcc", split).items()}


def _train_or_reuse(exp: Experiment, lang: Lang, feats: Mapping[str, np.ndarray], texts: Mapping[str, str],
                    num_iters: int, total_gauss: int, reuse: bool) -> Tuple[StateInventory, TrainingGraphs, GmmModel]:
    inventory = StateInventory.monophone(lang)
    reuse = reuse and exp.gmm_model_path.exists() and (exp.inventory_dir / "transition_stats.npy").exists()
    if reuse:  # an earlier run of this stage finished training before it was interrupted
        inventory = StateInventory.load(exp.inventory_dir)
    graphs = TrainingGraphs(lang, inventory, texts)
    if reuse:
        log.info("reusing the trained GMM in %s", exp.gmm_model_path)
        return inventory, graphs, GmmModel.load(exp.gmm_model_path)
    t0 = time.time()
    gmm, _ = train_monophone(inventory, graphs, feats, num_iters=num_iters, total_gauss=total_gauss)
    log.info("GMM training took %.0f s", time.time() - t0)
    inventory.save(exp.inventory_dir)
    gmm.save(exp.gmm_model_path)  # last: its presence means training finished
    # Align and build the graph with the inventory as stored, which every later reader gets: re-estimating the
    # transitions once from the final counts differs from the training's sequence of updates for states below the
    # minimum count, which keep their previous probabilities.
    return StateInventory.load(exp.inventory_dir), graphs, gmm


def _align_split(exp: Experiment, split: str, inventory: StateInventory, graphs: TrainingGraphs, am,
                 feats: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Forced alignment of ``split``; its fbank cuts with the frames' pdf-ids become ``gmm/cuts_<split>``."""
    alis, failed, avg = align_utterances(am, inventory, graphs, feats)
    atomic_write_text(exp.align_failed_path(split), "".join(f"{u}\n" for u in failed))
    if failed:
        log.warning("%s: %d utterance(s) could not be aligned and get no frame labels (listed in %s): %s", split,
                    len(failed), exp.align_failed_path(split), failed[:10])
    log.info("%s: aligned %d utterances, avg log-likelihood per frame %.3f", split, len(alis), avg)
    pdf_alis = {u: inventory.tids_to_pdfs(a).astype(np.int32) for u, a in alis.items()}
    storage = exp.pdf_ids_dir(split)
    shutil.rmtree(storage, ignore_errors=True)  # a redone stage leaves no arrays of utterances that now failed
    attach_frame_arrays(((c, {"pdf_ids": pdf_alis[c.id]}) for c in exp.cuts(split, "fbank") if c.id in pdf_alis),
                        storage, exp.labelled_cuts_path(split))
    return pdf_alis


def _write_graph(exp: Experiment, lang: Lang, inventory: StateInventory) -> None:
    hclg = make_hclg(lang, inventory)
    with atomic_path(exp.hclg_path) as tmp:
        hclg.write(tmp)
    for name in ("words.txt", "phones.txt"):
        atomic_write_text(exp.graph_dir / name, (exp.lang_dir / name).read_text())
    atomic_write_text(exp.tid2pdf_path, (exp.inventory_dir / "tid2pdf.txt").read_text())


def stage_gmm(exp: Experiment, num_iters: int = 40, total_gauss: int = 1000, jobs: int = 2,
              beam: float = 13.0, reuse_trained: bool = True) -> dict:
    """Stage 3: monophone GMM-HMM training, HCLG with its transition model, forced alignment of train / dev / test,
    acoustic scale tuned on dev, test decoded; returns the results row.  ``reuse_trained``: a GMM whose training
    finished in an interrupted earlier run of this stage is reused (False: trained anew)."""
    lang = Lang.load(exp.lang_dir)
    feats = {s: gmm_features(exp, s) for s in SPLITS}
    texts = {s: exp.texts(s) for s in SPLITS}
    inventory, graphs, gmm = _train_or_reuse(exp, lang, feats["train"], texts["train"], num_iters, total_gauss,
                                             reuse_trained)
    am = gmm.to_am()
    pdf_alis = {}
    for split in SPLITS:
        split_graphs = graphs if split == "train" else TrainingGraphs(lang, inventory, texts[split])
        pdf_alis[split] = _align_split(exp, split, inventory, split_graphs, am, feats[split])
    with atomic_path(exp.pdf_counts_path) as tmp:
        np.save(tmp, pdf_counts(list(pdf_alis["train"].values()), inventory.num_pdfs))
    _write_graph(exp, lang, inventory)
    loglikes = {s: {u: gmm.loglikes(f) for u, f in feats[s].items()} for s in ("dev", "test")}
    return Scorer(exp, jobs, beam).evaluate("gmm-mono", "gmm", loglikes, int(gmm.means.size * 2 + gmm.weights.size),
                                            {"num_gauss": int(gmm.weights.size)}, scales=GMM_SCALES)
