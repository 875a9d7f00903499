"""The k2 decoding backend and sequence-level distillation (run where k2 imports: tools/build_k2.sh builds it)."""
from __future__ import annotations

import itertools
import math

import kaldi_hmm_gmm as khg  # noqa: F401  (import before kaldifst, as the library does)
import kaldifst
import numpy as np
import pytest
import torch

k2 = pytest.importorskip("k2", reason="k2 is not installed (tools/build_k2.sh builds it offline)")

from asr_distill.decode import DecodingConfig, compute_wer, decode_loglikes, words_of  # noqa: E402
from asr_distill.decode.k2_decoding import (K2Backend, best_path_words, grid_lattice_words,  # noqa: E402
                                            hclg_to_k2, load_k2_graph)
from asr_distill.distill.sequence import graph_log_partition, pdf_occupancies, sequence_kl  # noqa: E402
from asr_distill.lang import Lang  # noqa: E402
from asr_distill.utils import read_json  # noqa: E402

# transition-id -> pdf of the small graph: tids 1, 2 -> pdf 0; 3 -> pdf 1; 4, 5 -> pdf 2
TID2PDF = np.array([0, 0, 0, 1, 2, 2])


def _small_hclg():
    """An HCLG-like transducer: transition-id inputs, words on some arcs, input epsilons (one carrying a word, one
    chained after another), a self-loop and two final states, one with a final cost."""
    f = kaldifst.StdVectorFst()
    for _ in range(5):
        f.add_state()
    f.start = 0
    arcs = [(0, 1, 1, 7, 0.5), (1, 1, 2, 0, 0.25), (1, 2, 0, 8, 1.0), (2, 3, 0, 0, 0.125), (3, 4, 3, 9, 0.0),
            (0, 3, 4, 0, 2.0), (4, 4, 5, 0, 0.75), (3, 3, 5, 0, 1.5)]
    for s, d, i, o, w in arcs:
        f.add_arc(s, kaldifst.StdArc(i, o, w, d))
    f.set_final(4, 0.0)
    f.set_final(3, 0.5)
    return f


def _openfst_paths(f, max_len):
    """(pdf labels, words) -> lowest cost over the paths with at most ``max_len`` non-epsilon inputs."""
    best = {}

    def walk(s, labels, words, cost):
        fin = f.final(s).value
        if math.isfinite(fin):
            key = (tuple(labels), tuple(words))
            best[key] = min(best.get(key, math.inf), cost + fin)
        it = kaldifst.ArcIterator(f, s)
        arcs = []
        while not it.done:
            arcs.append(it.value)
            it.next()
        for a in arcs:
            if a.ilabel and len(labels) == max_len:
                continue
            walk(a.nextstate, labels + ([int(TID2PDF[a.ilabel]) + 1] if a.ilabel else []),
                 words + ([a.olabel] if a.olabel else []), cost + a.weight.value)

    walk(f.start, [], [], 0.0)
    return best


def _k2_paths(fsa, max_len):
    arcs = fsa.arcs.values()[:, :3].tolist()
    scores = fsa.scores.tolist()
    aux = fsa.aux_labels.tolist()
    out = {}
    by_src = {}
    for i, (s, d, lab) in enumerate(arcs):
        by_src.setdefault(s, []).append((d, lab, scores[i], [w for w in aux[i] if w > 0]))

    def walk(s, labels, words, cost):
        for d, lab, score, ws in by_src.get(s, []):
            if lab == -1:
                key = (tuple(labels), tuple(words))
                out[key] = min(out.get(key, math.inf), cost - score)
            elif len(labels) < max_len:
                walk(d, labels + [lab], words + ws, cost - score)

    walk(0, [], [], 0.0)
    return out


def test_converted_graph_has_the_openfst_paths():
    """Every (pdf sequence, words) of the OpenFst graph, with its best cost, is a path of the k2 graph with the
    same cost, and no other path is there; the k2 graph has no epsilon inputs left."""
    f = _small_hclg()
    g = hclg_to_k2(f, TID2PDF)
    assert int((g.labels == 0).sum()) == 0
    expected, got = _openfst_paths(f, 4), _k2_paths(g, 4)
    assert expected and set(got) == set(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-5), key


def test_cache_round_trip(tmp_path):
    f = _small_hclg()
    f.write(str(tmp_path / "HCLG.fst"))
    g1 = load_k2_graph(tmp_path / "HCLG.fst", TID2PDF)
    assert (tmp_path / "HCLG.k2.pt").is_file()
    g2 = load_k2_graph(tmp_path / "HCLG.fst", TID2PDF)  # from the cache
    assert torch.equal(g1.arcs.values(), g2.arcs.values())
    assert g1.aux_labels.tolist() == g2.aux_labels.tolist()


def test_best_path_words_of_a_linear_fsa():
    g = hclg_to_k2(_small_hclg(), TID2PDF)
    # pdf 0 (tid 1: word 7), pdf 0 (self-loop), pdf 1 (tid 3 after the two epsilons: words 8 then 9)
    scores = torch.full((1, 3, 4), -50.0)
    for t, pdf in enumerate((0, 0, 1)):
        scores[0, t, pdf + 1] = 0.0
    dense = k2.DenseFsaVec(scores, torch.tensor([[0, 0, 3]], dtype=torch.int32))
    lattice = k2.intersect_dense(g, dense, 10.0)
    assert best_path_words(k2.shortest_path(lattice, use_double_scores=True)) == [[7, 8, 9]]


@pytest.fixture(scope="module")
def gmm_test(exp):
    """The triphone GMM's test log-likelihoods and its dev-tuned decoding settings."""
    from asr_distill.recipe.gmm_stage import load_targets_system, system_features

    system = load_targets_system(exp)
    wer_json = read_json(exp.decode_dir(f"gmm-{system.name}") / "wer.json")
    ll = {u: system.gmm.loglikes(f) for u, f in system_features(exp, system, "test").items()}
    cfg = DecodingConfig(acoustic_scale=wer_json["acoustic_scale"], word_penalty=wer_json["word_penalty"])
    return ll, cfg


def test_both_backends_decode_the_slice_alike(exp, gmm_test):
    """kaldi-decoder and k2 at the same beam and settings: the same words on the slice's test set."""
    from asr_distill.fst import read_tid2pdf

    ll, cfg = gmm_test
    tid2pdf = read_tid2pdf(exp.tid2pdf_path)
    kaldi = decode_loglikes(exp.hclg_path, tid2pdf, ll, cfg)
    ours = decode_loglikes(exp.hclg_path, tid2pdf, ll, cfg.with_(backend="k2"))
    assert set(ours) == set(kaldi)
    id2word = Lang.load(exp.lang_dir).id2word()
    refs = {u: t.split() for u, t in exp.texts("test").items()}
    w_kaldi = compute_wer(refs, {u: words_of(h, id2word) for u, h in kaldi.items()}, bootstrap_replications=0)
    w_k2 = compute_wer(refs, {u: words_of(h, id2word) for u, h in ours.items()}, bootstrap_replications=0)
    same = sum(kaldi[u] == ours[u] for u in kaldi)
    assert same >= len(kaldi) - 1, [(u, kaldi[u], ours[u]) for u in kaldi if kaldi[u] != ours[u]]
    assert abs(w_kaldi.errors - w_k2.errors) <= 1


def test_word_penalty_reaches_the_k2_graph(exp, gmm_test):
    """A large word penalty shortens k2's hypotheses, as it does kaldi-decoder's."""
    from asr_distill.fst import read_tid2pdf

    ll, cfg = gmm_test
    tid2pdf = read_tid2pdf(exp.tid2pdf_path)
    plain = K2Backend(exp.hclg_path, tid2pdf, cfg.with_(backend="k2", word_penalty=0.0)).decode_many(ll)
    taxed = K2Backend(exp.hclg_path, tid2pdf, cfg.with_(backend="k2", word_penalty=20.0)).decode_many(ll)
    assert sum(map(len, taxed.values())) < sum(map(len, plain.values()))


def test_k2_lattice_grid_best_paths_are_the_decodes_they_stand_for(exp, gmm_test):
    """Rescoring k2's lattices: at the scale they were made with (penalty 0) the best path is the 1-best decode;
    with a penalty, it is close to a real decode with that penalty (the lattice was pruned without it)."""
    from asr_distill.fst import read_tid2pdf

    ll, cfg = gmm_test
    tid2pdf = read_tid2pdf(exp.tid2pdf_path)
    scale = cfg.acoustic_scale
    grid = [(scale, 0.0), (scale, 2.0), (scale / 2, 0.0)]
    at_grid = grid_lattice_words(exp.hclg_path, tid2pdf, ll, scale, grid, DecodingConfig())
    assert all(set(words) == set(ll) for words in at_grid)
    for g, (s, p) in enumerate(grid):
        real = K2Backend(exp.hclg_path, tid2pdf, DecodingConfig(acoustic_scale=s, word_penalty=p)).decode_many(ll)
        same = sum(at_grid[g][u] == real[u] for u in ll)
        # exact at the lattice's own point; elsewhere most utterances (the slice's GMM is weak, its lattices wide)
        assert same >= (len(ll) if g == 0 else 0.8 * len(ll)), (s, p, same, len(ll))
    # the grid points differ where they should: a penalty never adds words
    assert sum(map(len, at_grid[1].values())) <= sum(map(len, at_grid[0].values()))


# -- sequence-level distillation --------------------------------------------------------------------------------

def _graph_and_scores(seed=0, n=2, t=5):
    g = hclg_to_k2(_small_hclg(), TID2PDF)
    gen = torch.Generator().manual_seed(seed)
    return g, torch.randn(n, t, 3, generator=gen), [t, t - 1]


def test_occupancies_are_frame_posteriors():
    g, scores, lengths = _graph_and_scores()
    gamma, log_z = pdf_occupancies(g, scores, lengths)
    assert torch.isfinite(log_z).all()
    for i, n in enumerate(lengths):
        torch.testing.assert_close(gamma[i, :n].sum(-1), torch.ones(n), atol=1e-5, rtol=0)
        assert float(gamma[i, n:].abs().sum()) == 0.0


def test_log_partition_matches_brute_force():
    """log Z over all paths of the utterance's length, enumerated by hand."""
    g, scores, lengths = _graph_and_scores(n=1, t=3)
    log_z = graph_log_partition(g, scores, lengths[:1], search_beam=1e3, output_beam=1e3)
    paths = _k2_paths(g, 3)  # best cost per (labels, words); here each (labels, words) is one path
    terms = [-cost + sum(float(scores[0, t, lab - 1]) for t, lab in enumerate(labels))
             for (labels, _), cost in paths.items() if len(labels) == 3]
    assert float(log_z[0]) == pytest.approx(float(torch.logsumexp(torch.tensor(terms), 0)), abs=1e-4)


def test_sequence_kl_gradient_is_the_occupancy_difference():
    """d/da of the sequence KL = k * (gamma_student - gamma_teacher); zero when the student is the teacher."""
    g, student, lengths = _graph_and_scores(seed=1)
    _, teacher, _ = _graph_and_scores(seed=2)
    k = 0.5
    gamma_t, _ = pdf_occupancies(g, teacher * k, lengths)
    gamma_s, _ = pdf_occupancies(g, student * k, lengths)
    a = student.clone().requires_grad_(True)
    loss, used = sequence_kl(g, a, gamma_t, lengths, k)
    loss.backward()
    assert used == 2
    torch.testing.assert_close(a.grad, k * (gamma_s - gamma_t), atol=1e-5, rtol=1e-4)
    b = teacher.clone().requires_grad_(True)
    sequence_kl(g, b, gamma_t, lengths, k)[0].backward()
    assert float(b.grad.abs().max()) < 1e-5


def test_sequence_kl_is_the_kl_up_to_the_teacher_entropy():
    """For two models, loss(student) - loss(teacher) = KL(teacher paths || student paths) >= 0."""
    g, student, lengths = _graph_and_scores(seed=3, n=1, t=3)
    _, teacher, _ = _graph_and_scores(seed=4, n=1, t=3)
    lengths = lengths[:1]
    gamma_t, _ = pdf_occupancies(g, teacher, lengths, search_beam=1e3, output_beam=1e3)
    ls = float(sequence_kl(g, student, gamma_t, lengths, 1.0, search_beam=1e3, output_beam=1e3)[0])
    lt = float(sequence_kl(g, teacher, gamma_t, lengths, 1.0, search_beam=1e3, output_beam=1e3)[0])
    paths = [(labels, -cost) for (labels, _), cost in _k2_paths(g, 3).items() if len(labels) == 3]

    def log_p(scores):
        s = torch.tensor([gs + sum(float(scores[0, t, lab - 1]) for t, lab in enumerate(labels))
                          for labels, gs in paths])
        return s - torch.logsumexp(s, 0)

    pt, ps = log_p(teacher), log_p(student)
    kl = float((pt.exp() * (pt - ps)).sum())
    assert ls - lt == pytest.approx(kl, abs=1e-4)
    assert kl > 0


def test_missing_words_never_crash_the_batch(exp, gmm_test):
    """An empty utterance (no frames) gets no words; the others of its batch decode as usual."""
    from asr_distill.fst import read_tid2pdf

    ll, cfg = gmm_test
    u = sorted(ll)[0]
    batch = {u: ll[u], "empty": ll[u][:0]}
    out = K2Backend(exp.hclg_path, read_tid2pdf(exp.tid2pdf_path), cfg.with_(backend="k2")).decode_many(batch)
    assert out["empty"] == [] and set(out) == {u, "empty"}


def test_utterance_order_does_not_matter(exp, gmm_test):
    from asr_distill.fst import read_tid2pdf

    ll, cfg = gmm_test
    backend = K2Backend(exp.hclg_path, read_tid2pdf(exp.tid2pdf_path), cfg.with_(backend="k2"))
    whole = backend.decode_many(ll)
    singles = {u: backend.decode(x) for u, x in itertools.islice(ll.items(), 5)}
    assert all(whole[u] == singles[u] for u in singles)


def test_sequence_distiller_trains_checkpoints_and_resumes(exp, tmp_path):
    """On the slice's real graph and frames (an eighth of its training utterances): an epoch of sequence-level
    distillation from a small student toward two small teachers changes the student, writes best.pt (loadable), a
    per-epoch checkpoint and the history, and a second call resumes from the checkpoint instead of training again.
    (Whether the loss falls is the mathematical tests' business above: with untrained models it may not in one
    short epoch.)"""
    from asr_distill.distill.sequence import SequenceConfig, SequenceDistiller
    from asr_distill.fst import read_tid2pdf
    from asr_distill.nnet.checkpoint import load_model
    from asr_distill.nnet.models import build_model
    from conftest import load_frames

    frames = {"train": load_frames(exp, "train", 2, 2, shard=(0, 8)),
              "dev": load_frames(exp, "dev", 2, 2, shard=(0, 4))}
    tid2pdf = read_tid2pdf(exp.tid2pdf_path)
    num_pdfs = int(tid2pdf.max()) + 1
    dim = int(frames["train"].windows(torch.arange(1)).shape[-1])
    torch.manual_seed(0)
    cfg = {"arch": "mlp", "input_dim": dim, "context": 5, "num_pdfs": num_pdfs, "hidden_dim": 32, "num_layers": 1}
    teachers = [build_model(cfg).eval() for _ in range(2)]
    student = build_model(cfg)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    distiller = SequenceDistiller(exp.hclg_path, tid2pdf, teachers, exp.log_priors(),
                                  SequenceConfig(epochs=1, lr=1e-3, utterances_per_batch=4))
    summary = distiller.fit(student, frames["train"], frames["dev"], tmp_path / "seq")
    assert [h["epoch"] for h in summary["history"]] == [1]
    assert math.isfinite(summary["history"][0]["train_loss"]) and math.isfinite(summary["history"][0]["dev_loss"])
    assert summary["history"][0]["skipped_utterances"] == 0
    assert any(not torch.equal(start[k], v) for k, v in student.state_dict().items())
    assert (tmp_path / "seq" / "checkpoint.pt").is_file() and (tmp_path / "seq" / "history.csv").is_file()
    best = load_model(tmp_path / "seq" / "best.pt")
    assert best.config == student.config
    again = distiller.fit(build_model(cfg), frames["train"], frames["dev"], tmp_path / "seq")
    assert again["history"] == summary["history"]
