"""Choosing the acoustic scale and word penalty on dev without decoding every grid point: lattice rescoring
(asr_distill.decode.lattice; best paths for a whole grid, checked against brute force and the 1-best decoder) and
the descent (asr_distill.decode.tuning.search_acoustic_scale), both against the full grid."""
from __future__ import annotations

import itertools

import kaldi_hmm_gmm as khg  # noqa: F401  (import before kaldifst, as the library does)
import kaldifst
import numpy as np
import pytest

from asr_distill.decode import DecodingConfig, compute_wer, decode_loglikes, words_of
from asr_distill.decode.k2_decoding import k2_available
from asr_distill.decode.lattice import decode_lattices, grid_best_paths, lattice_of, tune_by_rescoring
from asr_distill.decode.tuning import search_acoustic_scale, tune_acoustic_scale
from asr_distill.gmm import StateInventory
from asr_distill.lang import Lang


def _lattice(num_states, arcs, finals, start=0):
    lat = kaldifst.Lattice()
    for _ in range(num_states):
        lat.add_state()
    lat.start = start
    for s, d, word, g, a in arcs:
        lat.add_arc(s, kaldifst.LatticeArc(1, word, kaldifst.LatticeWeight(g, a), d))
    for s, g, a in finals:
        lat.set_final(s, kaldifst.LatticeWeight(g, a))
    return lat


def _brute_force(num_states, arcs, finals, start, scale, penalty):
    """Every path from start to a final state, the cheapest one's words."""
    out = {s: [(d, w, g, a) for s2, d, w, g, a in arcs if s2 == s] for s in range(num_states)}
    fin = {s: (g, a) for s, g, a in finals}
    best = (np.inf, None)

    def walk(s, cost, words):
        nonlocal best
        if s in fin:
            total = cost + fin[s][0] + scale * fin[s][1]
            if total < best[0] - 1e-9:
                best = (total, list(words))
        for d, w, g, a in out[s]:
            walk(d, cost + g + scale * a + (penalty if w else 0.0), words + ([w] if w else []))

    walk(start, 0.0, [])
    return best[1]


def test_grid_best_paths_match_brute_force_on_random_lattices():
    rng = np.random.default_rng(0)
    scales, penalties = [0.05, 0.1, 0.3, 1.0, 3.0], [0.0, 0.5, 4.0]
    grid = list(itertools.product(scales, penalties))
    for trial in range(40):
        n = int(rng.integers(3, 9))
        # a random DAG whose state numbers are NOT in topological order (a permutation of a ranked order)
        rank = rng.permutation(n)
        start = int(np.argmin(rank))
        arcs = []
        for s in range(n):
            for d in range(n):
                if rank[d] > rank[s] and rng.random() < 0.5:
                    arcs.append((s, d, int(rng.integers(0, 4)), float(rng.uniform(0, 3)), float(rng.uniform(0, 30))))
        finals = [(s, float(rng.uniform(0, 1)), float(rng.uniform(0, 5))) for s in range(n)
                  if rank[s] >= n - 2 and s != start]
        decode_scale = 0.1
        lat = _lattice(n, [(s, d, w, g, a * decode_scale) for s, d, w, g, a in arcs],
                       [(s, g, a * decode_scale) for s, g, a in finals], start)
        paths = grid_best_paths(lattice_of(lat, decode_scale), [s for s, _ in grid], [p for _, p in grid])
        for (scale, penalty), words in zip(grid, paths):
            expected = _brute_force(n, arcs, finals, start, scale, penalty)
            assert words == (expected or []), (trial, scale, penalty)


def test_penalty_and_scale_move_the_choice_between_two_paths():
    # path A: one word, acoustically worse; path B: three words, acoustically better
    arcs = [(0, 1, 7, 1.0, 50.0), (1, 4, 0, 0.0, 0.0),
            (0, 2, 8, 1.0, 10.0), (2, 3, 9, 1.0, 10.0), (3, 4, 10, 1.0, 10.0)]
    lat = lattice_of(_lattice(5, arcs, [(4, 0.0, 0.0)]), 1.0)
    paths = grid_best_paths(lat, [0.01, 1.0, 1.0], [0.0, 0.0, 10.0])
    assert paths == [[7], [8, 9, 10], [7]]


def _two_words(gmm_dev) -> float:
    """Two reference words of dev, in WER points: the noise allowed between two choices of the scale."""
    return 200.0 / sum(len(r) for r in gmm_dev["refs"].values())


@pytest.fixture(scope="module")
def gmm_dev(exp):
    from asr_distill.recipe.gmm_stage import load_targets_system, system_features
    system = load_targets_system(exp)
    lang = Lang.load(exp.lang_dir)
    ll = {u: system.gmm.loglikes(f) for u, f in system_features(exp, system, "dev").items()}
    refs = {u: t.split() for u, t in exp.texts("dev").items()}
    return dict(ll=ll, refs=refs, tid2pdf=StateInventory.load(exp.inventory_dir).tid2pdf, id2word=lang.id2word(),
                hclg=exp.hclg_path)


def test_lattice_best_path_is_the_one_best_decode_at_the_decoding_scale(gmm_dev):
    """At the scale the lattices were made with, their best paths are what the 1-best decoder finds (up to its
    max-active pruning)."""
    scale = 0.05
    lattices = decode_lattices(gmm_dev["hclg"], gmm_dev["tid2pdf"], gmm_dev["ll"], scale, jobs=2)
    one_best = decode_loglikes(gmm_dev["hclg"], gmm_dev["tid2pdf"], gmm_dev["ll"],
                               DecodingConfig(acoustic_scale=scale), jobs=2)
    same = sum(grid_best_paths(lattices[u], [scale], [0.0])[0] == one_best[u] for u in lattices)
    assert same >= 0.9 * len(lattices)


@pytest.mark.parametrize("lattice_decoder", [
    "kaldi-decoder",
    pytest.param("k2", marks=pytest.mark.skipif(not k2_available(), reason="k2 is not installed")),
])
def test_rescoring_tuner_chooses_as_the_decoding_grid_does(gmm_dev, lattice_decoder):
    scales, penalties = (0.02, 0.04, 0.08, 0.15), (0.0, 2.0)
    args = (gmm_dev["hclg"], gmm_dev["tid2pdf"], gmm_dev["ll"], gmm_dev["refs"], gmm_dev["id2word"], scales,
            DecodingConfig())
    by_lattice, lattice_wers = tune_by_rescoring(*args, jobs=2, penalties=penalties, lattice_decoder=lattice_decoder)
    by_decoding, decoding_wers = tune_acoustic_scale(*args, jobs=2, penalties=penalties)
    assert set(lattice_wers) == set(decoding_wers)
    # the choice is as good as the grid's, measured by a real decode of dev with it; its table entry is that decode
    hyps = decode_loglikes(gmm_dev["hclg"], gmm_dev["tid2pdf"], gmm_dev["ll"], by_lattice, jobs=2)
    real = compute_wer(gmm_dev["refs"], {u: words_of(h, gmm_dev["id2word"]) for u, h in hyps.items()},
                       bootstrap_replications=0).wer
    key = f"{by_lattice.acoustic_scale:g}/{by_lattice.word_penalty:g}"
    assert lattice_wers[key] == pytest.approx(real) == pytest.approx(decoding_wers[key])
    assert real <= min(decoding_wers.values()) + _two_words(gmm_dev)
    assert by_lattice.beam == DecodingConfig().beam


def test_search_lands_where_the_full_grid_does_with_fewer_decodes(gmm_dev):
    scales, penalties = (0.02, 0.03, 0.04, 0.06, 0.08, 0.15), (0.0, 1.0, 2.0)
    args = (gmm_dev["hclg"], gmm_dev["tid2pdf"], gmm_dev["ll"], gmm_dev["refs"], gmm_dev["id2word"], scales,
            DecodingConfig())
    searched, searched_wers = search_acoustic_scale(*args, jobs=2, penalties=penalties)
    full, full_wers = tune_acoustic_scale(*args, jobs=2, penalties=penalties)
    assert len(searched_wers) < len(full_wers)
    # every visited point's WER is the full grid's (same decodes), and the choice is the grid's best or close to it
    assert all(full_wers[k] == pytest.approx(v) for k, v in searched_wers.items())
    key = f"{searched.acoustic_scale:g}/{searched.word_penalty:g}"
    assert searched_wers[key] == min(searched_wers.values())
    assert searched_wers[key] <= min(full_wers.values()) + _two_words(gmm_dev)
