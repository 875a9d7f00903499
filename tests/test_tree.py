"""Tied-state triphone trees: statistics, questions, greedy splits, the Kaldi tree file, and the triphone system the
slice experiment trains (its graph decodes, its alignments are frame-synchronous with the fbank features)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from asr_distill.gmm.questions import cluster_phones
from asr_distill.gmm.tree import Leaf, Split, Tree, build_tree, read_context_dependency
from asr_distill.gmm.tree_stats import TreeStats, accumulate_tree_stats, gauss_objf
from asr_distill.gmm.system import check_gmm_systems


def _stats_of(utts):
    """utts: name -> (phones, states, starts, feats) -> tree statistics."""
    return accumulate_tree_stats({u: np.array(v[0]) for u, v in utts.items()},
                                 {u: np.array(v[1]) for u, v in utts.items()},
                                 {u: np.array(v[2], dtype=bool) for u, v in utts.items()},
                                 {u: np.array(v[3], dtype=np.float64)[:, None] for u, v in utts.items()})


def test_tree_statistics_equal_a_hand_computation():
    utts = {
        # phone 1 (states 0, 1) then phone 2 (states 0, 1, 2)
        "a": ([1, 1, 2, 2, 2], [0, 1, 0, 1, 2], [1, 0, 1, 0, 0], [1, 2, 3, 4, 5]),
        # phone 2 twice in a row: two instances, told apart by the return to state 0
        "b": ([2, 2, 2, 2, 2, 2, 2], [0, 1, 1, 2, 0, 1, 2], [1, 0, 0, 0, 1, 0, 0], [6, 7, 8, 9, 10, 11, 12]),
    }
    stats = _stats_of(utts)
    got = {(tuple(w), int(c)): (n, s[0], q[0]) for w, c, n, s, q in
           zip(stats.windows.tolist(), stats.pdf_classes, stats.counts, stats.sums, stats.sumsqs)}
    want = {
        ((0, 1, 2), 0): (1, 1, 1), ((0, 1, 2), 1): (1, 2, 4),
        ((1, 2, 0), 0): (1, 3, 9), ((1, 2, 0), 1): (1, 4, 16), ((1, 2, 0), 2): (1, 5, 25),
        ((0, 2, 2), 0): (1, 6, 36), ((0, 2, 2), 1): (2, 15, 113), ((0, 2, 2), 2): (1, 9, 81),
        ((2, 2, 0), 0): (1, 10, 100), ((2, 2, 0), 1): (1, 11, 121), ((2, 2, 0), 2): (1, 12, 144),
    }
    assert got == want


def _contextual_stats(seed=0):
    """Phone 1's frames depend on its left phone: left 2 or 3 -> mean 0, left 4 or 5 -> mean 5; the right phone
    and the HMM state change nothing.  Phone 2's frames are one Gaussian."""
    rng = np.random.default_rng(seed)
    rows = []
    for left, right, state in itertools.product([2, 3, 4, 5], [2, 3, 4, 5], [0, 1, 2]):
        x = rng.normal(0.0 if left in (2, 3) else 5.0, 1.0, size=(200, 2))
        rows.append(((left, 1, right), state, x))
    for right, state in itertools.product([1, 3], [0, 1, 2]):
        rows.append(((1, 2, right), state, rng.normal(-3.0, 1.0, size=(200, 2))))
    windows = np.array([r[0] for r in rows])
    return TreeStats(windows, np.array([r[1] for r in rows]), np.array([len(r[2]) for r in rows], float),
                     np.stack([r[2].sum(0) for r in rows]), np.stack([(r[2] ** 2).sum(0) for r in rows]))


def _gain(stats, rows, key, yes):
    sel = np.isin(stats.key_values(key)[rows], yes)

    def objf(r):
        return gauss_objf(stats.counts[r].sum(), stats.sums[r].sum(0), stats.sumsqs[r].sum(0))
    return objf(rows[sel]) + objf(rows[~sel]) - objf(rows)


def test_the_split_chosen_is_the_one_of_largest_gain():
    stats = _contextual_stats()
    questions = [[2, 3], [2, 4], [3, 5], [4, 5], [2], [5], [1, 3]]
    tree = build_tree(stats, [1, 2], questions, {1: 3, 2: 3}, max_leaves=3, min_gain=0.0, cluster_thresh=0.0)
    root = tree.roots[1]
    assert isinstance(root, Split) and isinstance(tree.roots[2], Leaf)
    rows = np.flatnonzero(stats.windows[:, 1] == 1)
    gains = {(k, tuple(q)): _gain(stats, rows, k, q) for k in (0, 2) for q in questions}
    gains.update({(-1, (0,)): _gain(stats, rows, -1, [0]), (-1, (0, 1)): _gain(stats, rows, -1, [0, 1])})
    best_key, best_set = max(gains, key=gains.get)
    assert (best_key, best_set) == (0, (2, 3)) or (best_key, best_set) == (0, (4, 5))
    # the tree took it (a set and its complement within the seen values are the same split)
    assert root.key == 0 and set(root.yes_set) in ({2, 3}, {4, 5})
    assert tree.split_gains[0] == pytest.approx(gains[(best_key, best_set)])


def test_leaves_that_gain_nothing_apart_are_merged_back():
    stats = _contextual_stats()
    questions = [[2, 3], [4, 5], [2], [4]]
    # splitting on to 6 leaves divides same-distribution data; merging below the smallest real gain undoes that
    unmerged = build_tree(stats, [1, 2], questions, {1: 3, 2: 3}, max_leaves=6, min_gain=0.0, cluster_thresh=0.0)
    merged = build_tree(stats, [1, 2], questions, {1: 3, 2: 3}, max_leaves=6, min_gain=0.0, cluster_thresh=50.0)
    assert unmerged.num_pdfs == 6 and merged.num_pdfs == 3  # phone 1: left {2,3} vs {4,5}; phone 2: one


def test_tree_file_loads_in_context_dependency_with_the_same_map(tmp_path):
    stats = _contextual_stats()
    tree = build_tree(stats, [1, 2], cluster_phones(stats, [1, 2, 3, 4, 5]) + [[2, 3]], {1: 3, 2: 3},
                      max_leaves=6, min_gain=0.0)
    tree.write(tmp_path / "tree", max_phone=6)
    cd = read_context_dependency(tmp_path / "tree")
    assert (cd.context_width, cd.central_position, cd.num_pdfs) == (3, 1, tree.num_pdfs)
    for left, centre, right, state in itertools.product(range(7), (1, 2), range(7), range(3)):
        ok, pdf = cd.compute([left, centre, right], state)
        assert ok and pdf == tree.pdf([left, centre, right], state)
    # and the hand-made tree of the documentation: phone 2 split on its left phone, then on the HMM state
    hand = Tree({1: Leaf(0), 2: Split(0, (1,), Leaf(1), Split(-1, (0,), Leaf(2), Leaf(3)))}, num_pdfs=4)
    cd = hand.context_dependency(max_phone=2)
    assert [cd.compute(w, s)[1] for w, s in [([1, 2, 0], 2), ([0, 2, 1], 0), ([0, 2, 1], 1), ([2, 1, 2], 2)]] \
        == [1, 2, 3, 0]


def test_questions_are_a_binary_clustering_of_the_phones():
    stats = _contextual_stats()
    questions = cluster_phones(stats, [1, 2])
    assert [1, 2] in questions and [1] in questions and [2] in questions


@pytest.mark.parametrize("chain, said", [
    ("tri1", "starts with mono"), ("mono,tri3", "list tri2"), ("mono,tri2,tri1", "in the order"),
    ("mono,tri4", "unknown"),
])
def test_bad_gmm_chains_are_refused(chain, said):
    with pytest.raises(ValueError, match=said):
        check_gmm_systems(chain.split(","))


def test_the_experiment_decodes_with_a_triphone_graph(exp):
    """Stage 3's last system is the triphone one: its tree (context 3) is the experiment's, HCLG was built with it,
    and with a sure classifier (the aligned pdf of every frame) HCLG gives back the transcript."""
    from asr_distill.decode import DecodingConfig, decode_loglikes, words_of
    from asr_distill.fst import read_tid2pdf
    from asr_distill.gmm import StateInventory
    from asr_distill.lang import Lang
    from asr_distill.utils import read_json
    from conftest import pdf_alignments

    assert read_json(exp.gmm_dir / "targets.json")["system"] == "tri1"
    inv = StateInventory.load(exp.inventory_dir)
    mono = StateInventory.load(exp.gmm_system_dir("mono") / "inventory")
    assert inv.tree.context_width == 3 and inv.num_pdfs > mono.num_pdfs
    assert read_context_dependency(exp.graph_dir / "tree").num_pdfs == inv.num_pdfs
    tid2pdf = read_tid2pdf(exp.tid2pdf_path)
    np.testing.assert_array_equal(tid2pdf, inv.tid2pdf)
    labels = dict([(u, p) for u, p in pdf_alignments(exp, "dev").items() if (p >= 0).all()][:4])  # aligned ones
    loglikes = {}
    for u, pdfs in labels.items():
        ll = np.full((len(pdfs), inv.num_pdfs), -20.0, dtype=np.float32)
        ll[np.arange(len(pdfs)), pdfs] = 0.0
        loglikes[u] = ll
    hyps = decode_loglikes(exp.hclg_path, tid2pdf, loglikes, DecodingConfig(acoustic_scale=1.0, beam=13.0), 1)
    id2word = Lang.load(exp.lang_dir).id2word()
    texts = exp.texts("dev")
    assert {u: words_of(h, id2word) for u, h in hyps.items()} == {u: texts[u].split() for u in labels}


def test_lda_mllt_and_sat_systems_train_decode_and_label_the_frames(built, tmp_path):
    """The chain's upper systems on the slice: tri2 (LDA+MLLT) and tri3 (SAT) train on top of the session's mono
    and tri1 (reused, not retrained), each is decoded and scored, every speaker of every split gets an fMLLR
    transform, and tri3's alignments become the frame labels, frame-synchronous with the fbank features."""
    import shutil

    from asr_distill.experiment import Experiment
    from asr_distill.recipe.gmm_stage import GmmSystem, stage_gmm
    from asr_distill.utils import read_json
    from conftest import GMM_SETTINGS, pdf_alignments

    shutil.copytree(built.exp.dir, tmp_path / "exp")
    exp = Experiment(tmp_path / "exp")
    tri1_trained = (exp.gmm_system_dir("tri1") / "system.json").stat().st_mtime
    scored = {n: (exp.decode_dir(f"gmm-{n}") / "wer.json").stat().st_mtime for n in ("mono", "tri1")}
    rows = stage_gmm(exp, **{**GMM_SETTINGS, "systems": ("mono", "tri1", "tri2", "tri3")})
    assert (exp.gmm_system_dir("tri1") / "system.json").stat().st_mtime == tri1_trained  # reused
    # ... and not decoded again (same systems, same dev grid): their rows come back as the first run wrote them
    assert {n: (exp.decode_dir(f"gmm-{n}") / "wer.json").stat().st_mtime for n in ("mono", "tri1")} == scored
    assert rows[:2] == built.gmm_rows
    by_name = {r["name"]: r for r in rows}
    for name in ("gmm-tri2", "gmm-tri3"):
        # as loose as the monophone bound (test_align.GMM_TEST_WER_MAX): 4 minutes of audio, far from chance
        assert by_name[name]["wer"] < 55.0 and by_name[name]["num_pdfs"] > 0, by_name[name]
    tri2 = GmmSystem.load(exp.gmm_system_dir("tri2"))
    assert tri2.features.lda_mllt.shape == (40, 13 * 7) and tri2.gmm.means.shape[1] == 40
    tri3 = GmmSystem.load(exp.gmm_system_dir("tri3"))
    for split in ("train", "dev", "test"):
        assert set(tri3.features.fmllr[split]) == set(exp.speakers(split).values()), split
        for W in tri3.features.fmllr[split].values():
            assert W.shape == (40, 41) and np.isfinite(W).all()
    assert read_json(exp.gmm_dir / "targets.json")["system"] == "tri3"
    assert read_json(exp.inventory_dir / "inventory.json")["num_pdfs"] == tri3.inventory.num_pdfs
    for split in ("train", "dev", "test"):
        frames = {c.id: c.num_frames for c in exp.cuts(split, "fbank")}
        labels = pdf_alignments(exp, split)
        assert len(labels) >= len(frames) - 1
        for u, pdfs in labels.items():
            assert len(pdfs) == frames[u] and pdfs.max() < tri3.inventory.num_pdfs


def test_alignment_contexts_give_the_aligned_pdfs(exp):
    """The tree statistics' view of an alignment (phone instances and their neighbours, HMM states, read back
    from transition-ids) agrees with the graphs the aligner used: the tree maps every frame's context window and
    state to exactly the pdf of its transition-id."""
    from asr_distill.gmm import GmmSystem
    from asr_distill.gmm.tree_stats import phone_windows

    tri1 = GmmSystem.load(exp.gmm_system_dir("tri1"))
    inv = tri1.inventory
    checked = 0
    for utt, ali in list(tri1.train_alis.items())[:20]:
        phones, states, starts = inv.frame_phones(ali)
        assert (phones == [inv.transition_model.transition_id_to_phone(t) for t in ali]).all(), utt
        windows = phone_windows(phones, starts)
        pdfs = inv.tids_to_pdfs(ali)
        for t in range(len(ali)):
            ok, pdf = inv.tree.compute(windows[t].tolist(), int(states[t]))
            assert ok and pdf == pdfs[t], (utt, t)
        checked += len(ali)
    assert checked > 1000
