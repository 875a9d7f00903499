"""GMM-HMM bootstrap (asr_distill.gmm) on the session experiment: alignments, stored labels, deltas, GMM
likelihoods against Kaldi, model / inventory round trips, and the GMM's WER."""
from __future__ import annotations

import re

import numpy as np
import pytest

from asr_distill.data import add_deltas
from asr_distill.gmm import GmmModel, StateInventory
from asr_distill.lang import SILENCE, Lang, Lexicon
from asr_distill.utils import read_json
from conftest import pdf_alignments, pron_strings

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def inventory(exp):
    return StateInventory.load(exp.inventory_dir)


@pytest.fixture(scope="module")
def targets(exp):
    """The GMM system whose alignments label the frames (the chain's last: triphones)."""
    from asr_distill.recipe.gmm_stage import load_targets_system

    return load_targets_system(exp)


@pytest.fixture(scope="module")
def alignments(exp, inventory, targets):
    """Transition-id alignments of the first 15 utterances of each split, made anew with the stored GMM."""
    from asr_distill.gmm import TrainingGraphs, align_utterances
    from asr_distill.recipe.gmm_stage import system_features

    lang = Lang.load(exp.lang_dir)
    am = targets.gmm.to_am()
    out = {}
    for s in SPLITS:
        texts = dict(list(exp.texts(s).items())[:15])
        feats = {u: f for u, f in system_features(exp, targets, s).items() if u in texts}
        out[s] = {u: np.asarray(a) for u, a in align_utterances(am, inventory, TrainingGraphs(lang, inventory, texts),
                                                                feats)[0].items()}
    return out


def test_alignments_cover_the_frames(exp, alignments, inventory):
    for s in SPLITS:
        fbank = {c.id: c.num_frames for c in exp.cuts(s, "fbank")}
        mfcc = {c.id: c.num_frames for c in exp.cuts(s, "mfcc")}
        stored = pdf_alignments(exp, s)
        failed = exp.align_failed_path(s).read_text().split()
        # nearly every utterance aligns (an odd hard one may fail at beam 10/40 and is listed: left out of training,
        # kept with -1 labels in dev and test, whose WERs count every utterance)
        assert len(failed) <= max(1, 0.05 * len(fbank)), f"{s}: {len(failed)} of {len(fbank)} failed"
        if s == "train":
            assert sorted(failed) == sorted(set(fbank) - set(stored))
        else:
            assert set(stored) == set(fbank) and all((stored[u] == -1).all() for u in failed)
            stored = {u: p for u, p in stored.items() if u not in failed}
        for u, pdfs in stored.items():
            assert len(pdfs) == fbank[u] == mfcc[u], u
            assert pdfs.min() >= 0 and pdfs.max() < inventory.num_pdfs
        for u, ali in alignments[s].items():
            assert ali.min() >= 1 and ali.max() <= inventory.num_transition_ids
            # Viterbi is deterministic: the stored labels are this alignment's pdfs
            np.testing.assert_array_equal(stored[u], inventory.tids_to_pdfs(ali))


def test_alignment_phones_spell_the_transcript(exp, alignments, inventory):
    """The phones an alignment passes through (silence removed) are a pronunciation of the transcript."""
    lang = Lang.load(exp / "lang")
    lexicon = Lexicon.read(exp / "lang" / "lexicon.txt")
    id2phone = {i: p for p, i in lang.phones.items()}
    tm = inventory.transition_model
    # HMM state of each transition-id: transition-id -> transition state -> (phone, hmm_state, ...) tuple
    tuples = [re.search(r"phone=(\d+),hmm_state=(\d+)", str(t)).groups() for t in tm.tuples]
    state_of = {tid: int(tuples[tm.id2state[tid] - 1][1]) for tid in range(1, inventory.num_transition_ids + 1)}
    for s in SPLITS:
        texts = exp.texts(s)
        for u, ali in list(alignments[s].items())[:15]:
            phones, prev = [], None
            for tid in map(int, ali):
                cur = (tm.transition_id_to_phone(tid), state_of[tid])
                # a new phone: another phone, or the same phone starting over (its HMM state goes back)
                if prev is None or cur[0] != prev[0] or cur[1] < prev[1]:
                    phones.append(id2phone[cur[0]])
                prev = cur
            spoken = tuple(p for p in phones if p != SILENCE)
            assert spoken in pron_strings(texts[u].split(), lexicon), (u, texts[u], spoken)


def test_attached_pdf_ids_are_readable(exp, inventory):
    from lhotse import CutSet

    counts = np.zeros(inventory.num_pdfs)
    for s in SPLITS:
        cuts = CutSet.from_file(exp.labelled_cuts_path(s))
        failed = set(exp.align_failed_path(s).read_text().split())
        if s == "train":  # what could not be aligned is left out of training
            assert {c.id for c in cuts} == {c.id for c in exp.cuts(s, "fbank")} - failed
        else:  # ... but dev and test keep every utterance for WER: the unaligned ones' frames are all -1
            assert {c.id for c in cuts} == {c.id for c in exp.cuts(s, "fbank")}
            assert {c.id for c in cuts if (c.load_custom("pdf_ids") == -1).all()} == failed
        for i, c in enumerate(cuts):
            assert c.has_custom("pdf_ids")
            pdf_ids = c.load_custom("pdf_ids")
            assert len(pdf_ids) == c.num_frames and pdf_ids.dtype == np.int32
            if s == "train":
                counts += np.bincount(pdf_ids, minlength=inventory.num_pdfs)
            if i == 0:
                assert c.load_features().shape[0] == len(pdf_ids)  # frame-synchronous with the fbank
                np.testing.assert_array_equal(c.load_pdf_ids(), pdf_ids)  # Lhotse's load_<name> form
    np.testing.assert_array_equal(np.load(exp.pdf_counts_path), counts)  # the priors' counts: train's labels


def _kaldi_deltas_by_hand(x, order=2, window=2):
    """Kaldi's DeltaFeatures written out: the order-i window is the i-fold convolution of the regression window
    [-N..N]/(2*sum n^2), applied to the input frames with clamped indices."""
    T, D = x.shape
    norm = 2 * sum(n * n for n in range(1, window + 1))
    scales = [[1.0]]
    for _ in range(order):
        prev = scales[-1]
        cur = [0.0] * (len(prev) + 2 * window)
        for j in range(-window, window + 1):
            for k in range(len(prev)):
                cur[j + window + k] += j * prev[k] / norm
        scales.append(cur)
    out = np.zeros((T, D * (order + 1)))
    for i, sc in enumerate(scales):
        m = (len(sc) - 1) // 2
        for t in range(T):
            for j in range(-m, m + 1):
                tt = min(max(t + j, 0), T - 1)
                for d in range(D):
                    out[t, i * D + d] += sc[j + m] * x[tt, d]
    return out


@pytest.mark.parametrize("T", [1, 3, 7, 12])
def test_add_deltas_matches_kaldi(T):
    x = np.random.RandomState(T).randn(T, 3).astype(np.float32)
    got = add_deltas(x)
    assert got.shape == (T, 9) and got.dtype == np.float32
    np.testing.assert_allclose(got, _kaldi_deltas_by_hand(x), atol=1e-5)
    np.testing.assert_array_equal(got[:, :3], x)
    # the worked example of Kaldi-style deltas (order 2, window 1) on x = [1, 2, 4]
    ex = add_deltas(np.array([[1.0], [2.0], [4.0]], np.float32), order=2, window=1)
    np.testing.assert_allclose(ex, [[1, 0.5, 0.75], [2, 1.5, 0.25], [4, 1.0, -0.75]], atol=1e-6)


def test_add_deltas_matches_kaldi_native_fbank():
    knf = pytest.importorskip("kaldi_native_fbank")
    x = np.random.RandomState(0).randn(40, 13).astype(np.float32)
    ref = np.asarray(knf.compute_deltas(knf.DeltaOptions(), x))
    np.testing.assert_allclose(add_deltas(x), ref, atol=1e-5)


def test_gmm_loglikes_match_kaldi(exp, inventory, targets):
    from asr_distill.recipe.gmm_stage import system_features

    gmm = targets.gmm
    assert gmm.num_pdfs == inventory.num_pdfs
    assert len(gmm.weights) > gmm.num_pdfs  # some pdfs are mixtures: the log-sum-exp path is exercised
    am = gmm.to_am()
    feats = next(iter(system_features(exp, targets, "dev").values()))
    ll = gmm.loglikes(feats)
    assert ll.shape == (len(feats), gmm.num_pdfs)
    mixtures = [j for j in range(gmm.num_pdfs) if (gmm.pdf_of_gauss == j).sum() > 1][:4]
    for t in (0, len(feats) // 2, len(feats) - 1):
        for j in [0, 1, gmm.num_pdfs - 1] + mixtures:
            ref = am.log_likelihood(j, np.ascontiguousarray(feats[t], dtype=np.float32))
            assert ll[t, j] == pytest.approx(ref, rel=1e-4, abs=1e-2), (t, j)


def test_gmm_save_load_round_trip(exp, targets, tmp_path):
    gmm = targets.gmm
    gmm.save(tmp_path / "g.npz")
    back = GmmModel.load(tmp_path / "g.npz")
    for name in ("pdf_of_gauss", "weights", "means", "variances"):
        np.testing.assert_array_equal(getattr(back, name), getattr(gmm, name))
    x = np.random.RandomState(0).randn(5, gmm.means.shape[1]).astype(np.float32)
    np.testing.assert_array_equal(back.loglikes(x), gmm.loglikes(x))
    # through Kaldi's AmDiagGmm and back
    again = GmmModel.from_am(gmm.to_am())
    np.testing.assert_array_equal(again.pdf_of_gauss, gmm.pdf_of_gauss)
    np.testing.assert_allclose(again.means, gmm.means, rtol=1e-6)
    np.testing.assert_allclose(again.variances, gmm.variances, rtol=1e-5)
    np.testing.assert_allclose(again.weights, gmm.weights, rtol=1e-6)


def test_state_inventory_round_trip(exp, inventory, tmp_path):
    assert inventory.transition_stats is not None  # trained transitions were saved
    inventory.save(tmp_path / "inv")
    back = StateInventory.load(tmp_path / "inv")
    np.testing.assert_array_equal(back.tid2pdf, inventory.tid2pdf)
    assert (back.num_pdfs, back.num_transition_ids) == (inventory.num_pdfs, inventory.num_transition_ids)
    np.testing.assert_array_equal(back.transition_stats, inventory.transition_stats)
    np.testing.assert_allclose(np.asarray(back.transition_model.log_probs),
                               np.asarray(inventory.transition_model.log_probs))
    assert inventory.kind == "triphone" and inventory.tree.context_width == 3
    # trained transition probabilities differ from the topology's initial ones
    fresh = StateInventory(Lang.load(exp / "lang").topo_text, None, inventory.tree)
    assert not np.allclose(np.asarray(fresh.transition_model.log_probs),
                           np.asarray(inventory.transition_model.log_probs))
    np.testing.assert_array_equal(fresh.tid2pdf, inventory.tid2pdf)
    # tid2pdf.txt (what a deployed decoder reads) agrees
    rows = [l.split() for l in (tmp_path / "inv" / "tid2pdf.txt").read_text().splitlines()]
    assert [int(t) for t, _ in rows] == list(range(1, inventory.num_transition_ids + 1))
    np.testing.assert_array_equal([int(p) for _, p in rows], inventory.tid2pdf[1:])
    assert read_json(tmp_path / "inv" / "inventory.json")["num_pdfs"] == inventory.num_pdfs


# Measured on the slice with the fixture's settings (20 iterations, <= 300 Gaussians; 98 training utterances,
# 4.1 minutes of audio): test WER 32.6 - 44.2 % over 8 builds when mix-up's perturbation was still unseeded (mean
# 37.3 %, sd ~4; 233 reference words; the acoustic scale / word penalty tuned on a 59-word dev set).  The build is
# now reproducible (gmm.train_mono.split_gaussians) and sits at one draw of that spread.  Bootstrap 95% CI upper ends
# reached 53 %.  No acoustic information (all-zero likelihoods) decodes to empty hypotheses: 100 %.  55 % is ~4.5 sd
# above the mean, ~11 points above the worst run, yet far below what a broken front end, graph or decoder gives.
GMM_TEST_WER_MAX = 55.0
GMM_DEV_WER_MAX = 50.0


def test_gmm_wer_is_reasonable(built, inventory):
    exp = built.exp
    wer_json = read_json(exp.decode_dir("gmm-mono") / "wer.json")
    wer = wer_json["test"]
    assert wer["ref_words"] == sum(len(t.split()) for t in exp.texts("test").values())
    assert wer["wer"] < GMM_TEST_WER_MAX, wer
    assert wer["ci_low"] <= wer["wer"] <= wer["ci_high"]
    assert wer_json["dev_wer"] < GMM_DEV_WER_MAX
    results = read_json(exp / "results.json")
    row = next(r for r in results["systems"] if r["name"] == "gmm-mono")
    assert row == built.gmm_row
    assert row["wer"] == pytest.approx(wer["wer"], abs=0.01)
    # the acoustic scale / penalty were chosen on DEV: the test decode used the dev-best setting
    assert wer_json["acoustic_scale"] == row["acoustic_scale"]
    dev_wers = wer_json["dev_wers"]
    assert min(dev_wers.values()) == pytest.approx(row["dev_wer"], abs=0.01)
    # frame accuracy of the GMM as a classifier (measured 51-55 %) is far above the majority-class rate (~15 %)
    labels = np.concatenate(list(pdf_alignments(exp, "test").values()))
    counts = np.bincount(labels[labels >= 0])  # -1: an utterance the GMM could not align
    chance = 100.0 * counts.max() / counts.sum()
    assert row["frame_acc"] > chance + 15.0, (row["frame_acc"], chance)
