"""A trained frame classifier applied to a set of frames: frame accuracy, per-utterance log-posteriors, and the
ensemble's combination of several models' log-posteriors.  ``frames`` is a resident
:class:`~asr_distill.nnet.frames.FrameSet` or a :class:`~asr_distill.nnet.stream.FrameStream`."""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["frame_sums", "frame_accuracy", "log_posteriors", "ensemble_log_posteriors", "ENSEMBLE_MEANS"]

ENSEMBLE_MEANS = ("arithmetic", "geometric")


@torch.no_grad()
def frame_sums(model: nn.Module, frames, batch_size: int = 8192, part: int = 0,
               parts: int = 1) -> Tuple[int, float, int]:
    """(correct, summed cross-entropy, frames) over the batches ``part``, ``part + parts``, ... of ``frames``;
    frames labelled -1 (a dev/test utterance the GMM could not align) are left out."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for b, (x, y) in enumerate(frames.eval_batches(batch_size)):
        if b % parts != part:
            continue
        logits = model(x).float()  # fp32: these numbers are reported and become decoder log-likelihoods
        known = y >= 0
        correct += int(((logits.argmax(1) == y) & known).sum())
        loss += float(F.cross_entropy(logits, y, ignore_index=-1, reduction="sum"))
        n += int(known.sum())
    model.train(was_training)
    return correct, loss, n


def frame_accuracy(model: nn.Module, frames, batch_size: int = 8192) -> Tuple[float, float]:
    """(accuracy in percent, mean cross-entropy) of ``model`` on every labelled frame of ``frames``."""
    correct, loss, n = frame_sums(model, frames, batch_size)
    return 100.0 * correct / max(1, n), loss / max(1, n)


@torch.no_grad()
def log_posteriors(model: nn.Module, frames, batch_size: int = 8192) -> Dict[str, np.ndarray]:
    """Per-utterance (frames, num_pdfs) log-softmax outputs (fp32: bf16 would add noise to the log-likelihoods)."""
    model.eval()
    out: Dict[str, np.ndarray] = {}
    for utt, x, _ in frames.utterances():
        parts = [torch.log_softmax(model(x[i:i + batch_size]).float(), -1).cpu() for i in range(0, len(x), batch_size)]
        out[utt] = torch.cat(parts).numpy()
    return out


def ensemble_log_posteriors(members: Sequence[Mapping[str, np.ndarray]], mean: str) -> Dict[str, np.ndarray]:
    """Arithmetic mean of probabilities (the paper) or geometric mean (mean of log-probabilities, renormalised)."""
    if mean not in ENSEMBLE_MEANS:
        raise ValueError(f"ensemble mean must be arithmetic or geometric, not {mean!r}")
    out = {}
    for u in members[0]:
        stack = np.stack([m[u] for m in members]).astype(np.float64)
        if mean == "arithmetic":
            peak = stack.max(0)
            out[u] = (peak + np.log(np.exp(stack - peak).mean(0))).astype(np.float32)
        else:
            avg = stack.mean(0)
            peak = avg.max(1, keepdims=True)
            out[u] = (avg - peak - np.log(np.exp(avg - peak).sum(1, keepdims=True))).astype(np.float32)
    return out
