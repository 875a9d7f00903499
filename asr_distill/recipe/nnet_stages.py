"""Stages 4-5: DNN teachers trained on the GMM's frame labels, then every teacher and their ensemble scored."""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..decode.scorer import Scorer
from ..experiment import Experiment
from ..nnet import parallel
from ..nnet.checkpoint import load_model
from ..nnet.inference import ensemble_log_posteriors, log_posteriors
from ..nnet.models import build_model, count_parameters
from ..nnet.stream import open_frames
from ..nnet.train import TrainConfig, train_model
from ..utils import read_json, write_json

__all__ = ["stage_teachers", "stage_evaluate", "model_config"]

log = logging.getLogger(__name__)


def model_config(arch: str, exp: Experiment, left: int, right: int, hidden_dim: int, num_layers: int,
                 dropout: float) -> dict:
    return dict(arch=arch, input_dim=40, context=left + 1 + right, num_pdfs=exp.num_pdfs(), hidden_dim=hidden_dim,
                num_layers=num_layers, dropout=dropout)


def stage_teachers(exp: Experiment, num_teachers: int = 4, archs: Sequence[str] = ("mlp",), left: int = 5,
                   right: int = 5, hidden_dim: int = 512, num_layers: int = 4, dropout: float = 0.0,
                   device: str = "cpu", train_config: Optional[dict] = None, frames: str = "auto") -> dict:
    """Stage 4: K teachers trained with cross-entropy on the GMM alignments, differing in seed (and architecture
    when ``archs`` lists several, cycled).  Each is resumable (``EXP/teachers/teacher<k>/checkpoint.pt``).
    ``frames``: ``resident``, ``stream`` or ``auto`` (:func:`asr_distill.nnet.stream.open_frames`).

    Under ``torchrun`` every rank trains every teacher on its own shard of the training utterances (data
    parallel, :func:`~asr_distill.nnet.train.train_model`); rank 0 writes the files."""
    dev = parallel.resolve_device(device)
    train, _ = open_frames(exp.frame_source("train"), left, right, dev, shard=parallel.current_shard(), mode=frames)
    dev_set, _ = open_frames(exp.frame_source("dev"), left, right, dev, mode=frames)
    for k in range(num_teachers):
        out = exp.teacher_dir(k)
        done = (out / "summary.json").exists() and read_json(out / "summary.json").get("finished")
        if parallel.broadcast_object(done):  # rank 0's view: every rank must skip (or train) the same teachers
            log.info("teacher %d already trained", k)
            continue
        cfg = TrainConfig(**{**(train_config or {}), "seed": k})
        torch.manual_seed(k)
        model = build_model(model_config(archs[k % len(archs)], exp, left, right, hidden_dim, num_layers, dropout))
        train_model(model, train, dev_set, cfg, out)
    if parallel.is_main():
        write_json({"num_teachers": num_teachers, "left": left, "right": right}, exp.teachers_meta_path)
    parallel.barrier()
    return {"num_teachers": num_teachers}


def stage_evaluate(exp: Experiment, jobs: int = 2, device: str = "cpu",
                   means: Sequence[str] = ("arithmetic", "geometric"), frames: str = "auto",
                   scorer_options: Optional[dict] = None) -> dict:
    """Stage 5: decode and score every teacher and the ensemble (both averages).  ``scorer_options``: the
    :class:`~asr_distill.decode.scorer.Scorer`'s (e.g. a smaller dev grid: ``scales``, ``penalties``)."""
    meta = exp.teachers_meta()
    dev = parallel.resolve_device(device)
    sets = {s: open_frames(exp.frame_source(s), meta["left"], meta["right"], dev, mode=frames)[0]
            for s in ("dev", "test")}
    scorer = Scorer(exp, jobs, **(scorer_options or {}))
    members, rows, total_params = [], [], 0
    for k, path in enumerate(exp.teacher_paths()):
        model = load_model(path, dev)
        post: Dict[str, Dict[str, np.ndarray]] = {s: log_posteriors(model, fs) for s, fs in sets.items()}
        members.append(post)
        total_params += count_parameters(model)
        rows.append(scorer.evaluate_posteriors(f"teacher{k}", "teacher", post, count_parameters(model),
                                               {"arch": model.config["arch"]}))
    for mean in means:
        ens = {s: ensemble_log_posteriors([m[s] for m in members], mean) for s in ("dev", "test")}
        rows.append(scorer.evaluate_posteriors(f"ensemble-{mean}", "ensemble", ens, total_params,
                                               {"members": len(members), "mean": mean}))
    teacher_rows = [r for r in rows if r["kind"] == "teacher"]
    summary = {"teacher_mean_wer": float(np.mean([r["wer"] for r in teacher_rows])),
               "teacher_mean_frame_acc": float(np.mean([r["frame_acc"] for r in teacher_rows]))}
    write_json({"rows": rows, **summary}, exp.dir / "decode" / "stage5_summary.json")
    return summary
