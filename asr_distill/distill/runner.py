"""What stage 6 trains and scores: every system of the paper's experiments shares the training frames, the
teachers, their recipe and the scorer.

Under ``torchrun`` every rank holds its shard of the training frames and trains every system with the others (data
parallel); only rank 0 (``main``) holds the test frames and the scorer, and scores and decodes: on the other ranks
:meth:`DistillRunner.decode` and :meth:`DistillRunner.frame_acc` return NaN placeholders, which are never written.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import fields
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..decode.scorer import Scorer
from ..experiment import Experiment
from ..nnet import parallel
from ..nnet.checkpoint import CheckpointError, load_model
from ..nnet.frame_data import load_topk_targets
from ..nnet.frames import FrameSet
from ..nnet.inference import frame_accuracy, log_posteriors
from ..nnet.models import build_model, count_parameters, fit_windows
from ..nnet.step import CrossEntropyLoss
from ..nnet.stream import open_frames
from ..nnet.train import TrainConfig, train_model
from ..utils import read_json
from .loss import DistillationLoss
from .teachers import StackedTeachers
from .topk import TopKCache, write_topk_cuts

__all__ = ["DistillRunner"]

log = logging.getLogger(__name__)


class DistillRunner:
    """See the module docstring.  ``frames``: the frame path (``auto``, ``resident``, ``stream``);
    ``scorer_options``: the :class:`~asr_distill.decode.scorer.Scorer`'s."""

    def __init__(self, exp: Experiment, device: str, jobs: int, train_config: Optional[dict] = None,
                 mean: str = "arithmetic", frames: str = "auto", scorer_options: Optional[dict] = None,
                 teacher_mode: str = "auto", transfer: bool = False):
        meta = exp.teachers_meta()
        self.teacher_mode = teacher_mode
        self.exp, self.mean, self.frame_mode = exp, mean, frames
        self.main = parallel.is_main()
        self.shard = parallel.current_shard()
        self.device = parallel.resolve_device(device)
        self.left, self.right = meta["left"], meta["right"]
        self.frames = {"train": self._open("train", shard=self.shard)[0], "dev": self._open("dev")[0]}
        if self.main:
            self.frames["test"] = self._open("test")[0]
        # live-teacher students also learn from the transfer set (EXP/transfer, labelled -1): its frames follow
        # the training frames in one set; the hard-label systems never see them
        self.student_frames, self.transfer_frames = self.frames["train"], 0
        if transfer:
            if not isinstance(self.frames["train"], FrameSet):
                raise ValueError("--transfer-data needs the training frames resident (--frames resident)")
            extra = open_frames(exp.frame_source("transfer"), self.left, self.right, self.device, self.shard,
                                mode="resident")[0]
            self.student_frames = FrameSet.concat([self.frames["train"], extra])
            self.transfer_frames = int(parallel.all_reduce([float(extra.num_frames)], "sum")[0])
        self.teachers = [load_model(p, self.device).eval() for p in exp.teacher_paths()]
        self.teacher_config = dict(self.teachers[0].config)
        # train like the teachers unless told otherwise (the paper's baseline is "trained like a teacher")
        inherited = read_json(exp.teacher_dir(0) / "config.json")["train"]
        keep = {f.name for f in fields(TrainConfig)} - {"seed", "frame_subset"}
        self.train_config = {**{k: v for k, v in inherited.items() if k in keep}, **(train_config or {})}
        self.scorer = Scorer(exp, jobs, **(scorer_options or {})) if self.main else None
        ensemble = read_json(exp.decode_dir(f"ensemble-{mean}") / "wer.json")
        self.ensemble_acc, self.ensemble_wer = ensemble["frame_acc"], ensemble["wer"]
        self.ensemble_dev_acc = ensemble.get("dev_frame_acc", float("nan"))
        self.ensemble_dev_wer = ensemble.get("dev_wer", float("nan"))

    def transfer_info(self) -> dict:
        """What a live-teacher student's row says of the transfer set it also learnt from (nothing without one)."""
        return {"transfer_frames": self.transfer_frames} if self.transfer_frames else {}

    def whole_train(self):
        """The whole training set's frames: this rank's shard is not enough under torchrun (the top-k cache and
        the specialists cover every utterance)."""
        return self.frames["train"] if self.shard is None else self._open("train")[0]

    def _open(self, split: str, shard=None, topk_manifest=None):
        return open_frames(self.exp.frame_source(split, topk_manifest), self.left, self.right, self.device, shard,
                           mode=self.frame_mode)

    def train(self, name: str, config: dict, T: float = 1.0, alpha: float = 0.0, cache: Optional[Tuple] = None,
              seed: int = 100, reuse: Optional[str] = None, **train_overrides) -> Tuple[nn.Module, dict]:
        """Train system ``name`` (``EXP/distill/<name>``): hard labels (``alpha = 0``), live teachers, or the top-k
        ``cache`` returned by :meth:`topk_cache`; returns (its best model, the training summary).  ``reuse``: a
        finished system that may be this very training under another name (``select``'s run of the chosen
        candidate is table 1's first seed): it is copied and taken when its training config and seed are the same,
        and otherwise this one trains from the start."""
        if reuse is not None and self._adopt(name, reuse):
            try:
                return self._train(name, config, T, alpha, cache, seed, **train_overrides)
            except CheckpointError as e:  # another config or seed: not the same training after all
                log.info("%s: not reused for %s (%s)", reuse, name, str(e).split(";")[0])
                if self.main:
                    shutil.rmtree(self.exp.system_dir(name))
                parallel.barrier()
        return self._train(name, config, T, alpha, cache, seed, **train_overrides)

    def _adopt(self, name: str, source: str) -> bool:
        """Copy the finished system ``source`` to ``name`` when ``name`` has no directory yet (rank 0 copies, every
        rank gets the answer)."""
        done = False
        if self.main:
            src, dst = self.exp.system_dir(source), self.exp.system_dir(name)
            summary = src / "summary.json"
            if not dst.exists() and summary.exists() and read_json(summary).get("finished") and \
                    (src / "checkpoint.pt").exists():
                tmp = dst.with_name(dst.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(src, tmp)
                tmp.rename(dst)
                log.info("%s: starting from %s (the same training, if its config and seed agree)", name, source)
                done = True
        return bool(parallel.broadcast_object(done))

    def _train(self, name: str, config: dict, T: float, alpha: float, cache: Optional[Tuple], seed: int,
               **train_overrides) -> Tuple[nn.Module, dict]:
        out = self.exp.system_dir(name)
        torch.manual_seed(seed)
        model = fit_windows(build_model(config), self.left, self.right)  # a student of narrower context
        cfg = TrainConfig(**{**self.train_config, "seed": seed, **train_overrides})
        train = self.frames["train"]
        if alpha == 0:  # hard labels: the baselines, the hard-label controls
            loss = CrossEntropyLoss()
        elif cache is None:
            train = self.student_frames
            loss = DistillationLoss(self.teachers, T=T, alpha=alpha, mean=self.mean, teacher_mode=self.teacher_mode,
                                    unlabelled_frames=self.transfer_frames)
        else:
            if self.transfer_frames:
                raise ValueError("transfer data needs live teachers: the top-k cache covers the training set only "
                                 "(--teacher-source live)")
            train, targets = cache
            resident = isinstance(targets, TopKCache)
            loss = DistillationLoss(cache=targets if resident else None, streamed_targets=not resident, T=T,
                                    alpha=alpha, mean=self.mean)
        summary = train_model(model, train, self.frames["dev"], cfg, out, loss=loss)
        best = fit_windows(load_model(out / "best.pt", self.device), self.left, self.right) if self.main else model
        return best, summary

    def topk_cache(self, T: float, k: int) -> Tuple[Tuple, dict]:
        """The training frames with their top-k soft targets, stored once as fields of the training cuts
        (``EXP/distill/topk/``, rank 0 computes them for the WHOLE training set, the same files whatever the number
        of processes), and the stored settings.  Returns ``((frames, targets), meta)`` for :meth:`train`: the
        resident path's targets are a :class:`TopKCache` over this rank's frames, the streaming path's travel in
        the stream's batches (``targets`` is then None)."""
        manifest = self.exp.topk_manifest(T, k, self.mean)
        if self.main and not manifest.exists():
            full = self.whole_train()
            stack = StackedTeachers(self.teachers, device=self.device, mode=self.teacher_mode)
            write_topk_cuts(stack, full, self.exp.frame_source("train").cuts(), T, k, manifest.parent / "arrays",
                            manifest, mean=self.mean)
        parallel.barrier()
        source = self.exp.frame_source("train", manifest)
        train = self.frames["train"]
        if not isinstance(train, FrameSet):  # streaming: a stream over the cuts with targets carries them
            stream, _ = open_frames(source, self.left, self.right, self.device, self.shard, mode="stream")
            return (stream, None), source.topk_meta
        # resident: the frames already held, and only the targets read (same manifest order and shard)
        ids, (values, indices) = load_topk_targets(source, self.shard)
        if ids != train.utt_ids:
            raise ValueError(f"{manifest}: its utterances differ from the training frames'; remove it to recompute")
        return (train, TopKCache(values, indices, dict(source.topk_meta))), source.topk_meta

    def frame_acc(self, model: nn.Module, split: str = "test") -> float:
        if not self.main:
            return float("nan")
        return round(frame_accuracy(model, self.frames[split])[0], 2)

    def decode(self, name: str, kind: str, model: nn.Module, extra: Optional[dict] = None) -> dict:
        if not self.main:
            nan = float("nan")
            return {"name": name, "kind": kind, "params": count_parameters(model), "frame_acc": nan,
                    "dev_frame_acc": nan, "wer": nan, "dev_wer": nan, **(extra or {})}
        post: Dict[str, Dict] = {s: log_posteriors(model, self.frames[s]) for s in ("dev", "test")}
        return self.scorer.evaluate_posteriors(name, kind, post, count_parameters(model), extra)
