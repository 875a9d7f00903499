"""The one scorer every system goes through (GMM, teachers, ensembles, baselines, students, exported models).

A system enters as pdf log-likelihoods of the dev and test utterances: a DNN's log-posteriors minus the training
log-priors (:meth:`Scorer.evaluate_posteriors`), the GMM's own log-likelihoods, or an exported model's output.  The
acoustic scale and word insertion penalty are tuned on DEV; TEST is decoded once with them; WER comes with a
bootstrap confidence interval, and frame accuracy is the argmax of log-likelihood + log-prior (= of the
posterior) against the GMM's alignment of the same split.  ``decode/<system>/wer.json`` and ``hyp_test.txt`` are
written and the row joins ``results.json``.

A resumed stage does not decode a system again: ``wer.json`` keeps a digest of everything the row depends on (the
log-likelihoods themselves, the graph, the references and alignments, the tuning grid and decoder), and a system
whose digest matches is read back instead of decoded (minutes per system on a large corpus).
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from lhotse import CutSet

from ..fst import invert_symbols, read_symbols, read_tid2pdf
from ..lang.lang_dir import decoding_vocabulary
from ..provenance import file_fingerprint
from ..results import update_results
from ..utils import atomic_write_text, read_json, write_json
from .backend import DecodingConfig, decode_loglikes, get_backend
from .priors import pseudo_loglikes
from .scoring import WerResult, compute_wer, words_of
from .lattice import tune_by_rescoring
from .tuning import search_acoustic_scale, tune_acoustic_scale

if TYPE_CHECKING:  # annotations only: the experiment module imports this package
    from ..experiment import Experiment

__all__ = ["Scorer", "oov_rate", "GMM_SCALES", "DNN_SCALES", "WORD_PENALTIES", "TUNERS"]

# How the dev grid is searched: "lattice" (the default, Kaldi's way) decodes dev once into lattices, rescores every
# grid point and decodes the best few (lattices from k2 where installed; kaldi-decoder's lattice decoder has no
# max-active and is slow on large graphs with weak models); "search" decodes the points a descent from the grid's
# middle visits (a handful, and it can stop in a local minimum); "grid" decodes every point.
TUNERS = ("lattice", "search", "grid")

log = logging.getLogger(__name__)

# LDA+MLLT and SAT triphones were best at the grid's old floor (0.03) on AN4's dev: the grid reaches below it
GMM_SCALES = (0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.0667, 0.0833, 0.1, 0.125, 0.15)
DNN_SCALES = (0.05, 0.0667, 0.0833, 0.1, 0.125, 0.15, 0.2)
# Word insertion penalties in graph-cost units (Kaldi's scoring sweeps 0, 0.5, 1.0 in its own units).
WORD_PENALTIES = (0.0, 1.0, 2.0, 2.5, 3.0)


# wer.json's fields that are not the results row
_DECODE_ONLY = ("dev_wers", "test", "decode_seconds", "decoder", "inputs_digest", "extra_fields")


def _pdf_labels(manifest) -> Dict[str, np.ndarray]:
    return {c.id: c.load_custom("pdf_ids") for c in CutSet.from_jsonl_lazy(manifest)}


def oov_rate(refs: Iterable[Sequence[str]], vocab: set) -> float:
    """Percent of the reference word tokens outside ``vocab``."""
    words = [w for ref in refs for w in ref]
    return round(100.0 * sum(w not in vocab for w in words) / max(1, len(words)), 2)


class Scorer:
    """Scores systems of one experiment (see the module docstring)."""

    def __init__(self, exp: "Experiment", jobs: int = 2, beam: float = 13.0, splits: Sequence[str] = ("dev", "test"),
                 scales: Sequence[float] = DNN_SCALES, penalties: Sequence[float] = WORD_PENALTIES,
                 graph_dir: Optional[Path] = None, labels: Optional[Mapping[str, Mapping[str, np.ndarray]]] = None,
                 log_priors: Optional[np.ndarray] = None, tuning: str = "lattice", decoder: str = "kaldi-decoder"):
        """``graph_dir`` / ``labels`` / ``log_priors``: another system's graph, frame labels and priors than the
        experiment's targets (each GMM system of the bootstrap is scored with its own); ``decoder``: the decoding
        backend (:data:`asr_distill.decode.backend.DECODERS`)."""
        if tuning not in TUNERS:
            raise ValueError(f"tuning must be one of {TUNERS}, not {tuning!r}")
        self.exp, self.jobs, self.tuning = exp, jobs, tuning
        self.scales, self.penalties = tuple(scales), tuple(penalties)  # the dev grid (Kaldi's score.sh ranges)
        graph_dir = Path(graph_dir) if graph_dir is not None else exp.graph_dir
        self.hclg = graph_dir / "HCLG.fst"
        self.tid2pdf = read_tid2pdf(graph_dir / "tid2pdf.txt")
        self.id2word = invert_symbols(read_symbols(graph_dir / "words.txt"))
        get_backend(decoder)  # an unknown name, or k2 missing, stops here rather than after the model has run
        self.config = DecodingConfig(beam=beam, backend=decoder)
        self.log_priors = exp.log_priors() if log_priors is None else log_priors
        self.refs = {s: {u: t.split() for u, t in exp.texts(s).items()} for s in splits}
        # the reference words the decoder cannot output (not in the LM): a floor under every system's WER
        vocab = decoding_vocabulary(exp.lang_dir)
        self.oov_rates = {s: oov_rate(self.refs[s].values(), vocab) for s in splits} if vocab else {}
        self.labels = ({s: _pdf_labels(exp.labelled_cuts_path(s)) for s in splits} if labels is None
                       else {s: dict(labels[s]) for s in splits})

    def frame_accuracy(self, split: str, loglikes: Mapping[str, np.ndarray]) -> float:
        """Percent of the split's aligned frames whose argmax of log-likelihood + log-prior is the aligned pdf
        (the -1 frames of an utterance the GMM could not align are left out)."""
        correct = total = 0
        for u, lab in self.labels[split].items():
            known = lab >= 0
            correct += int((((loglikes[u] + self.log_priors).argmax(1) == lab) & known).sum())
            total += int(known.sum())
        return 100.0 * correct / max(1, total)

    def decode(self, split: str, loglikes: Mapping[str, np.ndarray], config: DecodingConfig,
               bootstrap: int = 1000) -> Tuple[Dict[str, List[str]], WerResult]:
        """Words of every utterance of ``loglikes`` and the WER against ``split``'s transcripts."""
        ids = decode_loglikes(self.hclg, self.tid2pdf, loglikes, config, self.jobs)
        hyps = {u: words_of(h, self.id2word) for u, h in ids.items()}
        refs = {u: r for u, r in self.refs[split].items() if u in loglikes}
        return hyps, compute_wer(refs, hyps, bootstrap_replications=bootstrap)

    def tune(self, dev_loglikes: Mapping[str, np.ndarray], scales: Optional[Sequence[float]] = None
             ) -> Tuple[DecodingConfig, Dict[str, float]]:
        tune = {"search": search_acoustic_scale, "lattice": tune_by_rescoring, "grid": tune_acoustic_scale}[self.tuning]
        return tune(self.hclg, self.tid2pdf, dev_loglikes, self.refs["dev"], self.id2word, scales or self.scales,
                    self.config, self.jobs, self.penalties)

    def inputs_digest(self, kind: str, loglikes: Mapping[str, Mapping[str, np.ndarray]],
                      scales: Optional[Sequence[float]] = None) -> str:
        """A digest of all a results row depends on: equal digests, equal rows (the decoders are deterministic)."""
        h = hashlib.blake2b(digest_size=16)
        settings = (kind, self.tuning, tuple(scales or self.scales), self.penalties, repr(self.config),
                    file_fingerprint(self.hclg))
        h.update(repr(settings).encode())
        h.update(np.ascontiguousarray(self.tid2pdf).tobytes())
        for split in sorted(loglikes):
            for utt in sorted(loglikes[split]):
                h.update(utt.encode())
                h.update(np.ascontiguousarray(loglikes[split][utt], dtype=np.float32).tobytes())
                h.update(" ".join(self.refs.get(split, {}).get(utt, ())).encode())
                labels = self.labels.get(split, {}).get(utt)
                if labels is not None:
                    h.update(np.ascontiguousarray(labels).tobytes())
        h.update(np.ascontiguousarray(self.log_priors, dtype=np.float32).tobytes())
        return h.hexdigest()

    @staticmethod
    def _decoded(out: Path, digest: str) -> Optional[dict]:
        """The row of an earlier decode of the same inputs, else None (no wer.json, another digest, unreadable)."""
        try:
            stored = read_json(out / "wer.json")
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("inputs_digest") != digest or \
                not (out / "hyp_test.txt").is_file():
            return None
        drop = set(_DECODE_ONLY) | set(stored.get("extra_fields", ()))  # the caller's fields are the caller's now
        return {k: v for k, v in stored.items() if k not in drop}

    def evaluate(self, name: str, kind: str, loglikes: Mapping[str, Mapping[str, np.ndarray]], params: int,
                 extra: Optional[dict] = None, scales: Optional[Sequence[float]] = None) -> dict:
        """``loglikes[split][utt]`` = (frames, num_pdfs) pdf log-likelihoods for dev and test -> the results row;
        ``scales``: the acoustic-scale grid when not the scorer's (the GMM's likelihoods want smaller ones)."""
        out = self.exp.decode_dir(name)
        digest = self.inputs_digest(kind, loglikes, scales)
        cached = self._decoded(out, digest)
        if cached is not None:
            row = {**cached, "name": name, "params": int(params), **(extra or {})}
            update_results(self.exp.dir, self.exp.corpus, row)
            log.info("%s: decoded before from the same inputs (%s): test WER %.2f%%, dev WER %.2f%%", name,
                     out / "wer.json", row["wer"], row["dev_wer"])
            return row
        cfg, dev_wers = self.tune(loglikes["dev"], scales)
        best = f"{cfg.acoustic_scale:g}/{cfg.word_penalty:g}"
        t0 = time.time()
        hyps, wer = self.decode("test", loglikes["test"], cfg)
        atomic_write_text(out / "hyp_test.txt", "".join(f"{u} {' '.join(hyps[u])}\n" for u in sorted(hyps)))
        row = {"name": name, "kind": kind, "params": int(params), "wer": round(wer.wer, 2),
               "wer_ci": [round(wer.ci_low, 2), round(wer.ci_high, 2)],
               "frame_acc": round(self.frame_accuracy("test", loglikes["test"]), 2),
               "dev_frame_acc": round(self.frame_accuracy("dev", loglikes["dev"]), 2),
               "dev_wer": round(dev_wers[best], 2), "acoustic_scale": cfg.acoustic_scale,
               "word_penalty": cfg.word_penalty,
               **{("oov_rate" if s == "test" else f"{s}_oov_rate"): r for s, r in self.oov_rates.items()},
               **(extra or {})}
        write_json({**row, "dev_wers": dev_wers, "test": wer.as_dict(), "decode_seconds": time.time() - t0,
                    "decoder": cfg.backend, "inputs_digest": digest, "extra_fields": sorted(extra or {})},
                   out / "wer.json")
        update_results(self.exp.dir, self.exp.corpus, row)
        log.info("%s: test %s, test frame acc %.2f%%, dev WER %.2f%% (%s)", name, wer, row["frame_acc"],
                 row["dev_wer"], best)
        return row

    def evaluate_posteriors(self, name: str, kind: str, log_post: Mapping[str, Mapping[str, np.ndarray]],
                            params: int, extra: Optional[dict] = None) -> dict:
        """:meth:`evaluate` for a DNN's log-posteriors: the priors are divided out first (hybrid decoding)."""
        loglikes = {s: {u: pseudo_loglikes(p, self.log_priors) for u, p in log_post[s].items()} for s in log_post}
        return self.evaluate(name, kind, loglikes, params, extra)
