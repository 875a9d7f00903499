"""Hybrid decoding and scoring (asr_distill.decode) with the real HCLG of the session experiment."""
from __future__ import annotations


import kaldi_hmm_gmm as khg  # noqa: F401  (import before kaldifst, as the library does)
import kaldifst
import numpy as np
import pytest

from asr_distill.gmm import StateInventory
from asr_distill.decode import (DecodingConfig, add_word_penalty, compute_wer, decode_loglikes,
                                log_priors_from_alignments, pseudo_loglikes, tune_acoustic_scale, words_of)
from asr_distill.lang import Lang, Lexicon
from asr_distill.utils import read_json
from conftest import pdf_alignments, pron_strings


@pytest.fixture(scope="module")
def setup(exp):
    inv = StateInventory.load(exp.inventory_dir)
    lang = Lang.load(exp.lang_dir)
    train_pdfs = list(pdf_alignments(exp, "train").values())
    log_priors = log_priors_from_alignments(train_pdfs, inv.num_pdfs)
    return dict(inv=inv, lang=lang, id2word=lang.id2word(), log_priors=log_priors, train_pdfs=train_pdfs,
                hclg=exp.hclg_path)


def _oracle_loglikes(exp, split, inv, log_priors):
    """Posteriors 0.9 on the force-aligned pdf of each frame; the other 0.1 spread as the prior (a classifier that,
    when unsure, guesses from the class frequencies), turned into pseudo log-likelihoods."""
    out = {}
    prior = np.exp(log_priors.astype(np.float64))
    for u, pdfs in pdf_alignments(exp, split).items():
        if (pdfs < 0).any():  # an utterance the GMM could not align: no oracle for it
            continue
        post = np.tile(0.1 * prior, (len(pdfs), 1))
        post[np.arange(len(pdfs)), pdfs] += 0.9
        np.testing.assert_allclose(post.sum(1), 1.0, atol=1e-6)
        log_post = np.log(post).astype(np.float32)
        ll = pseudo_loglikes(log_post, log_priors)
        np.testing.assert_allclose(ll, log_post - log_priors[None, :], rtol=1e-6)
        # the aligned pdf is the best-scoring class on every frame
        assert (ll.argmax(1) == pdfs).all()
        out[u] = ll
    return out


def test_oracle_posteriors_decode_to_the_reference(exp, setup):
    """Frame posteriors that point at the forced alignment decode, through HCLG, to the reference words.

    Acoustic scale 1: the oracle's per-frame margin is small (log 0.9 against log 0.1 + prior terms), and at the
    usual 0.1 the bigram LM overrides it for some letter sequences.  With a monophone inventory two word sequences
    with the same phones (e.g. "A T" and "EIGHTY": EY T IY) give identical scores, so the LM may pick either: such
    a hypothesis must at least be homophonous with the reference."""
    ll = _oracle_loglikes(exp, "test", setup["inv"], setup["log_priors"])
    hyps = decode_loglikes(setup["hclg"], setup["inv"].tid2pdf, ll, DecodingConfig(acoustic_scale=1.0))
    refs = exp.texts("test")
    lexicon = Lexicon.read(exp / "lang" / "lexicon.txt")
    assert set(hyps) == set(ll)
    exact = 0
    for u, ids in hyps.items():
        hyp = words_of(ids, setup["id2word"])
        if hyp == refs[u].split():
            exact += 1
        else:
            assert pron_strings(hyp, lexicon) & pron_strings(refs[u].split(), lexicon), (u, refs[u], hyp)
    assert exact >= 0.9 * len(hyps), f"only {exact} of {len(hyps)} decoded exactly"


def test_one_utterance_decodes_exactly(exp, setup):
    """The brief's single-utterance form: one utterance, one matrix, the exact reference."""
    refs = exp.texts("test")
    ll = _oracle_loglikes(exp, "test", setup["inv"], setup["log_priors"])
    lexicon = Lexicon.read(exp / "lang" / "lexicon.txt")
    # an utterance whose words have no homophones in the lexicon
    prons = {}
    for w, p in lexicon.entries:
        prons.setdefault(tuple(p), set()).add(w)
    ambiguous = {w for ws in prons.values() if len(ws) > 1 for w in ws}
    u = next(u for u in sorted(ll) if not set(refs[u].split()) & ambiguous and len(refs[u].split()) >= 3)
    hyp = decode_loglikes(setup["hclg"], setup["inv"].tid2pdf, {u: ll[u]}, DecodingConfig(acoustic_scale=1.0))
    assert words_of(hyp[u], setup["id2word"]) == refs[u].split()


def test_gmm_decode_is_reproducible_and_parallel_safe(exp, setup):
    """Re-decoding the GMM's test likelihoods with the stage's (dev-tuned) setting reproduces its hyp.txt and
    wer.json, with 1 and with 2 decoding processes."""
    from asr_distill.recipe.gmm_stage import load_targets_system, system_features

    system = load_targets_system(exp)  # the triphone system, decoded with its graph (the experiment's)
    wer_json = read_json(exp.decode_dir(f"gmm-{system.name}") / "wer.json")
    cfg = DecodingConfig(acoustic_scale=wer_json["acoustic_scale"], word_penalty=wer_json["word_penalty"], beam=13.0)
    ll = {u: system.gmm.loglikes(f) for u, f in system_features(exp, system, "test").items()}
    assert len(ll) >= 8  # below 8 utterances decode_loglikes stays in-process
    h1 = decode_loglikes(setup["hclg"], setup["inv"].tid2pdf, ll, cfg, jobs=1)
    h2 = decode_loglikes(setup["hclg"], setup["inv"].tid2pdf, ll, cfg, jobs=2)
    assert h1 == h2
    words = {u: words_of(h, setup["id2word"]) for u, h in h1.items()}
    stored = {}
    for line in (exp.decode_dir(f"gmm-{system.name}") / "hyp_test.txt").read_text().splitlines():
        u, *ws = line.split()
        stored[u] = ws
    assert words == stored
    res = compute_wer({u: t.split() for u, t in exp.texts("test").items()}, words)
    for key in ("errors", "ref_words", "ins", "dels", "subs", "sentence_errors", "num_sentences"):
        assert getattr(res, key) == wer_json["test"][key], key
    assert res.wer == pytest.approx(wer_json["test"]["wer"], abs=1e-3)


def test_tune_acoustic_scale_picks_the_dev_minimum(exp, setup):
    ll = _oracle_loglikes(exp, "dev", setup["inv"], setup["log_priors"])
    refs = {u: t.split() for u, t in exp.texts("dev").items() if u in ll}
    best, wers = tune_acoustic_scale(setup["hclg"], setup["inv"].tid2pdf, ll, refs, setup["id2word"],
                                     scales=(0.02, 1.0), config=DecodingConfig(), penalties=(0.0, 1.0))
    assert set(wers) == {"0.02/0", "1/0", "0.02/1", "1/1"}
    key = f"{best.acoustic_scale:g}/{best.word_penalty:g}"
    assert wers[key] == min(wers.values())
    assert best.beam == DecodingConfig().beam  # the other settings are carried over


def test_compute_wer_counts_by_hand():
    refs = {"u1": "A B C D".split(), "u2": "E F".split(), "u3": "G H".split(), "u4": "I".split()}
    hyps = {"u1": "A X C D E".split(),  # B->X substitution, E inserted
            "u2": "F".split(),            # E deleted
            "u3": "G H".split()}          # correct; u4 has no hypothesis: 1 deletion
    r = compute_wer(refs, hyps, bootstrap_replications=500, seed=1)
    assert (r.subs, r.ins, r.dels) == (1, 1, 2)
    assert r.errors == 4 and r.ref_words == 9
    assert r.wer == pytest.approx(100 * 4 / 9)
    assert (r.sentence_errors, r.num_sentences) == (3, 4)
    assert 0.0 <= r.ci_low <= r.wer <= r.ci_high
    assert r.ci_high > r.ci_low  # the utterances differ, so the bootstrap spreads
    assert "WER 44.44%" in str(r)
    perfect = compute_wer(refs, {u: list(w) for u, w in refs.items()})
    assert (perfect.wer, perfect.errors, perfect.ci_low, perfect.ci_high) == (0.0, 0, 0.0, 0.0)
    assert compute_wer(refs, hyps, bootstrap_replications=0).ci_low == pytest.approx(r.wer)


def test_log_priors_sum_to_one(setup):
    lp = setup["log_priors"]
    assert lp.shape == (setup["inv"].num_pdfs,)
    assert np.exp(lp.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-5)
    counts = np.bincount(np.concatenate(setup["train_pdfs"]), minlength=len(lp))
    seen = counts > 0
    p_seen = np.exp(lp[seen].astype(np.float64))
    np.testing.assert_allclose(p_seen / p_seen.sum(), counts[seen] / counts.sum(), rtol=1e-4)
    # no pdf may look rarer than the rarest pdf seen: dividing by a tiny floor prior would boost an unseen pdf's
    # pseudo-likelihood on every frame (the bug that cost full-AN4 DNNs their deletions)
    assert lp.min() >= lp[seen].min() - 1e-6
    # hand-made: pdf 2 never seen gets the rarest seen pdf's count (1)
    toy = log_priors_from_alignments([np.array([0, 0, 1]), np.array([1, 3])], 4)
    np.testing.assert_allclose(np.exp(toy), np.array([2, 2, 1, 1]) / 6, rtol=1e-6)


def _arc_list(fst):
    out = []
    for s in range(fst.num_states):
        it = kaldifst.ArcIterator(fst, s)
        while not it.done:
            a = it.value
            out.append((s, a.ilabel, a.olabel, a.weight.value, a.nextstate))
            it.next()
    return out


def test_add_word_penalty_adds_exactly_the_penalty_on_word_arcs(setup):
    hclg = kaldifst.StdVectorFst.read(str(setup["hclg"]))
    pen = add_word_penalty(hclg, 2.5)
    before, after = _arc_list(hclg), _arc_list(pen)
    assert len(before) == len(after) and pen.num_states == hclg.num_states and pen.start == hclg.start
    n_words = 0
    for (s, i, o, w, n), (s2, i2, o2, w2, n2) in zip(before, after):
        assert (s, i, o, n) == (s2, i2, o2, n2)
        if o != 0:
            n_words += 1
            assert w2 == pytest.approx(w + 2.5, abs=1e-5)
        else:
            assert w2 == w
    assert n_words > 0
    for s in range(hclg.num_states):
        assert pen.final(s).value == hclg.final(s).value


def test_oov_rate_is_reported_with_every_wer(built):
    """The share of reference words the decoder cannot output (not in the LM), per split, in every scored row and
    in the printed table; counted here from the ARPA file's 1-grams by hand."""
    from asr_distill.decode.scorer import oov_rate
    from asr_distill.results import format_table, load_results

    assert oov_rate([["A", "B"], ["C", "A"]], {"A"}) == 50.0
    exp = built.exp
    arpa = (exp.lang_dir / "lm.arpa").read_text().split("\\1-grams:")[1].split("\\2-grams:")[0]
    vocab = {line.split()[1] for line in arpa.strip().splitlines() if len(line.split()) >= 2} - {"<s>", "</s>"}
    for split, key in (("test", "oov_rate"), ("dev", "dev_oov_rate")):
        words = [w for t in exp.texts(split).values() for w in t.split()]
        expected = 100.0 * sum(w not in vocab for w in words) / len(words)
        assert built.gmm_row[key] == pytest.approx(expected, abs=0.01)
    table = format_table(load_results(exp.dir))
    assert f"test {built.gmm_row['oov_rate']:.2f}%" in table.splitlines()[1]


def test_k2_decoder_without_k2_says_how_to_get_it(monkeypatch):
    """--decoder k2 where k2 does not import: an error that says how to get it, before any work."""
    import asr_distill.decode.k2_decoding as k2_decoding
    from asr_distill.decode.backend import BACKENDS, K2NotInstalled, get_backend

    monkeypatch.setattr(k2_decoding, "k2", None)
    monkeypatch.delitem(BACKENDS, "k2", raising=False)
    with pytest.raises(K2NotInstalled, match="build_k2.sh"):
        get_backend("k2")
    with pytest.raises(ValueError, match="unknown decoding backend"):
        get_backend("k3")


def test_scorer_reads_back_a_system_decoded_from_the_same_inputs(exp, setup, tmp_path):
    """A resumed stage does not decode a finished system again: the same log-likelihoods give the stored row
    without a decode; one changed frame, or another tuning grid, decodes afresh."""
    import shutil

    from asr_distill.decode.scorer import Scorer
    from asr_distill.experiment import Experiment

    work = Experiment(shutil.copytree(exp.dir, tmp_path / "exp"))
    loglikes = {}
    for split in ("dev", "test"):  # the oracle, and flat scores for an utterance the GMM could not align
        oracle = _oracle_loglikes(work, split, setup["inv"], setup["log_priors"])
        loglikes[split] = {u: oracle.get(u, np.zeros((len(p), setup["inv"].num_pdfs), np.float32))
                           for u, p in pdf_alignments(work, split).items()}
    scorer = Scorer(work, jobs=1, beam=8.0, scales=(0.5, 1.0), penalties=(0.0,))
    tuned = []
    tune = scorer.tune
    scorer.tune = lambda *a, **k: tuned.append(a) or tune(*a, **k)

    first = scorer.evaluate("oracle", "baseline", loglikes, params=7, extra={"seed": 1})
    again = scorer.evaluate("oracle", "baseline", loglikes, params=7, extra={"recipe": "same"})
    assert len(tuned) == 1  # the second call decoded nothing
    assert {k: v for k, v in again.items() if k != "recipe"} == {k: v for k, v in first.items() if k != "seed"}
    assert again["recipe"] == "same" and "seed" not in again  # the caller's fields are this call's
    stored = {r["name"]: r for r in read_json(work.results_path)["systems"]}["oracle"]
    assert stored["recipe"] == "same" and stored["wer"] == first["wer"]

    changed = {s: dict(v) for s, v in loglikes.items()}
    utt = sorted(changed["test"])[0]
    changed["test"][utt] = changed["test"][utt].copy()
    changed["test"][utt][0, 0] += 1.0
    scorer.evaluate("oracle", "baseline", changed, params=7)
    assert len(tuned) == 2
    scorer.evaluate("oracle", "baseline", changed, params=7, scales=(1.0,))
    assert len(tuned) == 3
    # an interrupted decode (wer.json written last, hyp_test.txt gone) is not taken for a finished one
    (work.decode_dir("oracle") / "hyp_test.txt").unlink()
    scorer.evaluate("oracle", "baseline", changed, params=7, scales=(1.0,))
    assert len(tuned) == 4
