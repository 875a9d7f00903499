"""The training-side reference and measurements of an exported model (these use the training code; the deployed
path, :mod:`asr_distill.deploy.transcribe`, does not)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import soundfile as sf
import torch

from ..data.features import feature_extractor, moments
from ..decode.backend import DecodingConfig
from ..decode.priors import pseudo_loglikes
from ..decode.scorer import Scorer
from ..decode.scoring import WerResult, compute_wer
from ..experiment import Experiment
from ..nnet.checkpoint import load_model
from ..nnet.frames import splice_utterance
from ..utils import Pathlike
from .export import model_context, update_card
from .transcribe import transcribe

__all__ = ["split_audio", "reference_loglikes", "decode_wer", "measure_model_dir"]


def split_audio(exp_dir: Pathlike, split: str = "test") -> Dict[str, Path]:
    """utt-id -> audio file of one split of the experiment (from its cut manifest)."""
    return {c.id: Path(c.recording.sources[0].source) for c in Experiment(exp_dir).cuts(split)}


def _normalise(feats: np.ndarray, cmvn: str, stats, speaker: Optional[str]) -> np.ndarray:
    if cmvn == "utterance":
        mean, std = moments([feats])
        return ((feats - mean) / std).astype(np.float32)
    if cmvn == "global":
        return ((feats - stats.global_mean) / stats.global_std).astype(np.float32)
    if cmvn == "speaker":
        return stats.apply(feats, speaker).astype(np.float32)
    raise ValueError(f"cmvn {cmvn!r}")


def reference_loglikes(exp_dir: Pathlike, model_ckpt: Pathlike, audio: Dict[str, Pathlike], cmvn: str = "global",
                       left: Optional[int] = None, right: Optional[int] = None,
                       speakers: Optional[Dict[str, str]] = None) -> Dict[str, np.ndarray]:
    """Pseudo log-likelihoods computed the TRAINING way: Lhotse's ``Fbank`` extractor on the audio (uncompressed),
    CMVN in numpy (``utterance``: the utterance's own moments; ``global``: the training set's; ``speaker``: the
    experiment's per-speaker statistics, needs ``speakers``), ``splice_utterance``, the eager model, log-softmax,
    minus the priors."""
    exp = Experiment(exp_dir)
    net = load_model(model_ckpt, "cpu").eval()
    left, right = model_context(exp, dict(net.config), left, right)
    priors, stats, fbank = exp.log_priors(), exp.cmvn("fbank"), feature_extractor("fbank")
    out = {}
    for utt, path in audio.items():
        wave, sr = sf.read(str(path), dtype="float32")
        feats = _normalise(fbank.extract(wave, sr).astype(np.float32), cmvn, stats, (speakers or {}).get(utt))
        with torch.no_grad():
            post = torch.log_softmax(net(splice_utterance(torch.from_numpy(feats), left, right)).float(), -1)
        out[utt] = pseudo_loglikes(post.numpy(), priors)
    return out


def decode_wer(exp_dir: Pathlike, loglikes: Dict[str, np.ndarray], acoustic_scale: float, word_penalty: float,
               split: str = "test", beam: float = 13.0) -> Tuple[Dict[str, List[str]], WerResult]:
    """Recipe-style decode (the experiment's scorer and HCLG) at fixed settings; returns (utt -> words, WER)."""
    scorer = Scorer(Experiment(exp_dir), jobs=1, beam=beam, splits=(split,))
    cfg = DecodingConfig(acoustic_scale=acoustic_scale, word_penalty=word_penalty, beam=beam)
    return scorer.decode(split, loglikes, cfg, bootstrap=0)


def measure_model_dir(exp_dir: Pathlike, model_dir: Pathlike, split: str = "test", update: bool = True,
                      decoder: str = "kaldi-decoder") -> dict:
    """WER of the exported directory on the experiment's ``split`` through :func:`asr_distill.deploy.transcribe.
    transcribe` (fp32 ONNX and, when present, int8 ONNX); merged into the model card under ``wer`` when
    ``update``."""
    audio = split_audio(exp_dir, split)
    refs = {u: t.split() for u, t in Experiment(exp_dir).texts(split).items()}
    paths = [audio[u] for u in sorted(audio)]
    result = {}
    for tag, int8 in (("fp32", False), ("int8", True)):
        if int8 and not (Path(model_dir) / "model.int8.onnx").exists():
            continue
        hyps, failed = transcribe(model_dir, paths, use_int8=int8, out=io.StringIO(), decoder=decoder)
        if failed:
            raise RuntimeError(f"{len(failed)} file(s) failed: {failed[:3]}")
        wer = compute_wer(refs, hyps, bootstrap_replications=0)
        suffix = tag if decoder == "kaldi-decoder" else f"{tag}_{decoder}"
        result[f"{split}_wer_{suffix}"] = round(wer.wer, 2)
        result[f"{split}_errors_{suffix}"] = f"{wer.errors}/{wer.ref_words}"
    if update:
        update_card(model_dir, {"wer": result})
    return result
