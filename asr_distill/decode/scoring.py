"""Scoring: WER with a bootstrap confidence interval (kaldialign), and word ids -> words."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import kaldialign

from ..deploy.decoder import words_of

__all__ = ["WerResult", "compute_wer", "words_of"]

log = logging.getLogger(__name__)


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
