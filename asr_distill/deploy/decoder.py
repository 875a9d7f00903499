"""Pseudo log-likelihoods -> words over HCLG with kaldi-decoder's ``FasterDecoder`` (Kaldi's ``decode-faster``).

The one decoder of the project: the training side's scorer (:mod:`asr_distill.decode`) and the stand-alone
transcriber use it alike.  Light on purpose (numpy, kaldifst, kaldi-decoder).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import kaldi_decoder
import kaldifst
import numpy as np

from ..fst import add_word_penalty, invert_symbols, read_symbols, read_tid2pdf

__all__ = ["HclgDecoder", "SKIP_WORDS", "words_of", "open_model_dir"]

SKIP_WORDS = ("<eps>", "<s>", "</s>", "#0")


def words_of(ids, id2word: Dict[int, str]) -> List[str]:
    """Word ids -> words, without epsilon, sentence markers and the back-off disambiguation symbol."""
    return [id2word[i] for i in ids if id2word.get(i, "<eps>") not in SKIP_WORDS]


class HclgDecoder:
    """``decode(loglikes)`` -> word ids of the best path through ``hclg`` (an FST or its path), for a
    ``(frames, num_pdfs)`` matrix of pseudo log-likelihoods: expanded to transition-ids through ``tid2pdf``
    (``tid2pdf[t]`` = pdf of transition-id ``t``; index 0 unused) and multiplied by ``acoustic_scale``."""

    def __init__(self, hclg, tid2pdf: np.ndarray, acoustic_scale: float = 0.1, word_penalty: float = 0.0,
                 beam: float = 13.0, max_active: int = 7000, min_active: int = 200):
        fst = kaldifst.StdVectorFst.read(str(hclg)) if not isinstance(hclg, kaldifst.StdVectorFst) else hclg
        if word_penalty:
            fst = add_word_penalty(fst, word_penalty)
        self.hclg = fst
        self.scale = float(acoustic_scale)
        # DecodableCtc returns M[frame, tid - 1]: column j holds transition-id j + 1.
        self.columns = np.asarray(tid2pdf, dtype=np.int64)[1:]
        opts = kaldi_decoder.FasterDecoderOptions(beam=beam, max_active=max_active, min_active=min_active)
        self.decoder = kaldi_decoder.FasterDecoder(self.hclg, opts)
        self.frames_decoded = 0

    @classmethod
    def from_settings(cls, hclg, tid2pdf: np.ndarray, settings: Dict) -> "HclgDecoder":
        """From a dict of decoding settings (a model card's ``decoding``, or :class:`asr_distill.decode.
        DecodingConfig`'s fields)."""
        keys = ("acoustic_scale", "word_penalty", "beam", "max_active", "min_active")
        return cls(hclg, tid2pdf, **{k: settings[k] for k in keys if k in settings})

    def decode(self, loglikes: np.ndarray) -> List[int]:
        self.decoder.decode(kaldi_decoder.DecodableCtc(self._scores(loglikes)))
        self.frames_decoded = len(loglikes)
        return self.best_words()

    def decode_pieces(self, pieces: Iterable[np.ndarray]) -> List[int]:
        """:meth:`decode` of the frames of consecutive ``pieces`` (each ``(frames, num_pdfs)``), advancing the search
        piece by piece: the same result as one call on their concatenation, with memory bounded by a piece (the
        transition-id scores, the piece's size times the number of transition-ids over the pdfs, never exist for
        the whole recording)."""
        self.start()
        for piece in pieces:
            self.advance(piece)
        return self.best_words()

    def start(self) -> None:
        """Begin an utterance whose frames :meth:`advance` then gives piece by piece (a stream)."""
        self.decoder.init_decoding()
        self.frames_decoded = 0

    def advance(self, loglikes: np.ndarray) -> None:
        """Extend the search over the utterance's next frames."""
        for a in range(0, len(loglikes), self.SCORE_FRAMES):
            scores = self._scores(loglikes[a:a + self.SCORE_FRAMES])
            # DecodableCtc(scores, offset): rows are frames offset, offset + 1, ...; the search resumes there
            self.decoder.advance_decoding(kaldi_decoder.DecodableCtc(scores, self.frames_decoded))
            self.frames_decoded += len(scores)

    def best_words(self, final: bool = True) -> List[int]:
        """Word ids of the best path so far: ``final`` (the utterance is over) ends it in a final state where one
        was reached; a partial hypothesis (``final=False``) ends it wherever the best token is."""
        if not self.frames_decoded:
            return []
        ok, best = self.decoder.get_best_path(use_final_probs=final)
        if not ok:
            return []
        ok, _, words, _ = kaldifst.get_linear_symbol_sequence(best)
        return list(words) if ok else []

    # decode_pieces expands this many frames at a time to transition-id scores
    SCORE_FRAMES = 1000

    def _scores(self, loglikes: np.ndarray) -> np.ndarray:
        scores = np.ascontiguousarray(loglikes[:, self.columns], dtype=np.float32)
        scores *= np.float32(self.scale)
        return scores


def open_model_dir(model_dir) -> Tuple[dict, HclgDecoder, Dict[int, str]]:
    """An exported model directory's card, its decoder (HCLG, transition-id map, the card's decoding settings) and
    word symbols; a directory without a card is named as not being one."""
    model_dir = Path(model_dir)
    card_path = model_dir / "model_card.json"
    if not card_path.is_file():
        raise FileNotFoundError(f"{card_path}: missing (is {model_dir} a model directory written by "
                                f"'asr-distill export'?)")
    card = json.loads(card_path.read_text())
    decoder = HclgDecoder.from_settings(model_dir / "HCLG.fst", read_tid2pdf(model_dir / "tid2pdf.txt"),
                                        card["decoding"])
    return card, decoder, invert_symbols(read_symbols(model_dir / "words.txt"))
