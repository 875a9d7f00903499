"""Decoding with k2: Kaldi's HCLG as a k2 FSA, many utterances intersected at once (``intersect_dense_pruned``).

k2 is optional (``tools/build_k2.sh`` builds it here; elsewhere k2-fsa's wheel index has builds for each torch):
without it this module still imports, and :func:`require_k2` names the remedy when a k2 path is asked for.

The graph is the same ``HCLG.fst`` kaldi-decoder reads, converted once:

* input labels: Kaldi's transition-ids become ``pdf + 1``.  Only the pdf's score enters the search, so the dense
  score matrix has one column per pdf instead of one per transition-id (column 0 is epsilon's, unused);
* input epsilons (word-boundary and back-off arcs) are removed (``k2.remove_epsilon``, tropical): in k2 every
  arc consumes a frame.  Words move onto the arcs that remain, several per arc where epsilons were chained
  (ragged ``aux_labels``);
* the graph cost becomes k2's score (``-cost``); the word insertion penalty is subtracted per word carried.

The converted graph is cached beside the HCLG as ``HCLG.k2.pt`` (plain tensors, loaded with ``weights_only``),
keyed by the HCLG's size and modification time.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..utils import Pathlike
from .backend import BACKENDS, DecodingBackend, DecodingConfig, K2NotInstalled

try:  # optional dependency
    import k2
except ImportError:  # pragma: no cover - depends on the environment
    k2 = None

__all__ = ["k2_available", "require_k2", "hclg_to_k2", "load_k2_graph", "K2Backend", "dense_scores",
           "best_path_words", "length_batches", "grid_lattice_words", "K2_INSTALL_HINT"]

log = logging.getLogger(__name__)

K2_INSTALL_HINT = ("k2 is not installed: build it here with tools/build_k2.sh (offline, from ../shared/vendor/k2), "
                   "or install k2-fsa's wheel for your torch version (https://k2-fsa.github.io/k2/installation/)")

# Cache format of HCLG.k2.pt; bump when the conversion changes.
CACHE_VERSION = 1


def k2_available() -> bool:
    return k2 is not None


def require_k2() -> None:
    if k2 is None:
        raise K2NotInstalled(K2_INSTALL_HINT)


def _hclg_arcs(fst) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dest, ilabel, olabel) int64 rows, costs, and final costs (inf where not final) of a kaldifst FST,
    read from its OpenFst text form (one pass in C++, much faster than Python arc iterators)."""
    rows, costs, finals = [], [], {}
    for line in fst.to_str(is_acceptor=False, show_weight_one=True).splitlines():
        f = line.split()
        if len(f) >= 4:
            rows.append((int(f[0]), int(f[1]), int(f[2]), int(f[3])))
            costs.append(float(f[4]) if len(f) > 4 else 0.0)
        elif f:
            finals[int(f[0])] = float(f[1]) if len(f) > 1 else 0.0
    final = np.full(fst.num_states, np.inf)
    for s, c in finals.items():
        final[s] = c
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4), np.asarray(costs, dtype=np.float64), final


def hclg_to_k2(hclg, tid2pdf: np.ndarray) -> "k2.Fsa":
    """A kaldifst HCLG (or its path) -> a k2 transducer over pdf labels (``pdf + 1``) with input epsilons removed;
    ``aux_labels`` (ragged) are the word ids, scores are ``-cost``."""
    require_k2()
    import kaldifst
    fst = kaldifst.StdVectorFst.read(str(hclg)) if not isinstance(hclg, kaldifst.StdVectorFst) else hclg
    if fst.start < 0 or fst.num_states == 0:
        raise ValueError(f"{hclg}: empty HCLG (no start state)")
    arcs, costs, final = _hclg_arcs(fst)
    tid2pdf = np.asarray(tid2pdf, dtype=np.int64)
    if arcs[:, 2].max(initial=0) >= len(tid2pdf):
        raise ValueError(f"{hclg}: input label {arcs[:, 2].max()} beyond the transition-id table "
                         f"({len(tid2pdf) - 1} transition-ids): graph and model disagree")
    labels = np.where(arcs[:, 2] > 0, tid2pdf[arcs[:, 2]] + 1, 0)
    # k2 wants the start state 0 and one final state, the last, entered only by arcs labelled -1: renumber so
    # that the start comes first, then add the super-final state.
    n = fst.num_states
    order = np.concatenate([[fst.start], np.delete(np.arange(n), fst.start)])
    new_id = np.empty(n, dtype=np.int64)
    new_id[order] = np.arange(n)
    finals = np.flatnonzero(np.isfinite(final))
    if not len(finals):
        raise ValueError(f"{hclg}: no final state")
    src = np.concatenate([new_id[arcs[:, 0]], new_id[finals]])
    dst = np.concatenate([new_id[arcs[:, 1]], np.full(len(finals), n)])
    lab = np.concatenate([labels, np.full(len(finals), -1)])
    aux = np.concatenate([arcs[:, 3], np.full(len(finals), -1)])
    score = np.concatenate([-costs, -final[finals]]).astype(np.float32)
    by_src = np.argsort(src, kind="stable")  # k2 wants arcs grouped by source state
    arcs_t = torch.from_numpy(np.stack([src, dst, lab], 1)[by_src].astype(np.int32))
    fsa = k2.Fsa(torch.cat([arcs_t, torch.from_numpy(score[by_src]).view(torch.int32).unsqueeze(1)], 1),
                 aux_labels=torch.from_numpy(aux[by_src].astype(np.int32)))
    return k2.remove_epsilon(k2.connect(fsa))


def _word_counts(fsa: "k2.Fsa") -> torch.Tensor:
    """Words (aux labels > 0) each arc of an epsilon-removed graph carries."""
    aux = fsa.aux_labels
    if isinstance(aux, torch.Tensor):
        return (aux > 0).to(torch.float32)
    row_ids = aux.shape.row_ids(1).long()
    return torch.zeros(fsa.num_arcs).index_add_(0, row_ids, (aux.values > 0).to(torch.float32))


def _to_tensors(fsa: "k2.Fsa") -> Dict[str, torch.Tensor]:
    aux = fsa.aux_labels
    return {"arcs": fsa.arcs.values()[:, :3].contiguous(), "scores": fsa.scores.detach().clone(),
            "aux_row_splits": aux.shape.row_splits(1), "aux_values": aux.values}


def _from_tensors(d: Mapping[str, torch.Tensor]) -> "k2.Fsa":
    arcs = torch.cat([d["arcs"], d["scores"].view(torch.int32).unsqueeze(1)], 1)
    shape = k2.ragged.create_ragged_shape2(row_splits=d["aux_row_splits"], cached_tot_size=len(d["aux_values"]))
    return k2.Fsa(arcs, aux_labels=k2.RaggedTensor(shape, d["aux_values"]))


def load_k2_graph(hclg_path: Pathlike, tid2pdf: np.ndarray, cache: bool = True) -> "k2.Fsa":
    """:func:`hclg_to_k2` of ``hclg_path``, through the ``HCLG.k2.pt`` cache beside it (rebuilt when the HCLG
    changed; not written where the directory is read-only)."""
    require_k2()
    hclg_path = Path(hclg_path)
    st = hclg_path.stat()
    key = torch.tensor([CACHE_VERSION, st.st_size, st.st_mtime_ns, len(tid2pdf)], dtype=torch.int64)
    cache_path = hclg_path.with_suffix(".k2.pt")
    if cache and cache_path.is_file():
        try:
            d = torch.load(cache_path, weights_only=True)
            if torch.equal(d["key"], key):
                return _from_tensors(d)
        except (RuntimeError, KeyError, EOFError) as e:  # a partial or foreign file: rebuild it
            log.warning("%s: unreadable (%s); converting %s again", cache_path, e, hclg_path)
    fsa = hclg_to_k2(hclg_path, tid2pdf)
    if cache and os.access(hclg_path.parent, os.W_OK):
        tmp = cache_path.with_name(cache_path.name + f".tmp{os.getpid()}")
        torch.save({"key": key, **_to_tensors(fsa)}, tmp)
        os.replace(tmp, cache_path)
    return fsa


def dense_scores(loglikes: List[np.ndarray], acoustic_scale: float, device: torch.device
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded ``(N, T, num_pdfs + 1)`` scores for the pdf-labelled graph (column 0: epsilon, never used) and the
    ``(N, 3)`` supervision segments ``[index, 0, frames]`` of :class:`k2.DenseFsaVec`."""
    n, t = len(loglikes), max(len(x) for x in loglikes)
    num_pdfs = loglikes[0].shape[1]
    scores = torch.full((n, t, num_pdfs + 1), -1e10, dtype=torch.float32)
    for i, x in enumerate(loglikes):
        scores[i, :len(x), 1:] = torch.from_numpy(np.asarray(x, dtype=np.float32)) * acoustic_scale
    segments = torch.tensor([[i, 0, len(x)] for i, x in enumerate(loglikes)], dtype=torch.int32)
    return scores.to(device), segments


def best_path_words(best: "k2.Fsa") -> List[List[int]]:
    """Word ids along each linear FSA of ``best`` (epsilons and the final -1 dropped)."""
    aux = best.aux_labels
    if isinstance(aux, torch.Tensor):
        aux = k2.RaggedTensor(best.arcs.shape(), aux)
        return [[w for w in row if w > 0] for row in aux.remove_axis(1).tolist()]
    aux = aux.remove_values_leq(0)
    shape = best.arcs.shape().compose(aux.shape).remove_axis(1).remove_axis(1)
    return k2.RaggedTensor(shape, aux.values).tolist()


def length_batches(loglikes: Mapping[str, np.ndarray], max_scores: int) -> List[List[str]]:
    """Utterance ids (empty ones left out) sorted by length and cut into batches of at most ``max_scores`` padded
    scores (frames x (num_pdfs + 1))."""
    utts = sorted((u for u, x in loglikes.items() if len(x)), key=lambda u: len(loglikes[u]))
    batches: List[List[str]] = []
    batch: List[str] = []
    for u in utts:
        x = loglikes[u]
        if batch and (len(batch) + 1) * len(x) * (x.shape[1] + 1) > max_scores:
            batches.append(batch)
            batch = []
        batch.append(u)
    return batches + [batch] if batch else batches


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and k2 is not None and k2.with_cuda else "cpu")


# The last graph loaded, per device: a tuning grid builds a backend per (acoustic scale, word penalty) point.
_loaded: Dict[tuple, "k2.Fsa"] = {}


def _graph(hclg_path: Pathlike, tid2pdf: np.ndarray, device: torch.device) -> "k2.Fsa":
    st = Path(hclg_path).stat()
    key = (str(hclg_path), st.st_mtime_ns, st.st_size, np.asarray(tid2pdf).tobytes(), str(device))
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = load_k2_graph(hclg_path, tid2pdf).to(device)
    # a copy whose scores the word penalty can change without touching the cached graph
    return _loaded[key].clone() if hasattr(_loaded[key], "clone") else _loaded[key]


class K2Backend(DecodingBackend):
    """k2's pruned intersection of the HCLG with a batch of utterances' scores, then the best path of each.

    Kaldi's beams map onto k2's: ``beam`` -> ``search_beam``, ``max_active``/``min_active`` -> the active-state
    bounds; ``output_beam`` keeps a narrow lattice around the best path (only the best path is read)."""

    # frames x (num_pdfs + 1) floats per batch
    MAX_BATCH_SCORES = 40_000_000

    def __init__(self, hclg_path: Pathlike, tid2pdf: np.ndarray, config: DecodingConfig,
                 device: Optional[torch.device] = None):
        require_k2()
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        graph = _graph(hclg_path, tid2pdf, self.device)
        if config.word_penalty:
            graph.scores = graph.scores - config.word_penalty * _word_counts(graph)
        self.graph = graph

    def decode(self, loglikes: np.ndarray) -> List[int]:
        return self.decode_many({"u": loglikes})["u"]

    def decode_many(self, loglikes: Mapping[str, np.ndarray]) -> Dict[str, List[int]]:
        """Words of every utterance, decoded in batches of similar length."""
        out: Dict[str, List[int]] = {u: [] for u, x in loglikes.items() if len(x) == 0}
        for batch in length_batches(loglikes, self.MAX_BATCH_SCORES):
            out.update(zip(batch, self._decode_batch([loglikes[b] for b in batch])))
        return out

    def _decode_batch(self, loglikes: List[np.ndarray]) -> List[List[int]]:
        c = self.config
        scores, segments = dense_scores(loglikes, c.acoustic_scale, self.device)
        dense = k2.DenseFsaVec(scores, segments)
        # allow_partial: where no final state is active at the last frame, the best active state ends the path,
        # as kaldi-decoder's FasterDecoder does when no final state was reached
        lattice = k2.intersect_dense_pruned(self.graph, dense, search_beam=c.beam, output_beam=min(c.beam, 8.0),
                                            min_active_states=c.min_active, max_active_states=c.max_active,
                                            allow_partial=True)
        return best_path_words(k2.shortest_path(lattice, use_double_scores=True))


BACKENDS["k2"] = K2Backend


def grid_lattice_words(hclg_path: Pathlike, tid2pdf: np.ndarray, loglikes: Mapping[str, np.ndarray],
                       decode_scale: float, grid: List[Tuple[float, float]], config: DecodingConfig,
                       lattice_beam: float = 8.0, device: Optional[torch.device] = None
                       ) -> List[Dict[str, List[int]]]:
    """Decode once, rescore a grid: each utterance is intersected with HCLG once at ``decode_scale`` (search beam
    and active-state bounds as ``config``'s, lattice = ``lattice_beam``), then for every ``(acoustic scale, word
    penalty)`` of ``grid`` the lattice's arcs are rescored as graph + (scale / decode_scale) x acoustic - penalty x
    words (Kaldi's lattice-scale + lattice-add-penalty) and its best path read.  Returns the words per grid point
    per utterance."""
    require_k2()
    device = torch.device(device) if device is not None else default_device()
    graph = _graph(hclg_path, tid2pdf, device)
    graph.graph_scores = graph.scores.clone()  # tensor attributes follow the arcs into the lattice
    graph.num_words = _word_counts(graph).to(device)
    out: List[Dict[str, List[int]]] = [{u: [] for u, x in loglikes.items() if len(x) == 0} for _ in grid]
    for batch in length_batches(loglikes, K2Backend.MAX_BATCH_SCORES):
        scores, segments = dense_scores([loglikes[b] for b in batch], decode_scale, device)
        lattice = k2.intersect_dense_pruned(graph, k2.DenseFsaVec(scores, segments), search_beam=config.beam,
                                            output_beam=lattice_beam, min_active_states=config.min_active,
                                            max_active_states=config.max_active, allow_partial=True)
        graph_scores, num_words = lattice.graph_scores, lattice.num_words
        acoustic = lattice.scores - graph_scores  # decode_scale x log-likelihoods (0 on the final arcs)
        for g, (scale, penalty) in enumerate(grid):
            lattice.scores = graph_scores + acoustic * (scale / decode_scale) - penalty * num_words
            words = best_path_words(k2.shortest_path(lattice, use_double_scores=True))
            out[g].update(zip(batch, words))
    return out
