"""Lexicon, symbol tables, topology, bigram LM and the L / G / HCLG graphs (asr_distill.lang)."""
from __future__ import annotations

import math
import re

import kaldi_hmm_gmm as khg  # noqa: F401  (import before kaldifst, as the library does)
import kaldifst
import pytest

from asr_distill.lang import (SILENCE, Lang, Lexicon, LexiconError, estimate_bigram_arpa, make_topology,
                              prepare_lang, read_cmu_dict, read_symbols, write_symbols)
from conftest import SLICE


def _arcs(fst):
    for s in range(fst.num_states):
        it = kaldifst.ArcIterator(fst, s)
        while not it.done:
            yield s, it.value
            it.next()


# ----------------------------------------------------------------------------------------------------------------
# Lexicon

def test_read_cmu_dict_alternates_and_stress(tmp_path):
    dic = tmp_path / "toy.dic"
    dic.write_text(";;; a comment\nA  AH\nA(2)  EY\nONE  W AH1 N\n\nREAD  R IY D\nREAD(2) R EH D\n")
    lex = read_cmu_dict(dic)
    assert lex.entries == [("A", ["AH"]), ("A", ["EY"]), ("ONE", ["W", "AH", "N"]), ("READ", ["R", "IY", "D"]),
                           ("READ", ["R", "EH", "D"])]
    assert lex.pronunciations("A")[1] == ["EY"]  # A(2) is A's second entry
    assert lex.words == ["A", "ONE", "READ"]
    assert lex.phones == ["AH", "D", "EH", "EY", "IY", "N", "R", "W"]
    # the phone set check and the empty pronunciation name the word
    with pytest.raises(LexiconError, match="ONE"):
        read_cmu_dict(dic, phone_set=["AH", "EY", "R", "IY", "D", "EH"])
    (tmp_path / "bad.dic").write_text("A AH\nEMPTY\n")
    with pytest.raises(LexiconError, match="EMPTY"):
        read_cmu_dict(tmp_path / "bad.dic")


def test_slice_dictionary_alternates():
    lex = read_cmu_dict(SLICE / "etc" / "an4.dic")
    raw = (SLICE / "etc" / "an4.dic").read_text().split("\n")
    assert "(2)" not in " ".join(lex.words)
    # every WORD(k) line became the k-th pronunciation of WORD, in file order
    for line in raw:
        m = re.match(r"^(\S+)\((\d+)\)\s+(.*)$", line.strip())
        if m:
            word, k, phones = m.group(1), int(m.group(2)), m.group(3).split()
            assert lex.pronunciations(word)[k - 1] == phones
    counts = {}
    for line in raw:
        if line.strip():
            w = re.sub(r"\(\d+\)$", "", line.split()[0])
            counts[w] = counts.get(w, 0) + 1
    assert {w: len(lex.pronunciations(w)) for w in lex.words} == counts
    assert max(counts.values()) > 1


def test_add_disambig_homophones_and_prefixes():
    lex = Lexicon([("A", ["EY"]), ("EIGHT", ["EY", "T"]), ("AY", ["EY"]), ("TO", ["T", "UW"]),
                   ("TWO", ["T", "UW"]), ("TOO", ["T", "UW"]), ("OH", ["OW"]), ("OK", ["OW", "K", "EY"]),
                   ("YES", ["Y", "EH", "S"])])
    entries, max_k = lex.add_disambig()
    assert entries == [
        ("A", ["EY", "#1"]),         # homophone of AY and prefix of EIGHT
        ("EIGHT", ["EY", "T"]),      # unique, not a prefix: untouched
        ("AY", ["EY", "#2"]),
        ("TO", ["T", "UW", "#1"]),   # three homophones: #1 #2 #3
        ("TWO", ["T", "UW", "#2"]),
        ("TOO", ["T", "UW", "#3"]),
        ("OH", ["OW", "#1"]),        # proper prefix of OK
        ("OK", ["OW", "K", "EY"]),
        ("YES", ["Y", "EH", "S"]),
    ]
    assert max_k == 3
    # after disambiguation no pronunciation is a prefix of, or equal to, another one
    prons = [tuple(p) for _, p in entries]
    assert len(set(prons)) == len(prons)
    for p in prons:
        for q in prons:
            assert p == q or q[:len(p)] != p
    assert Lexicon([("YES", ["Y", "EH", "S"])]).add_disambig() == ([("YES", ["Y", "EH", "S"])], 0)


def test_unknown_word_raises_lexicon_error(tmp_path):
    lex = read_cmu_dict(SLICE / "etc" / "an4.dic")
    with pytest.raises(LexiconError, match="FOOBARBAZ"):
        prepare_lang(lex, ["YES", "NO FOOBARBAZ"], tmp_path / "lang")
    assert not (tmp_path / "lang" / "L.fst").exists()
    with pytest.raises(LexiconError, match="FOOBARBAZ"):
        estimate_bigram_arpa([["YES", "FOOBARBAZ"]], ["YES", "NO"])


def test_word_ids_name_the_utterance_and_word(exp):
    lang = Lang.load(exp / "lang")
    assert lang.word_ids("YES NO") == [lang.words["YES"], lang.words["NO"]]
    with pytest.raises(LexiconError, match=r"utt-7.*'QWERTY'"):
        lang.word_ids("YES QWERTY", "utt-7")


# ----------------------------------------------------------------------------------------------------------------
# Bigram LM

def _parse_arpa(text):
    uni, bo, bi = {}, {}, {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("\\"):
            section = line
            continue
        if section == "\\data\\":
            continue
        parts = line.split()
        if section == "\\1-grams:":
            uni[parts[1]] = float(parts[0])
            if len(parts) == 3:
                bo[parts[1]] = float(parts[2])
        elif section == "\\2-grams:":
            bi[(parts[1], parts[2])] = float(parts[0])
    return uni, bo, bi


def _check_normalised(arpa_text, vocab):
    uni, bo, bi = _parse_arpa(arpa_text)
    m = re.search(r"ngram 1=(\d+)\s+ngram 2=(\d+)", arpa_text)
    assert (int(m.group(1)), int(m.group(2))) == (len(uni), len(bi))
    targets = sorted(set(vocab)) + ["</s>"]  # what can follow a history (<s> cannot)
    assert set(uni) == set(targets) | {"<s>"}
    assert sum(10 ** uni[w] for w in targets) == pytest.approx(1.0, abs=1e-3)
    for h in ["<s>"] + sorted(set(vocab)):
        total = sum(10 ** bi[(h, w)] if (h, w) in bi else 10 ** (bo.get(h, 0.0) + uni[w]) for w in targets)
        assert total == pytest.approx(1.0, abs=1e-3), f"history {h}: probabilities sum to {total}"
    return uni, bo, bi


def test_bigram_arpa_is_normalised_toy():
    sents = [["A", "B"], ["A", "B", "B"], ["C"], ["A"]]
    vocab = ["A", "B", "C", "D"]  # D never seen: only the unigram floor
    uni, bo, bi = _check_normalised(estimate_bigram_arpa(sents, vocab), vocab)
    assert uni["<s>"] == -99
    assert 10 ** uni["D"] > 0
    # seen bigrams are more likely than the back-off estimate of an unseen continuation
    assert bi[("<s>", "A")] > bo["<s>"] + uni["B"]
    assert ("A", "C") not in bi and ("<s>", "A") in bi


def test_bigram_arpa_of_the_experiment_is_normalised(exp):
    lang = Lang.load(exp / "lang")
    vocab = [w for w in lang.words if w not in ("<eps>", "#0", "<s>", "</s>")]
    text = (exp / "lang" / "lm.arpa").read_text()
    _, _, bi = _check_normalised(text, vocab)
    # exactly the bigrams of the training transcripts (with <s>, </s>) are listed
    seen = set()
    for t in exp.texts("train").values():
        seq = ["<s>", *t.split(), "</s>"]
        seen |= set(zip(seq[:-1], seq[1:]))
    assert set(bi) == seen


# ----------------------------------------------------------------------------------------------------------------
# Symbol tables and topology

def test_symbol_tables_kaldi_format(exp, tmp_path):
    lang_dir = exp / "lang"
    lex = Lexicon.read(lang_dir / "lexicon.txt")
    meta_disambig = Lang.load(lang_dir).disambig_phones
    for name in ("words.txt", "phones.txt"):
        lines = (lang_dir / name).read_text().splitlines()
        syms = [l.split() for l in lines]
        assert all(len(s) == 2 for s in syms), f"{name}: every line is '<symbol> <integer id>'"
        assert [int(i) for _, i in syms] == list(range(len(syms))), f"{name}: ids 0..N-1 in order"
        assert syms[0][0] == "<eps>"
        assert len({s for s, _ in syms}) == len(syms)
    words = read_symbols(lang_dir / "words.txt")
    phones = read_symbols(lang_dir / "phones.txt")
    assert set(lex.words) | {"#0", "<s>", "</s>"} <= set(words)
    assert set(lex.phones) | {SILENCE} <= set(phones)
    disambig = sorted(p for p in phones if p.startswith("#"))
    assert disambig == [f"#{k}" for k in range(len(disambig))] and len(disambig) >= 1
    assert sorted(phones[d] for d in disambig) == sorted(meta_disambig)
    # round trip of the writer
    write_symbols(["<eps>", "X", "Y"], tmp_path / "syms.txt")
    assert (tmp_path / "syms.txt").read_text() == "<eps> 0\nX 1\nY 2\n"
    assert read_symbols(tmp_path / "syms.txt") == {"<eps>": 0, "X": 1, "Y": 2}


def _check_topology_text(text):
    for line in text.splitlines():
        if line.startswith("<State>") and "<Transition>" in line:
            probs = [float(p) for p in re.findall(r"<Transition> \d+ ([0-9.eE+-]+)", line)]
            assert sum(probs) == pytest.approx(1.0, abs=1e-6), line


@pytest.mark.parametrize("num_states,num_sil_states", [(3, 5), (1, 3), (5, 5)])
def test_topology_parses_with_kaldi(num_states, num_sil_states):
    text = make_topology([1], [2, 3, 4], num_states=num_states, num_sil_states=num_sil_states)
    _check_topology_text(text)
    topo = khg.HmmTopology()
    topo.read(text)
    assert list(topo.phones) == [1, 2, 3, 4]
    classes = list(topo.get_phone_to_num_pdf_classes())
    assert classes[1] == num_sil_states and classes[2:5] == [num_states] * 3


def test_experiment_topology_and_pdf_count(exp):
    lang = Lang.load(exp / "lang")
    _check_topology_text(lang.topo_text)
    topo = khg.HmmTopology()
    topo.read(lang.topo_text)
    assert sorted(topo.phones) == sorted(lang.silence_phones + lang.nonsilence_phones)
    from asr_distill.gmm import StateInventory

    inv = StateInventory.monophone(lang)
    assert inv.num_pdfs == 3 * len(lang.nonsilence_phones) + 5 * len(lang.silence_phones)


# ----------------------------------------------------------------------------------------------------------------
# L, G, HCLG

def test_lexicon_fst(exp):
    lang = Lang.load(exp / "lang")
    lex = Lexicon.read(exp / "lang" / "lexicon.txt")
    L = lang.lexicon_fst(disambig=False)
    L_dis = lang.lexicon_fst(disambig=True)
    real_phones = set(lang.silence_phones) | set(lang.nonsilence_phones)
    outs = {a.olabel for _, a in _arcs(L)} - {0}
    assert outs == {lang.words[w] for w in lex.words}
    assert {a.ilabel for _, a in _arcs(L)} - {0} <= real_phones
    # L_disambig: #0:#0 self-loop for G's back-off arcs, and #k on homophones / prefixes
    loops = [(s, a) for s, a in _arcs(L_dis) if a.ilabel == lang.phones["#0"]]
    assert loops and all(a.olabel == lang.words["#0"] and a.nextstate == s for s, a in loops)
    assert {a.ilabel for _, a in _arcs(L_dis)} & set(lang.disambig_phones[1:])
    # the pronunciation of a word is a path of L: compose with the word, read the phones back
    Ls = L.copy()
    kaldifst.arcsort(Ls, sort_type="olabel")
    id2phone = {i: p for p, i in lang.phones.items()}
    for word in ("YES", "SEVEN", "RUBOUT"):
        path = kaldifst.compose(Ls, kaldifst.make_linear_acceptor([lang.words[word]]))
        best = kaldifst.shortest_path(path)
        ok, ilabels, olabels, _ = kaldifst.get_linear_symbol_sequence(best)
        assert ok and olabels == [lang.words[word]]
        got = [id2phone[i] for i in ilabels if id2phone[i] != SILENCE]
        assert got in lex.pronunciations(word)


def test_grammar_fst(exp):
    lang = Lang.load(exp / "lang")
    G = kaldifst.StdVectorFst.read(str(exp / "lang" / "G.fst"))
    assert G.is_ilabel_sorted
    n_backoff = 0
    for _, a in _arcs(G):
        if a.ilabel == lang.words["#0"]:
            assert a.olabel == 0  # back-off arcs: #0 in, epsilon out
            n_backoff += 1
        else:
            assert a.ilabel == a.olabel  # otherwise an acceptor over words
        assert a.ilabel not in (lang.words["<s>"], lang.words["</s>"])  # sentence marks are implicit
    assert n_backoff > 0
    # a training sentence's cost in G is its LM log-probability (natural log) from the ARPA file
    uni, bo, bi = _parse_arpa((exp / "lang" / "lm.arpa").read_text())
    sent = max(set(exp.texts("train").values()), key=list(exp.texts("train").values()).count).split()
    seq = ["<s>", *sent, "</s>"]
    log10p = sum(bi[(h, w)] if (h, w) in bi else bo.get(h, 0.0) + uni[w] for h, w in zip(seq[:-1], seq[1:]))
    Gs = G.copy()
    kaldifst.arcsort(Gs, sort_type="olabel")
    best = kaldifst.shortest_path(kaldifst.compose(Gs, kaldifst.make_linear_acceptor(lang.word_ids(" ".join(sent)))))
    ok, _, olabels, weight = kaldifst.get_linear_symbol_sequence(best)
    assert ok and olabels == lang.word_ids(" ".join(sent))
    assert weight.value == pytest.approx(-log10p * math.log(10), abs=1e-3)


def _hclg_path_for(hclg_olabel_sorted, word_ids):
    acceptor = kaldifst.make_linear_acceptor(word_ids)
    composed = kaldifst.compose(hclg_olabel_sorted, acceptor)
    kaldifst.connect(composed)
    return composed


@pytest.mark.parametrize("graph", ["lang/graph/HCLG.fst", "gmm/graph/HCLG.fst"])
def test_hclg_reads_back_sorted_and_accepts_training_sentences(exp, graph):
    from asr_distill.gmm import StateInventory

    lang = Lang.load(exp / "lang")
    hclg = kaldifst.StdVectorFst.read(str(exp / graph))
    assert hclg.num_states > 0 and hclg.start >= 0
    assert hclg.is_ilabel_sorted
    for s in range(hclg.num_states):  # checked by hand too, not only the stored property bit
        labels = [a.ilabel for _, a in _arcs_of_state(hclg, s)]
        assert labels == sorted(labels)
    inv = StateInventory.load(exp / "gmm" / "inventory")
    assert {a.ilabel for _, a in _arcs(hclg)} - {0} <= set(range(1, inv.num_transition_ids + 1))
    assert {a.olabel for _, a in _arcs(hclg)} - {0} <= {lang.words[w] for w in lang.words
                                                         if w not in ("<eps>", "#0", "<s>", "</s>")}
    # every distinct training sentence has a path (the composition is not empty) whose output is that sentence
    sorted_hclg = hclg.copy()
    kaldifst.arcsort(sorted_hclg, sort_type="olabel")
    sentences = sorted(set(exp.texts("train").values()))
    for sent in sentences:
        ids = lang.word_ids(sent)
        c = _hclg_path_for(sorted_hclg, ids)
        assert c.num_states > 0, sent
        ok, tids, olabels, _ = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(c))
        assert ok and olabels == ids and len(tids) >= 3 * len(ids)
    # and symbols that G never emits have none
    for bad in (["#0"], ["<s>"], ["</s>"]):
        assert _hclg_path_for(sorted_hclg, [lang.words[w] for w in bad]).num_states == 0


def _arcs_of_state(fst, s):
    it = kaldifst.ArcIterator(fst, s)
    while not it.done:
        yield s, it.value
        it.next()


# ----------------------------------------------------------------------------------------------------------------
# n-gram LMs of any order, ARPA files from outside, lexicons in the common formats

def _max_normalisation_error(lm, vocab, order):
    import itertools
    targets = sorted(vocab) + ["</s>"]
    worst = 0.0
    for n in range(order):
        for hist in itertools.product(["<s>"] + sorted(vocab), repeat=n):
            if "<s>" in hist[1:]:
                continue
            worst = max(worst, abs(sum(math.exp(lm.logprob(w, hist)) for w in targets) - 1.0))
    return worst


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_witten_bell_ngram_of_any_order_is_normalised(order):
    from asr_distill.lang import ArpaLm, estimate_arpa
    sents = [["A", "B"], ["A", "B", "B"], ["C"], ["A"], ["A", "B", "C", "A"]]
    vocab = ["A", "B", "C", "D"]
    text = estimate_arpa(sents, vocab, order=order, extra_sentences=[["A", "XYZ", "B", "C"]])
    lm = ArpaLm.from_text(text)
    assert lm.order == order
    assert _max_normalisation_error(lm, vocab, order) < 1e-5
    assert "XYZ" not in text  # n-grams of words outside the vocabulary are skipped, not added
    if order >= 3:
        # a seen trigram is listed, and is more likely than backing off from its history
        assert ("<s>", "A", "B") in lm.prob
        assert lm.logprob("B", ["<s>", "A"]) > lm.logprob("C", ["<s>", "A"])
    # order 2 without extra text is the recipes' bigram
    if order == 2:
        assert estimate_arpa(sents, vocab, order=2) == estimate_bigram_arpa(sents, vocab)


def test_min_count_prunes_higher_orders_only():
    from asr_distill.lang import ArpaLm, estimate_arpa
    sents = [["A", "B", "C"]] * 3 + [["A", "C", "B"]]
    full = ArpaLm.from_text(estimate_arpa(sents, ["A", "B", "C"], order=3))
    pruned = ArpaLm.from_text(estimate_arpa(sents, ["A", "B", "C"], order=3, min_count=2))
    assert ("A", "C") in full.prob and ("A", "C") not in pruned.prob
    assert ("<s>", "A", "B") in pruned.prob and ("A", "C", "B") not in pruned.prob
    assert {g for g in pruned.prob if len(g) == 1} == {g for g in full.prob if len(g) == 1}
    assert _max_normalisation_error(pruned, ["A", "B", "C"], 3) < 1e-5


def test_perplexity_counts_oovs_as_srilm_does():
    from asr_distill.lang import ArpaLm, estimate_arpa
    lm = ArpaLm.from_text(estimate_arpa([["A", "B"]], ["A", "B"], order=2))
    ppl, scored, oov = lm.perplexity([["A", "QQ", "B"]])
    assert (scored, oov) == (3, 1)  # A, B and </s> scored; QQ skipped
    expected = math.exp(-(lm.logprob("A", ["<s>"]) + lm.logprob("B", []) + lm.logprob("</s>", ["B"])) / 3)
    assert ppl == pytest.approx(expected)


def test_read_lexicon_formats(tmp_path):
    from asr_distill.lang import read_lexicon
    # CMUdict style: stress markers, alternates, comments; variants that differ only in stress become one
    (tmp_path / "cmu.dic").write_text(";;; CMUdict\nPROJECT  P R AA1 JH EH0 K T\nPROJECT(2)  P R AA0 JH EH1 K T\n"
                                      "PROJECT(3)  P R AH0 JH EH1 K T\nA  AH0\n")
    lex = read_lexicon(tmp_path / "cmu.dic")
    assert lex.pronunciations("PROJECT") == [["P", "R", "AA", "JH", "EH", "K", "T"],
                                              ["P", "R", "AH", "JH", "EH", "K", "T"]]
    assert lex.probs is None
    # Kaldi lexicon.txt with TABs, and its silence / noise entries
    (tmp_path / "lexicon.txt").write_text("!SIL\tSIL\n<UNK>\tSPN\nHELLO\tHH AH0 L OW1\nHELLO\tHH EH0 L OW1\n")
    lex = read_lexicon(tmp_path / "lexicon.txt")
    assert lex.entries == [("<UNK>", ["SPN"]), ("HELLO", ["HH", "AH", "L", "OW"]), ("HELLO", ["HH", "EH", "L", "OW"])]
    # lexiconp.txt and lexiconp_silprob.txt: the pronunciation probability is kept
    (tmp_path / "lexiconp.txt").write_text("HELLO 1.0 HH AH0 L OW1\nHELLO 0.25 HH EH0 L OW1\n")
    lex = read_lexicon(tmp_path / "lexiconp.txt")
    assert lex.probs == [1.0, 0.25]
    (tmp_path / "lexiconp_silprob.txt").write_text("HELLO\t1.0\t0.2\t1.1\t0.9\tHH AH0 L OW1\n")
    lex = read_lexicon(tmp_path / "lexiconp_silprob.txt")
    assert lex.entries == [("HELLO", ["HH", "AH", "L", "OW"])] and lex.probs == [1.0]
    # mixed formats and impossible probabilities name the line
    (tmp_path / "mixed.txt").write_text("HELLO 1.0 HH AH L OW\nWORLD W ER L D\n")
    with pytest.raises(LexiconError, match=r"mixed.txt:2: word 'WORLD'.*mixed"):
        read_lexicon(tmp_path / "mixed.txt")
    (tmp_path / "badp.txt").write_text("HELLO 1.5 HH AH L OW\n")
    with pytest.raises(LexiconError, match=r"badp.txt:1: .*1.5"):
        read_lexicon(tmp_path / "badp.txt")


def test_pronunciation_probabilities_weigh_l(tmp_path):
    from asr_distill.lang import read_lexicon
    (tmp_path / "lexiconp.txt").write_text("HELLO 1.0 HH AH L OW\nHELLO 0.25 HH EH L OW\nWORLD 1.0 W ER L D\n")
    lex = read_lexicon(tmp_path / "lexiconp.txt")
    lang = prepare_lang(lex, ["HELLO WORLD"], tmp_path / "lang")
    assert (tmp_path / "lang" / "lexiconp.txt").read_text().splitlines()[1] == "HELLO 0.25 HH EH L OW"
    L = lang.lexicon_fst(disambig=False)
    hello = lang.words["HELLO"]
    # each pronunciation's first arc (the one with the word on it) carries -log(prob)
    costs = sorted(float(a.weight.value) for _, a in _arcs(L) if a.olabel == hello)
    assert costs == pytest.approx([0.0, -math.log(0.25)])


def test_prepare_lang_with_a_gzipped_trigram_from_outside(tmp_path):
    import gzip

    from asr_distill.lang import ArpaLm, estimate_arpa
    lex = read_cmu_dict(SLICE / "etc" / "an4.dic")
    texts = ["YES NO", "NO YES NO", "ENTER ONE TWO THREE", "ONE TWO"]
    arpa = estimate_arpa([t.split() for t in texts], lex.words + ["NOTINLEXICON"], order=3,
                         extra_sentences=[["NOTINLEXICON", "YES"]])
    with gzip.open(tmp_path / "lm.arpa.gz", "wt") as f:
        f.write(arpa)
    lang = prepare_lang(lex, texts, tmp_path / "lang", lm_arpa=tmp_path / "lm.arpa.gz")
    meta = __import__("json").loads((tmp_path / "lang" / "lang.json").read_text())
    assert meta["lm_order"] == 3 and meta["lm"].startswith("given ARPA")
    assert ArpaLm.read(tmp_path / "lang" / "lm.arpa").prob == ArpaLm.from_text(arpa).prob
    G = kaldifst.StdVectorFst.read(str(tmp_path / "lang" / "G.fst"))
    # the word without a pronunciation is skipped (as Kaldi's arpa2fst does), every other word has an arc
    labels = {a.ilabel for _, a in _arcs(G)}
    assert {lang.words[w] for w in ("YES", "NO", "ENTER", "THREE")} <= labels
    from asr_distill.lang.lang_dir import decoding_vocabulary
    assert "NOTINLEXICON" not in decoding_vocabulary(tmp_path / "lang")
    # a file that is not ARPA is refused by name
    (tmp_path / "junk.arpa").write_text("hello\n")
    with pytest.raises(LexiconError, match="junk.arpa: not an ARPA"):
        prepare_lang(lex, texts, tmp_path / "lang2", lm_arpa=tmp_path / "junk.arpa")


def test_stage_lang_with_lm_text_estimates_a_trigram_and_reports_oov_and_perplexity(exp, tmp_path):
    import json
    import shutil

    from asr_distill.experiment import Experiment
    from asr_distill.lang import ArpaLm
    from asr_distill.recipe import stage_lang
    new = Experiment(tmp_path / "e")
    new.data_dir.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        shutil.copy(exp.cuts_path(split), new.cuts_path(split))
    # LM text: the dev transcripts' words in another order (the LM may know dev words without seeing dev sentences)
    dev_words = sorted({w for t in exp.texts("dev").values() for w in t.split()})
    (tmp_path / "more.txt").write_text(" ".join(dev_words) + "\n\nYES NO YES\n")
    stage_lang(new, SLICE / "etc" / "an4.dic", lm_texts=[tmp_path / "more.txt"], lm_order=3)
    meta = json.loads((new.lang_dir / "lang.json").read_text())
    assert meta["lm_order"] == 3 and meta["lm_ngrams"]["3"] > 0
    lm = ArpaLm.read(new.lang_dir / "lm.arpa")
    assert lm.order == 3 and ("YES", "NO", "YES") in lm.prob
    report = json.loads((new.lang_dir / "lexicon_report.json").read_text())
    assert report["dev_oov_rate"] == 0.0  # every dev word is in the LM text now
    assert 1.0 < report["dev_perplexity"] < report["test_perplexity"] * 10
    assert new.initial_hclg_path.is_file()
    # --lm and --lm-text together are refused before any work
    with pytest.raises(LexiconError, match="either"):
        stage_lang(new, lm_arpa=new.lang_dir / "lm.arpa", lm_texts=[tmp_path / "more.txt"])
