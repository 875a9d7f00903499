"""Stages 0-2: corpus -> manifests, features + CMVN, lexicon + LM + graphs."""
from __future__ import annotations

import logging
from typing import Optional

from ..data.corpus import SPLITS
from ..data.features import compute_cmvn, compute_features
from ..data.prepare import prepare_corpus
from ..experiment import Experiment
from ..gmm.inventory import StateInventory
from ..lang import build_lexicon, make_hclg, prepare_lang
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
               use_cmudict: bool = True, oov_fallback: str = "grapheme") -> None:
    """Stage 2: lexicon for the training vocabulary (corpus dictionary, then CMUdict, then grapheme rules: see
    :mod:`asr_distill.lang.lexicon`), topology, L, bigram G from the TRAINING transcripts, and an HCLG for the
    initial monophone inventory (rebuilt with trained transition probabilities in stage 3)."""
    train_texts = list(exp.texts("train").values())
    vocab = {w for t in train_texts for w in t.split()}
    # Dev/test words get pronunciations too, for forced alignment (frame labels) only: the LM's vocabulary is the
    # training words plus the corpus dictionary's, so the decoder can never output a word seen only in test.
    eval_words = {w for s in ("dev", "test") for t in exp.texts(s).values() for w in t.split()} - vocab
    lexicon, report = build_lexicon(vocab | eval_words, lexicon_path, use_cmudict=use_cmudict, fallback=oov_fallback)
    lm_words = vocab | {w for w, src in report.sources.items() if src == "corpus"}
    lang = prepare_lang(lexicon, train_texts, exp.lang_dir, sil_prob=sil_prob, lm_words=sorted(lm_words))
    report.write_fallback(exp.lang_dir / "oov_fallback.txt")
    write_json({"training_words": len(vocab), "lm_words": len(lm_words), "lexicon_words": len(lexicon.words),
                "dev_test_only_words": len(eval_words), "sources": report.counts(),
                "training_word_sources": {src: sum(1 for w in vocab if report.sources.get(w) == src)
                                          for src in set(report.sources.values())}},
               exp.lang_dir / "lexicon_report.json")
    log.info("lexicon: %d training words; pronunciations from %s", len(vocab), report.counts())
    hclg = make_hclg(lang, StateInventory.monophone(lang))
    with atomic_path(exp.initial_hclg_path) as tmp:
        hclg.write(tmp)
    log.info("HCLG (initial transition model): %d states", hclg.num_states)
