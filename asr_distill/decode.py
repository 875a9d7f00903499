"""Hybrid decoding and scoring: pdf log-likelihoods -> WFST decoding over HCLG -> WER with a confidence interval.

Any acoustic model enters as a ``(frames, num_pdfs)`` matrix of log-likelihoods: for a DNN the log-posteriors
minus the log-priors (Bourlard & Morgan's pseudo-likelihoods), for the GMM its own log-likelihoods.  The decoder
multiplies them by the acoustic scale and searches HCLG, whose input labels are transition-ids, so the matrix is
expanded through the transition-id -> pdf map.

Backends sit behind :class:`DecodingBackend` (one method); the default uses kaldi-decoder's ``FasterDecoder``.  A k2
backend can join where k2 is installed by registering in :data:`BACKENDS`.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from .utils import Pathlike

__all__ = [
    "DecodingConfig", "DecodingBackend", "KaldiDecoderBackend", "BACKENDS", "decode_loglikes", "compute_wer",
    "WerResult", "log_priors_from_alignments", "pseudo_loglikes", "tune_acoustic_scale",
]

log = logging.getLogger(__name__)


@dataclass
class DecodingConfig:
    acoustic_scale: float = 0.1
    beam: float = 13.0
    max_active: int = 7000
    min_active: int = 200
    word_penalty: float = 0.0  # added to the graph cost of every word (Kaldi scoring's word insertion penalty)
    backend: str = "kaldi-decoder"


class DecodingBackend:
    """Decodes one utterance's already-scaled (frames x transition-ids) score matrix into word ids."""

    def decode(self, tid_scores: np.ndarray) -> List[int]:  # pragma: no cover - interface
        raise NotImplementedError


class KaldiDecoderBackend(DecodingBackend):
    """kaldi-decoder's FasterDecoder over an OpenFst HCLG (Kaldi's ``decode-faster``)."""

    def __init__(self, hclg_path: Pathlike, config: DecodingConfig):
        import kaldi_decoder
        import kaldifst

        self.hclg = kaldifst.StdVectorFst.read(str(hclg_path))
        if config.word_penalty:
            self.hclg = add_word_penalty(self.hclg, config.word_penalty)
        opts = kaldi_decoder.FasterDecoderOptions(beam=config.beam, max_active=config.max_active,
                                                  min_active=config.min_active)
        self.decoder = kaldi_decoder.FasterDecoder(self.hclg, opts)

    def decode(self, tid_scores: np.ndarray) -> List[int]:
        import kaldi_decoder
        import kaldifst

        decodable = kaldi_decoder.DecodableCtc(np.ascontiguousarray(tid_scores, dtype=np.float32))
        self.decoder.decode(decodable)
        ok, best = self.decoder.get_best_path()
        if not ok:
            return []
        ok, _, words, _ = kaldifst.get_linear_symbol_sequence(best)
        return list(words) if ok else []


def add_word_penalty(fst, penalty: float):
    """Copy of ``fst`` with ``penalty`` added to the weight of every arc that outputs a word."""
    import kaldifst

    from .lang import map_arcs

    return map_arcs(fst, lambda a: a if not a.olabel else kaldifst.StdArc(
        a.ilabel, a.olabel, kaldifst.TropicalWeight(a.weight.value + penalty), a.nextstate))


BACKENDS: Dict[str, Callable[[Pathlike, DecodingConfig], DecodingBackend]] = {"kaldi-decoder": KaldiDecoderBackend}

# Per-process decoder state for the worker pool (an FST and a decoder cannot be pickled, so each worker builds its
# own once and reuses it for every utterance it is sent).
_worker: Dict[str, object] = {}


def _init_worker(hclg_path: str, config: DecodingConfig, tid2pdf: np.ndarray) -> None:
    import torch

    torch.set_num_threads(1)
    _worker["backend"] = BACKENDS[config.backend](hclg_path, config)
    _worker["tid2pdf"] = tid2pdf
    _worker["scale"] = config.acoustic_scale


def _decode_one(item: Tuple[str, np.ndarray]) -> Tuple[str, List[int]]:
    utt, loglikes = item
    # DecodableCtc returns M[frame, tid - 1]: column j holds transition-id j + 1.
    scores = loglikes[:, _worker["tid2pdf"][1:]] * _worker["scale"]
    return utt, _worker["backend"].decode(scores)


def decode_loglikes(hclg_path: Pathlike, tid2pdf: np.ndarray, loglikes: Mapping[str, np.ndarray],
                    config: DecodingConfig, jobs: int = 1, progress: bool = False) -> Dict[str, List[int]]:
    """Decode every utterance of ``loglikes`` (utt -> (frames, num_pdfs)); returns utt -> word ids.

    ``tid2pdf[t]`` is the pdf of transition-id ``t`` (index 0 unused).  With ``jobs > 1`` utterances are decoded in
    that many processes, each holding its own copy of HCLG.
    """
    items = list(loglikes.items())
    tid2pdf = np.asarray(tid2pdf, dtype=np.int64)
    if jobs <= 1 or len(items) < 8:
        _init_worker(str(hclg_path), config, tid2pdf)
        results = map(_decode_one, items)
        return dict(_progress(results, len(items), progress))
    import multiprocessing as mp

    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(str(hclg_path), config, tid2pdf)) as pool:
        results = pool.map(_decode_one, items, chunksize=max(1, len(items) // (8 * jobs)))
        return dict(_progress(results, len(items), progress))


def _progress(it, total, enabled):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="decoding", leave=False)


# ------------------------------------------------------------------------------------------------------------------
# Priors and pseudo-likelihoods

def log_priors_from_alignments(pdf_alignments: Sequence[np.ndarray], num_pdfs: int) -> np.ndarray:
    """Log of the pdf-id frequencies in the training alignments.

    A pdf never seen in training (AN4: two of the silence model's states, which its ergodic topology lets
    alignments skip) gets the prior of the rarest pdf that was seen.  A tiny floor (1e-8) would instead add
    ``-log 1e-8 = 18.4`` to that pdf's pseudo-likelihood on EVERY frame, far above any real pdf's, and pull the
    decoder into silence: that cost full-AN4 DNN systems 2-3 points of WER, nearly all deletions.
    """
    counts = np.zeros(num_pdfs, dtype=np.float64)
    for ali in pdf_alignments:
        counts += np.bincount(ali, minlength=num_pdfs)[:num_pdfs]
    if not counts.any():
        raise ValueError("no aligned frames to estimate pdf priors from")
    counts[counts == 0] = counts[counts > 0].min()
    return np.log(counts / counts.sum()).astype(np.float32)


def pseudo_loglikes(log_posteriors: np.ndarray, log_priors: np.ndarray) -> np.ndarray:
    """Hybrid pseudo log-likelihood log p(x|s) + const = log p(s|x) - log p(s)."""
    return log_posteriors - log_priors[None, :]


# ------------------------------------------------------------------------------------------------------------------
# Scoring

@dataclass
class WerResult:
    wer: float  # percent
    errors: int
    ref_words: int
    ins: int
    dels: int
    subs: int
    ci_low: float
    ci_high: float
    sentence_errors: int
    num_sentences: int

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}

    def __str__(self) -> str:
        return (f"WER {self.wer:.2f}% [ {self.errors} / {self.ref_words}, {self.ins} ins, {self.dels} del, "
                f"{self.subs} sub ] 95% CI [{self.ci_low:.2f}, {self.ci_high:.2f}]")


def compute_wer(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, Sequence[str]],
                bootstrap_replications: int = 1000, seed: int = 0) -> WerResult:
    """Corpus WER (kaldialign) with a bootstrap 95% confidence interval over utterances (Bisani & Ney 2004)."""
    import kaldialign

    missing = sorted(set(refs) - set(hyps))
    if missing:
        log.warning("%d utterance(s) have no hypothesis (scored as all deletions), e.g. %s", len(missing), missing[:3])
    ins = dels = subs = ref_words = sent_err = 0
    pairs = []
    for utt in sorted(refs):
        ref, hyp = list(refs[utt]), list(hyps.get(utt, []))
        st = kaldialign.edit_distance(ref, hyp)
        ins, dels, subs = ins + st["ins"], dels + st["del"], subs + st["sub"]
        ref_words += len(ref)
        sent_err += int(st["total"] > 0)
        pairs.append((ref, hyp))
    errors = ins + dels + subs
    wer = 100.0 * errors / max(1, ref_words)
    lo = hi = wer
    if bootstrap_replications > 0 and len(pairs) > 1:
        ci = kaldialign.bootstrap_wer_ci([p[0] for p in pairs], [p[1] for p in pairs],
                                         replications=bootstrap_replications, seed=seed)
        lo = 100.0 * max(0.0, ci["wer"] - ci["ci95"])
        hi = 100.0 * (ci["wer"] + ci["ci95"])
    return WerResult(wer, errors, ref_words, ins, dels, subs, lo, hi, sent_err, len(pairs))


def words_of(ids: Sequence[int], id2word: Mapping[int, str]) -> List[str]:
    return [id2word[i] for i in ids if id2word.get(i, "<eps>") not in ("<eps>", "<s>", "</s>", "#0")]


def tune_acoustic_scale(hclg_path: Pathlike, tid2pdf: np.ndarray, dev_loglikes: Mapping[str, np.ndarray],
                        dev_refs: Mapping[str, Sequence[str]], id2word: Mapping[int, str],
                        scales: Sequence[float], config: DecodingConfig, jobs: int = 1,
                        penalties: Sequence[float] = (0.0,)) -> Tuple[DecodingConfig, Dict[str, float]]:
    """Decode the DEV set at each (acoustic scale, word penalty) and return the best config (ties -> the larger
    scale, which decodes faster, and the smaller penalty) and every setting's dev WER.  The test set is never
    looked at here."""
    wers: Dict[Tuple[float, float], float] = {}
    for penalty in penalties:
        for scale in scales:
            cfg = DecodingConfig(**{**config.__dict__, "acoustic_scale": scale, "word_penalty": penalty})
            hyps = decode_loglikes(hclg_path, tid2pdf, dev_loglikes, cfg, jobs)
            wers[(scale, penalty)] = compute_wer(dev_refs, {u: words_of(h, id2word) for u, h in hyps.items()},
                                                 bootstrap_replications=0).wer
            log.debug("  dev acoustic scale %.4f, word penalty %.2f: WER %.2f%%", scale, penalty,
                      wers[(scale, penalty)])
    scale, penalty = min(wers, key=lambda k: (round(wers[k], 6), -k[0], k[1]))
    log.info("  dev: best acoustic scale %.4f, word penalty %.2f: WER %.2f%% (%d settings tried)", scale, penalty,
             wers[(scale, penalty)], len(wers))
    best = DecodingConfig(**{**config.__dict__, "acoustic_scale": scale, "word_penalty": penalty})
    return best, {f"{k[0]:g}/{k[1]:g}": v for k, v in wers.items()}
