"""Decode once, tune by rescoring: dev lattices and the acoustic scale x word penalty grid applied to them.

As Kaldi's ``latgen`` + ``score.sh`` (``lattice-scale --acoustic-scale`` + ``lattice-add-penalty`` +
``lattice-best-path``): each dev utterance is decoded ONCE into a lattice at a reference acoustic scale, the arcs'
graph and acoustic scores are kept apart, and every (acoustic scale, word penalty) of the grid is a best path
through the same lattice: cost = graph + (scale / decode_scale) * acoustic + penalty * words.

Two lattice generators: k2's pruned intersection (:func:`asr_distill.decode.k2_decoding.grid_lattice_words`,
bounded by max-active like the 1-best decoder) where k2 is installed, else kaldi-decoder's ``LatticeSimpleDecoder``
(raw state-level lattices, whose grid best paths are found together here: one pass over each lattice's states in
topological levels, vectorised over the grid).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import kaldi_decoder
import kaldifst
import numpy as np
import torch

from ..utils import Pathlike
from .backend import DecodingConfig, _fork_inputs, run_pool
from .k2_decoding import grid_lattice_words, k2_available
from .scoring import compute_wer, words_of
from .tuning import as_table, dev_wer, grid_rank

__all__ = ["WordLattice", "LatticeConfig", "lattice_of", "grid_best_paths", "decode_lattices",
           "tune_by_rescoring", "LATTICE_DECODERS"]

LATTICE_DECODERS = ("auto", "k2", "kaldi-decoder")

log = logging.getLogger(__name__)


@dataclass
class LatticeConfig:
    """Lattice generation: the search beam (as the 1-best decoder's) and the lattice beam (Kaldi's decode.sh: 6-8)."""

    beam: float = 13.0
    lattice_beam: float = 8.0


@dataclass
class WordLattice:
    """A raw lattice as arrays: arc ``i`` goes ``src[i] -> dst[i]`` with output ``word[i]`` (0: none), graph cost
    ``graph[i]`` and acoustic cost ``acoustic[i]`` (unscaled: minus the pdf log-likelihoods); ``final`` maps final
    states to their (graph, acoustic) costs.  ``levels``: the arcs grouped by the topological level of their source
    state, so that every arc into a state is in an earlier group than every arc out of it."""

    num_states: int
    start: int
    src: np.ndarray
    dst: np.ndarray
    word: np.ndarray
    graph: np.ndarray
    acoustic: np.ndarray
    final_states: np.ndarray
    final_graph: np.ndarray
    final_acoustic: np.ndarray
    levels: List[np.ndarray]


def _levels(num_states: int, start: int, src: np.ndarray, dst: np.ndarray) -> List[np.ndarray]:
    """Kahn's topological sort, a level at a time: arc groups by the level of their source state.  Arcs from states
    the start does not reach are left out (they would hold their targets' in-degree above zero forever)."""
    order = np.argsort(src, kind="stable")
    first = np.searchsorted(src[order], np.arange(num_states + 1))

    def arcs_from(states: np.ndarray) -> np.ndarray:
        starts = first[states]
        lens = first[states + 1] - starts
        total = int(lens.sum())
        return order[np.repeat(starts - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(total)]

    reached = np.zeros(num_states, dtype=bool)
    reached[start] = True
    frontier = np.array([start])
    while frontier.size:
        targets = np.unique(dst[arcs_from(frontier)])
        frontier = targets[~reached[targets]]
        reached[frontier] = True
    live = reached[src]
    indegree = np.bincount(dst[live], minlength=num_states)
    groups: List[np.ndarray] = []
    frontier = np.array([start])
    while frontier.size:
        arcs = arcs_from(frontier)
        if arcs.size == 0:
            break
        groups.append(arcs)
        targets = dst[arcs]
        np.subtract.at(indegree, targets, 1)
        frontier = np.unique(targets[indegree[targets] == 0])
    return groups


def lattice_of(lattice, decode_scale: float) -> WordLattice:
    """Arrays of a kaldifst ``Lattice`` decoded with acoustic scale ``decode_scale`` (its acoustic costs are
    scaled by it; they are divided back here).  Read through the lattice's OpenFst text form: kaldifst has no arc
    iterator for lattices."""
    arcs: List[List[str]] = []
    finals: List[List[str]] = []
    for line in lattice.to_str().replace(",", " ").splitlines():
        fields = line.split()
        if len(fields) == 6:
            arcs.append(fields)
        elif len(fields) == 4:  # the weight One (0, 0) is not written
            arcs.append(fields + ["0", "0"])
        elif len(fields) == 3:
            finals.append(fields)
        elif len(fields) == 1:
            finals.append([fields[0], "0", "0"])
        elif fields:
            raise ValueError(f"unexpected lattice line {line!r}")
    arc = np.asarray(arcs, dtype=np.float64).reshape(-1, 6)
    fin = np.asarray(finals, dtype=np.float64).reshape(-1, 3)
    src, dst = arc[:, 0].astype(np.int64), arc[:, 1].astype(np.int64)
    return WordLattice(lattice.num_states, lattice.start, src, dst, arc[:, 3].astype(np.int64), arc[:, 4],
                       arc[:, 5] / decode_scale, fin[:, 0].astype(np.int64), fin[:, 1], fin[:, 2] / decode_scale,
                       _levels(lattice.num_states, lattice.start, src, dst))


def grid_best_paths(lat: WordLattice, scales: Sequence[float], penalties: Sequence[float]) -> List[List[int]]:
    """Word ids of the best path for each grid point ``(scales[g], penalties[g])``: minimum of
    graph + scale * acoustic + penalty * (number of words), all grid points in one pass."""
    scales_a = np.asarray(scales, dtype=np.float64)[None, :]
    pens = np.asarray(penalties, dtype=np.float64)[None, :]
    num_grid = scales_a.shape[1]
    cost = lat.graph[:, None] + lat.acoustic[:, None] * scales_a + (lat.word[:, None] != 0) * pens
    alpha = np.full((lat.num_states, num_grid), np.inf)
    alpha[lat.start] = 0.0
    back = np.full((lat.num_states, num_grid), -1, dtype=np.int64)
    cols = np.arange(num_grid)
    for arcs in lat.levels:
        cand = alpha[lat.src[arcs]] + cost[arcs]  # (n, G)
        targets = lat.dst[arcs]
        # per target state and grid point: the best incoming arc of this level
        order = np.argsort(targets, kind="stable")
        t_sorted, c_sorted, a_sorted = targets[order], cand[order], arcs[order]
        starts = np.flatnonzero(np.r_[True, t_sorted[1:] != t_sorted[:-1]])
        best = np.minimum.reduceat(c_sorted, starts, axis=0)
        seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(t_sorted)]))
        pos = np.where(c_sorted == best[seg], np.arange(len(t_sorted))[:, None], len(t_sorted))
        arg = np.minimum.reduceat(pos, starts, axis=0)  # (u, G) positions in the sorted arcs
        uniq = t_sorted[starts]
        better = best < alpha[uniq]
        rows, gs = np.nonzero(better)
        alpha[uniq[rows], gs] = best[rows, gs]
        back[uniq[rows], gs] = a_sorted[arg[rows, gs]]
    total = alpha[lat.final_states] + lat.final_graph[:, None] + lat.final_acoustic[:, None] * scales_a
    if total.size == 0:
        return [[] for _ in range(num_grid)]
    state = lat.final_states[np.argmin(total, axis=0)]
    ok = np.isfinite(total.min(axis=0))
    words: List[List[int]] = [[] for _ in range(num_grid)]
    active = ok.copy()
    while active.any():
        arc = back[state, cols]
        active &= arc >= 0
        for g in np.flatnonzero(active & (lat.word[np.maximum(arc, 0)] != 0)):
            words[g].append(int(lat.word[arc[g]]))
        state = np.where(active, lat.src[np.maximum(arc, 0)], state)
    return [w[::-1] if ok[g] else [] for g, w in enumerate(words)]


# worker state: each process reads HCLG once
_worker: Dict[str, object] = {}


def _init_worker(hclg_path: str, tid2pdf: np.ndarray, decode_scale: float, config: LatticeConfig) -> None:
    torch.set_num_threads(1)
    hclg = kaldifst.StdVectorFst.read(hclg_path)
    opts = kaldi_decoder.LatticeSimpleDecoderConfig(beam=config.beam, lattice_beam=config.lattice_beam)
    _worker.update(hclg=hclg, decoder=kaldi_decoder.LatticeSimpleDecoder(hclg, opts),
                   columns=np.asarray(tid2pdf, dtype=np.int64)[1:], scale=decode_scale)


def _lattice_forked(utt: str) -> Tuple[str, WordLattice]:
    return _lattice_one((utt, _fork_inputs[utt]))


def _lattice_one(item: Tuple[str, np.ndarray]) -> Tuple[str, WordLattice]:
    utt, loglikes = item
    scores = np.ascontiguousarray(loglikes[:, _worker["columns"]], dtype=np.float32) * np.float32(_worker["scale"])
    decoder = _worker["decoder"]
    decoder.decode(kaldi_decoder.DecodableCtc(scores))
    ok, lattice = decoder.get_raw_lattice()
    if not ok or lattice.num_states == 0:
        raise RuntimeError(f"utterance {utt}: the lattice decoder reached no final state")
    return utt, lattice_of(lattice, _worker["scale"])


def decode_lattices(hclg_path: Pathlike, tid2pdf: np.ndarray, loglikes: Mapping[str, np.ndarray],
                    decode_scale: float, config: LatticeConfig = LatticeConfig(), jobs: int = 1
                    ) -> Dict[str, WordLattice]:
    """Each utterance's raw lattice as :class:`WordLattice`, decoded at ``decode_scale``."""
    items = list(loglikes.items())
    tid2pdf = np.asarray(tid2pdf, dtype=np.int64)
    if jobs <= 1 or len(items) < 8:
        _init_worker(str(hclg_path), tid2pdf, decode_scale, config)
        return dict(map(_lattice_one, items))
    return run_pool(_init_worker, (str(hclg_path), tid2pdf, decode_scale, config), _lattice_one, _lattice_forked,
                    loglikes, jobs)


def tune_by_rescoring(hclg_path: Pathlike, tid2pdf: np.ndarray, dev_loglikes: Mapping[str, np.ndarray],
                      dev_refs: Mapping[str, Sequence[str]], id2word: Mapping[int, str], scales: Sequence[float],
                      config: DecodingConfig, jobs: int = 1, penalties: Sequence[float] = (0.0,),
                      lattice_beam: float = 8.0, verify: int = 3, lattice_decoder: str = "auto"
                      ) -> Tuple[DecodingConfig, Dict[str, float]]:
    """:func:`asr_distill.decode.tuning.tune_acoustic_scale`'s choice (same grid, same tie-breaking: the larger
    scale, then the smaller penalty) from one lattice decode of DEV at the grid's middle scale.

    A lattice holds the paths within ``lattice_beam`` at the scale it was made with; far from that scale its best
    path can differ from a real decode's (better or worse).  So the ``verify`` best grid points by lattice WER are
    decoded for real, and the choice is the best of those real WERs; in the returned table the verified points hold
    their real WERs, the others their lattice WERs.

    ``lattice_decoder``: ``"k2"`` (pruned intersection with max-active, all of dev in a few batches), or
    ``"kaldi-decoder"`` (``LatticeSimpleDecoder``: no max-active, slow on large graphs with weak models); ``"auto"``
    takes k2 where it is installed."""
    t0 = time.time()
    decode_scale = float(np.median(scales))
    grid = [(s, p) for p in penalties for s in scales]
    generator = lattice_decoder if lattice_decoder != "auto" else ("k2" if k2_available() else "kaldi-decoder")
    if generator == "k2":
        grid_ids = grid_lattice_words(hclg_path, tid2pdf, dev_loglikes, decode_scale, grid, config, lattice_beam)
        t1 = time.time()
    elif generator == "kaldi-decoder":
        lattices = decode_lattices(hclg_path, tid2pdf, dev_loglikes, decode_scale,
                                   LatticeConfig(beam=config.beam, lattice_beam=lattice_beam), jobs)
        t1 = time.time()
        grid_ids = [{} for _ in grid]
        for utt, lat in lattices.items():
            for g, ids in enumerate(grid_best_paths(lat, [s for s, _ in grid], [p for _, p in grid])):
                grid_ids[g][utt] = ids
    else:
        raise ValueError(f"lattice_decoder must be one of {LATTICE_DECODERS}, not {lattice_decoder!r}")
    wers = {k: compute_wer(dev_refs, {u: words_of(ids, id2word) for u, ids in grid_ids[g].items()},
                           bootstrap_replications=0).wer for g, k in enumerate(grid)}
    t2 = time.time()
    rank = grid_rank(wers)
    verified = sorted(wers, key=rank)[:max(1, verify)]
    for scale, penalty in verified:
        wers[(scale, penalty)] = dev_wer(hclg_path, tid2pdf, dev_loglikes, dev_refs, id2word,
                                         config.with_(acoustic_scale=scale, word_penalty=penalty), jobs)
    scale, penalty = min(verified, key=rank)
    log.info("  dev: %s lattices at scale %.4f (%.0f s), %d-point grid rescored (%.0f s), best %d decoded (%.0f s): "
             "acoustic scale %.4f, word penalty %.2f: WER %.2f%%", generator, decode_scale, t1 - t0, len(grid), t2 - t1,
             len(verified), time.time() - t2, scale, penalty, wers[(scale, penalty)])
    return config.with_(acoustic_scale=scale, word_penalty=penalty), as_table(wers)
