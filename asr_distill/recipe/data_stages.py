"""Stages 0-2: corpus -> manifests, features + CMVN, lexicon + LM + graphs."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence

from ..data.corpus import SPLITS
from ..data.features import compute_cmvn, compute_features
from ..data.prepare import prepare_corpus
from ..experiment import Experiment
from ..gmm.inventory import StateInventory
from ..decode.scorer import oov_rate
from ..lang import ArpaLm, LexiconError, arpa_vocabulary, build_lexicon, make_hclg, prepare_lang, read_sentences
from ..lang.lang_dir import decoding_vocabulary
from ..lang.lm import read_arpa_header
from ..utils import Pathlike, atomic_path, write_json

__all__ = ["stage_prepare", "stage_features", "stage_lang"]

log = logging.getLogger(__name__)


def stage_prepare(exp: Experiment, corpus_dir: Optional[Pathlike] = None, skip_bad: bool = False,
                  dev_fraction: float = 0.1, **corpus_options) -> None:
    """Stage 0: validate the corpus (kind ``exp.corpus``: an4, librispeech, kaldi, yesno) and write Lhotse manifests
    for train / dev / test (see :func:`asr_distill.data.prepare_corpus` for the options and split rules)."""
    prepare_corpus(exp.corpus, exp.data_dir, corpus_dir=corpus_dir, skip_bad=skip_bad, dev_fraction=dev_fraction,
                   **corpus_options)


def stage_features(exp: Experiment, cmvn_mode: str = "speaker") -> None:
    """Stage 1: fbank (for the DNNs) and MFCC (for the GMM) of every split, and their CMVN statistics."""
    for kind in ("fbank", "mfcc"):
        with_feats = [compute_features(exp.cuts(split), kind, exp.feats_dir, exp.cuts_path(split, kind))
                      for split in SPLITS]
        # GMM: mean normalisation only, as Kaldi's apply-cmvn default; DNN fbank: mean and variance
        stats = compute_cmvn(with_feats, cmvn_mode, global_from=with_feats[0], norm_vars=kind == "fbank")
        stats.save(exp.cmvn_path(kind))


def stage_lang(exp: Experiment, lexicon_path: Optional[Pathlike] = None, sil_prob: float = 0.5,
               use_cmudict: bool = True, oov_fallback: str = "grapheme", lm_arpa: Optional[Pathlike] = None,
               lm_texts: Sequence[Pathlike] = (), lm_order: int = 2, lm_min_count: int = 1,
               lm_vocab_size: Optional[int] = None) -> None:
    """Stage 2: lexicon (corpus dictionary, then CMUdict, then grapheme rules: see :mod:`asr_distill.lang.lexicon`),
    topology, L, G and an HCLG for the initial monophone inventory (rebuilt with trained transition probabilities in
    stage 3).

    G is ``lm_arpa`` when given (its words get pronunciations too), otherwise an interpolated Witten-Bell
    ``lm_order``-gram estimated on the TRAINING transcripts plus ``lm_texts`` (one sentence per line; their
    ``lm_vocab_size`` most frequent words join the vocabulary, all of them when None).  The dev and test OOV rates
    against the decoding vocabulary and the LM's dev perplexity go to ``lang/lexicon_report.json``."""
    if lm_arpa is not None and lm_texts:
        raise LexiconError("give either an ARPA language model (--lm) or text to estimate one from (--lm-text), "
                           "not both")
    train_texts = list(exp.texts("train").values())
    vocab = {w for t in train_texts for w in t.split()}
    # Dev/test words get pronunciations too, for forced alignment (frame labels) only: the LM's vocabulary is the
    # training words plus the corpus dictionary's (plus an external LM's or LM text's), so the decoder can never
    # output a word seen only in test.
    eval_texts = {s: list(exp.texts(s).values()) for s in ("dev", "test")}
    eval_words = {w for texts in eval_texts.values() for t in texts for w in t.split()} - vocab
    lm_sentences: List[List[str]] = []
    for path in lm_texts:
        lm_sentences += read_sentences(path)
    if lm_arpa is not None:
        lm_header = read_arpa_header(lm_arpa)  # validate before any work
        external = arpa_vocabulary(lm_arpa)
        log.info("LM %s: %s n-grams, %d words", lm_arpa, "/".join(str(v) for v in lm_header.values()), len(external))
    else:
        counts = Counter(w for s in lm_sentences for w in s)
        external = {w for w, _ in counts.most_common(lm_vocab_size)}
    if external and len(vocab & external) < 0.5 * len(vocab):
        log.warning("only %d of the %d training words are in the LM's vocabulary (a different case or spelling?)",
                    len(vocab & external), len(vocab))
    lexicon, report = build_lexicon(vocab | eval_words, lexicon_path, use_cmudict=use_cmudict, fallback=oov_fallback,
                                    optional_words=external - vocab - eval_words)
    lm_words = vocab | {w for w, src in report.sources.items() if src == "corpus"} | (external & set(lexicon.words))
    lang = prepare_lang(lexicon, train_texts, exp.lang_dir, sil_prob=sil_prob, lm_words=sorted(lm_words),
                        lm_arpa=lm_arpa, lm_order=lm_order, lm_sentences=lm_sentences, lm_min_count=lm_min_count)
    report.write_fallback(exp.lang_dir / "oov_fallback.txt")
    decodable = decoding_vocabulary(exp.lang_dir)
    lm = ArpaLm.read(exp.lang_dir / "lm.arpa") if lm_arpa is None or Path(lm_arpa).stat().st_size < 200e6 else None
    lm_report = {}
    for split, texts in eval_texts.items():
        sentences = [t.split() for t in texts]
        lm_report[f"{split}_oov_rate"] = oov_rate(sentences, decodable)
        if lm is not None and sentences:
            lm_report[f"{split}_perplexity"] = round(lm.perplexity(sentences)[0], 2)
    write_json({"training_words": len(vocab), "lm_words": len(decodable), "lexicon_words": len(lexicon.words),
                "dev_test_only_words": len(eval_words), "sources": report.counts(),
                "training_word_sources": {src: sum(1 for w in vocab if report.sources.get(w) == src)
                                          for src in set(report.sources.values())},
                "lm_words_left_out": len(report.left_out), **lm_report},
               exp.lang_dir / "lexicon_report.json")
    log.info("lexicon: %d training words; pronunciations from %s", len(vocab), report.counts())
    log.info("decoding vocabulary %d words; %s", len(decodable),
             ", ".join(f"{k} {v:.2f}" + ("%" if "oov" in k else "") for k, v in lm_report.items()))
    hclg = make_hclg(lang, StateInventory.monophone(lang))
    with atomic_path(exp.initial_hclg_path) as tmp:
        hclg.write(tmp)
    log.info("HCLG (initial transition model): %d states", hclg.num_states)
