"""A generalist and its specialists as one system (:mod:`asr_distill.distill.specialists` holds the algorithms):
the subsets chosen from the generalist's predictions on the training frames, each specialist trained on its
balanced selection of them, and the combined posteriors of any frames."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..nnet import parallel
from ..nnet.checkpoint import load_model
from ..nnet.frames import FrameSet
from ..nnet.models import build_model, count_parameters, fit_windows, model_flops_per_frame
from ..nnet.step import CrossEntropyLoss, FrameLoss
from ..nnet.train import TrainConfig, train_model
from ..utils import read_json, write_json
from .loss import distillation_loss
from .specialists import (active_specialists, balanced_selection, cluster_classes, combine, coverage,
                          dustbin_labels, dustbin_log_prior_ratio, grow_subsets, membership, prediction_covariance,
                          share_out, specialist_from)

__all__ = ["SpecialistSystem", "SpecialistTargets", "choose_subsets"]

log = logging.getLogger(__name__)


@torch.no_grad()
def _probs(model: nn.Module, frames, batch_size: int = 8192):
    model.eval()
    for x, _ in frames.eval_batches(batch_size):
        yield torch.softmax(model(x).float(), -1)


def choose_subsets(generalist: nn.Module, train: FrameSet, num_specialists: int, overlap: int, seed: int = 0,
                   min_size: int = 2) -> List[np.ndarray]:
    """Confusable class subsets: K-means on the covariance of ``generalist``'s predictions over the training
    frames, each cluster grown by ``overlap`` classes; clusters of fewer than ``min_size`` classes are left out
    (one class needs no specialist)."""
    cov = prediction_covariance(_probs(generalist, train))
    clusters = [c for c in cluster_classes(cov, num_specialists, seed) if len(c) >= min_size]
    return grow_subsets(cov, clusters, overlap)


def _local_frames(frames: FrameSet, subset: np.ndarray, num_classes: int, seed: int, drop_unselected: bool):
    """``frames`` with the specialist's labels (subset index or dustbin), sharing the features; and the balanced
    selection mask.  ``drop_unselected``: labels of frames outside the selection become -1 (scoring ignores them)."""
    local = dustbin_labels(frames.labels, subset, num_classes)
    mask = balanced_selection(local, len(subset), seed)
    if drop_unselected:
        local = torch.where(mask, local, torch.full_like(local, -1))
    return dataclasses.replace(frames, labels=local, _subset_cache=None), mask


class SpecialistTargets(FrameLoss):
    """A specialist's loss with soft targets: ``alpha * T^2 * KL + (1 - alpha) * CE`` against the teachers'
    posteriors folded into the specialist's classes (the subset's, and the rest's sum as the dustbin's), softened
    at temperature ``T`` and averaged over the teachers.  The paper (section 6) finds soft targets keep
    specialists, which see little data, from overfitting.

    The teachers' posterior carries the corpus's priors, the hard labels the balanced selection's.  With
    ``log_prior_ratio`` (:func:`~asr_distill.distill.specialists.dustbin_log_prior_ratio`: log true / training
    priors of (subset, dustbin)) the folded targets are moved to the balanced priors (Bayes' rule: times training /
    true prior, at temperature ``T`` its ``1/T``-th power), so that both terms teach one prior and the one
    correction applied at inference undoes it for both."""

    def __init__(self, teachers: Sequence[nn.Module], subset: np.ndarray, T: float, alpha: float,
                 log_prior_ratio: Optional[torch.Tensor] = None):
        self.teachers, self.T, self.alpha = list(teachers), float(T), float(alpha)
        self.subset = torch.as_tensor(np.asarray(subset), dtype=torch.long)
        self.shift = None
        if log_prior_ratio is not None:  # per output: subset classes, then the dustbin
            r = torch.as_tensor(log_prior_ratio, dtype=torch.float32)
            self.shift = torch.cat([r[0].expand(len(self.subset)), r[1:2]]) * (-1.0 / self.T)

    def bind(self, device) -> None:
        self.subset = self.subset.to(device)
        if self.shift is not None:
            self.shift = self.shift.to(device)
        for t in self.teachers:
            t.to(device).eval()

    def describe(self):
        return {"loss": "specialist-distillation", "T": self.T, "alpha": self.alpha, "teachers": len(self.teachers),
                "balanced_priors": self.shift is not None}

    def fold(self, logits: torch.Tensor) -> torch.Tensor:
        """A teacher's logits over all classes -> over the specialist's: the subset's, and the log of the summed
        probability of the rest (the dustbin is ONE class of the specialist, so it is summed at T = 1 and only then
        softened; summing softened probabilities instead would hand the dustbin most of the mass at high T, the
        hundreds of classes outside a small subset each keeping a share)."""
        z = logits.float()
        outside = torch.ones(z.shape[1], dtype=torch.bool, device=z.device)
        outside[self.subset] = False
        return torch.cat([z[:, self.subset], torch.logsumexp(z[:, outside], 1, keepdim=True)], 1)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, len(subset) + 1)`` soft targets of windows ``x``: the teachers' folded posteriors at temperature
        ``T``, averaged."""
        folded = torch.stack([torch.softmax(self.fold(t(x)) / self.T, -1) for t in self.teachers]).mean(0)
        if self.shift is not None:
            folded = folded * self.shift.exp()
            folded = folded / folded.sum(1, keepdim=True)
        return folded

    def __call__(self, logits, x, y, frame_index, topk):
        return distillation_loss(logits, y, self.T, self.alpha, teacher_probs=self.targets(x))


class SpecialistSystem(nn.Module):
    """``log_posteriors(frames)``: the generalist's posteriors refined by the active specialists (see
    :func:`asr_distill.distill.specialists.combine`); ``top_n``: how many of the generalist's best classes decide
    which specialists are active for a frame."""

    def __init__(self, generalist: nn.Module, specialists: Sequence[nn.Module], subsets: Sequence[np.ndarray],
                 log_prior_ratios: Sequence[torch.Tensor], top_n: int = 5, iterations: int = 30):
        super().__init__()
        self.generalist = generalist
        self.specialists = nn.ModuleList(specialists)
        self.subsets = [np.asarray(s) for s in subsets]
        self.num_classes = int(generalist.config["num_pdfs"])
        self.register_buffer("member", membership(self.subsets, self.num_classes))
        self.log_prior_ratios = [r.float() for r in log_prior_ratios]
        self.top_n, self.iterations = top_n, iterations
        self.active_count = 0.0  # specialists active per frame, averaged over the frames of the last call
        self._active_sum, self._frames = 0.0, 0

    @classmethod
    def fit(cls, generalist: nn.Module, train: FrameSet, dev: FrameSet, out_dir: Path, config: TrainConfig,
              num_specialists: int, overlap: int, left: int, right: int, top_n: int = 5,
              progress: bool = True, teachers: Sequence[nn.Module] = (), T: float = 1.0,
              alpha: float = 0.0) -> "SpecialistSystem":
        """Choose the subsets (stored in ``out_dir/subsets.json``, reused when present), train each specialist
        from the generalist (``out_dir/specialist<m>/``; finished runs are kept, interrupted ones resume): on
        hard labels (``alpha = 0``, the paper's section 5), or with ``teachers``' soft targets
        (:class:`SpecialistTargets`)."""
        if not isinstance(train, FrameSet) or not isinstance(dev, FrameSet) or train.labels is None:
            raise ValueError("specialists need the resident frame path with labels (--frames resident)")
        out_dir = Path(out_dir)
        subsets_path = out_dir / "subsets.json"
        if not subsets_path.exists() and parallel.is_main():
            subsets = choose_subsets(generalist, train, num_specialists, overlap, config.seed)
            write_json({"subsets": [s.tolist() for s in subsets], "num_specialists": num_specialists,
                        "overlap": overlap}, subsets_path)
        parallel.barrier()
        subsets = [np.asarray(s) for s in read_json(subsets_path)["subsets"]]
        # under torchrun the ranks share the specialists out (:func:`share_out`), each training alone on the whole
        # training set; then every rank loads them all
        rank, world = parallel.rank(), parallel.world_size()
        num_classes = int(generalist.config["num_pdfs"])
        labelled = int((train.labels >= 0).sum())
        offsets = train.offsets.numpy()
        position = {u: i for i, u in enumerate(train.utt_index or range(len(train.utt_ids)))}
        specialists, ratios = [], []
        # specialist m's training cost ~ its selected frames (twice its subset's): shared out longest first
        counts = np.bincount(train.labels[train.labels >= 0].cpu().numpy(), minlength=num_classes)
        owner = share_out([2 * int(counts[s].sum()) for s in subsets], world)
        for m, subset in enumerate(subsets):
            local_train, mask = _local_frames(train, subset, num_classes, config.seed + m, drop_unselected=False)
            local_dev, _ = _local_frames(dev, subset, num_classes, config.seed + m, drop_unselected=True)
            inside = int(((local_train.labels >= 0) & (local_train.labels != len(subset))).sum())
            selected = mask.cpu().numpy()

            def keep(utt_index, n, selected=selected):
                i = position[utt_index]
                return selected[offsets[i]:offsets[i + 1]]

            d = out_dir / f"specialist{m}"
            ratio = dustbin_log_prior_ratio(inside / labelled, inside / max(1, int(selected.sum())))
            ratios.append(ratio)
            if owner[m] != rank:
                continue
            model = fit_windows(specialist_from(generalist, subset, build_model), left, right)
            log.info("specialist %d%s: %d classes, %d of their frames + %d others", m,
                     f" (rank {rank})" if world > 1 else "", len(subset), inside, int(selected.sum()) - inside)
            loss = SpecialistTargets(teachers, subset, T, alpha, ratio) if alpha > 0 else CrossEntropyLoss()
            with parallel.solo():
                train_model(model, local_train, local_dev, config, d, loss=loss, keep=keep,
                            progress=progress and world == 1)
        parallel.barrier()
        for m in range(len(subsets)):
            specialists.append(fit_windows(load_model(out_dir / f"specialist{m}" / "best.pt", train.device), left,
                                           right).eval())
        return cls(generalist, specialists, subsets, ratios, top_n)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` combined posteriors of windows ``x``."""
        pg = torch.softmax(self.generalist(x).float(), -1)
        member = self.member.to(pg.device)
        active = active_specialists(pg, member, self.top_n)
        spec = []
        for model, ratio, subset in zip(self.specialists, self.log_prior_ratios, self.subsets):
            logp = torch.log_softmax(model(x).float(), -1)
            corr = torch.cat([ratio[0].expand(len(subset)), ratio[1:2]]).to(logp.device)
            spec.append(torch.softmax(logp + corr, -1))  # the dustbin's and the subset's priors, as in the data
        self._active_sum += float(active.sum())
        self._frames += x.shape[0]
        return combine(pg, spec, member, active, self.iterations).float()

    @torch.no_grad()
    def log_posteriors(self, frames, batch_size: int = 4096) -> Dict[str, np.ndarray]:
        """Per-utterance ``(frames, C)`` log of the combined posteriors (the decoder's input after the priors)."""
        self.eval()
        self._active_sum, self._frames = 0.0, 0
        out = {}
        for utt, x, _ in frames.utterances():
            parts = [self.probabilities(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
            out[utt] = torch.log(torch.cat(parts).clamp_min(1e-30)).cpu().numpy()
        self.active_count = self._active_sum / max(1, self._frames)
        return out

    def coverage(self) -> np.ndarray:
        return coverage(self.subsets, self.num_classes)

    def params(self) -> int:
        return count_parameters(self.generalist) + sum(count_parameters(m) for m in self.specialists)

    def flops_per_frame(self, active: Optional[float] = None) -> int:
        """The generalist's forward plus ``active`` specialists' (default: the last call's average)."""
        per = model_flops_per_frame(self.specialists[0]) if len(self.specialists) else 0
        return int(model_flops_per_frame(self.generalist) + (self.active_count if active is None else active) * per)
