"""Hybrid decoding and scoring: pdf log-likelihoods -> WFST decoding over HCLG -> WER with a confidence interval.

:mod:`.backend` (decoding many utterances, backends), :mod:`.priors` (pdf priors, pseudo-likelihoods),
:mod:`.scoring` (WER), :mod:`.tuning` (acoustic scale and word penalty on dev), :mod:`.scorer` (the one scorer
every system goes through).
"""
from ..fst import add_word_penalty
from .backend import BACKENDS, DecodingBackend, DecodingConfig, KaldiDecoderBackend, decode_loglikes
from .priors import log_priors_from_alignments, log_priors_from_counts, pdf_counts, pseudo_loglikes
from .scorer import DNN_SCALES, GMM_SCALES, WORD_PENALTIES, Scorer
from .scoring import WerResult, compute_wer, words_of
from .tuning import tune_acoustic_scale

__all__ = ["add_word_penalty", "BACKENDS", "DecodingBackend", "DecodingConfig", "KaldiDecoderBackend",
           "decode_loglikes", "log_priors_from_alignments", "log_priors_from_counts", "pdf_counts",
           "pseudo_loglikes", "DNN_SCALES", "GMM_SCALES", "WORD_PENALTIES", "Scorer", "WerResult", "compute_wer",
           "words_of", "tune_acoustic_scale"]
