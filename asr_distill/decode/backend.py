"""Decoding many utterances: pdf log-likelihood matrices -> word ids over HCLG, in a pool of worker processes.

Any acoustic model enters as a ``(frames, num_pdfs)`` matrix of log-likelihoods: for a DNN the log-posteriors
minus the log-priors (Bourlard & Morgan's pseudo-likelihoods), for the GMM its own log-likelihoods.  Backends sit
behind :class:`DecodingBackend` (one method); the default is kaldi-decoder's ``FasterDecoder``
(:class:`asr_distill.deploy.decoder.HclgDecoder`), one utterance per call in a pool of processes; ``k2``
(:mod:`asr_distill.decode.k2_decoding`, optional) decodes batches of utterances at once (``decode_many``), on the
GPU where there is one.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ..deploy.decoder import HclgDecoder
from ..utils import Pathlike

__all__ = ["DecodingConfig", "DecodingBackend", "KaldiDecoderBackend", "BACKENDS", "DECODERS", "get_backend",
           "decode_loglikes", "K2NotInstalled"]


class K2NotInstalled(ImportError):
    """``--decoder k2`` (or a k2 feature) where k2 does not import."""


@dataclass
class DecodingConfig:
    acoustic_scale: float = 0.1
    beam: float = 13.0
    max_active: int = 7000
    min_active: int = 200
    word_penalty: float = 0.0  # added to the graph cost of every word (Kaldi scoring's word insertion penalty)
    backend: str = "kaldi-decoder"

    def with_(self, **changes) -> "DecodingConfig":
        return replace(self, **changes)


class DecodingBackend:
    """Decodes one utterance's (frames x num_pdfs) log-likelihoods into word ids."""

    def decode(self, loglikes: np.ndarray) -> List[int]:  # pragma: no cover - interface
        raise NotImplementedError


class KaldiDecoderBackend(DecodingBackend):
    """kaldi-decoder's FasterDecoder over an OpenFst HCLG (Kaldi's ``decode-faster``)."""

    def __init__(self, hclg_path: Pathlike, tid2pdf: np.ndarray, config: DecodingConfig):
        self.decoder = HclgDecoder.from_settings(hclg_path, tid2pdf, asdict(config))

    def decode(self, loglikes: np.ndarray) -> List[int]:
        return self.decoder.decode(loglikes)


BACKENDS: Dict[str, Callable[[Pathlike, np.ndarray, DecodingConfig], DecodingBackend]] = {
    "kaldi-decoder": KaldiDecoderBackend}
# every --decoder choice; k2 registers itself in BACKENDS when its module is imported (k2 is optional)
DECODERS = ("kaldi-decoder", "k2")


def get_backend(name: str) -> Callable[[Pathlike, np.ndarray, DecodingConfig], DecodingBackend]:
    """The backend class called ``name`` (importing the optional k2 one on first use)."""
    if name == "k2" and name not in BACKENDS:
        from . import k2_decoding  # noqa: F401  (registers "k2"; raises a clear error without k2)
        k2_decoding.require_k2()
    if name not in BACKENDS:
        raise ValueError(f"unknown decoding backend {name!r}; one of {', '.join(DECODERS)}")
    return BACKENDS[name]

# Per-process decoder state for the worker pool (an FST and a decoder cannot be pickled, so each worker builds its
# own once and reuses it for every utterance it is sent).
_worker: Dict[str, DecodingBackend] = {}


def _init_worker(hclg_path: str, config: DecodingConfig, tid2pdf: np.ndarray) -> None:
    torch.set_num_threads(1)
    _worker["backend"] = get_backend(config.backend)(hclg_path, tid2pdf, config)


def _decode_one(item: Tuple[str, np.ndarray]) -> Tuple[str, List[int]]:
    utt, loglikes = item
    return utt, _worker["backend"].decode(loglikes)


# Inputs a forked pool reads instead of receiving them pickled: a dev set's log-likelihood matrices are hundreds of
# MB to GB (frames x pdfs), and pickling them to the workers for every decode of a tuning grid cost more than the
# decoding itself.  Set just before the pool forks, cleared after.
_fork_inputs: Dict[str, np.ndarray] = {}


def _decode_forked(utt: str) -> Tuple[str, List[int]]:
    return utt, _worker["backend"].decode(_fork_inputs[utt])


def decode_loglikes(hclg_path: Pathlike, tid2pdf: np.ndarray, loglikes: Mapping[str, np.ndarray],
                    config: DecodingConfig, jobs: int = 1, progress: bool = False) -> Dict[str, List[int]]:
    """Decode every utterance of ``loglikes`` (utt -> (frames, num_pdfs)); returns utt -> word ids.

    ``tid2pdf[t]`` is the pdf of transition-id ``t`` (index 0 unused).  With ``jobs > 1`` utterances are decoded in
    that many processes, each holding its own copy of HCLG.
    """
    items = list(loglikes.items())
    tid2pdf = np.asarray(tid2pdf, dtype=np.int64)
    backend_class = get_backend(config.backend)
    if hasattr(backend_class, "decode_many"):  # batched in this process (k2; it caches its converted graph)
        return backend_class(str(hclg_path), tid2pdf, config).decode_many(loglikes)
    bar = (lambda it: tqdm(it, total=len(items), desc="decoding", leave=False)) if progress else (lambda it: it)
    if jobs <= 1 or len(items) < 8:
        _init_worker(str(hclg_path), config, tid2pdf)
        return dict(bar(map(_decode_one, items)))
    return run_pool(_init_worker, (str(hclg_path), config, tid2pdf), _decode_one, _decode_forked, loglikes, jobs, bar)


def run_pool(init, initargs, by_item, by_id, inputs: Mapping[str, np.ndarray], jobs: int, bar=lambda it: it) -> dict:
    """``dict(map(by_item, inputs.items()))`` in ``jobs`` worker processes set up by ``init(*initargs)``.  Where
    processes fork, the workers read ``inputs`` from the parent's memory (``by_id`` gets the key) instead of
    receiving each array pickled."""
    ids = list(inputs)
    chunksize = max(1, len(ids) // (8 * jobs))
    if os.name == "posix":
        _fork_inputs.clear()
        _fork_inputs.update(inputs)
        try:
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork"), initializer=init,
                                     initargs=initargs) as pool:
                return dict(bar(pool.map(by_id, ids, chunksize=chunksize)))
        finally:
            _fork_inputs.clear()
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=init, initargs=initargs) as pool:
        return dict(bar(pool.map(by_item, list(inputs.items()), chunksize=chunksize)))
