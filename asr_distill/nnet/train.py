"""Frame-level training of acoustic models on GMM alignments, with model selection on DEV frame accuracy only.

One loop serves every model: the hard-label teachers and baselines (the default
:class:`~asr_distill.nnet.step.CrossEntropyLoss`) and the distilled students (a
:class:`~asr_distill.distill.DistillationLoss`); ``train`` and ``dev`` are resident FrameSets or FrameStreams.

Reproducible and resumable: the frame order of epoch ``e`` comes from ``seed`` and ``e`` alone, and the global RNG
(dropout, perturbation) is re-seeded from them at the start of every epoch, so a run interrupted after any epoch
and resumed ends with the same weights as an uninterrupted one.  The checkpoint (``checkpoint.pt``: model,
optimizer, best epoch, history) is written atomically after every epoch and loaded with ``weights_only=True``.

Data-parallel under ``torchrun`` (:mod:`asr_distill.nnet.parallel`): each rank gets ``train`` = its own utterance
shard and the same ``dev``; the per-rank batch is ``batch_size // world`` so that the global batch is the
1-process batch, every rank runs the same number of steps per epoch (the smallest shard's count, so no rank waits
in a collective another never enters), gradients are averaged across ranks every step, dev metrics are summed over
the ranks' parts of ``dev`` (so every rank takes the same early-stopping decisions), and only rank 0 writes files.
"""
from __future__ import annotations

import csv
import itertools
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..utils import Pathlike, atomic_path, write_json
from . import parallel
from .augment import WindowAugment
from .checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, save_model
from .frame_data import frame_subset_mask
from .frames import FrameSet
from .inference import frame_sums
from .models import count_parameters
from .step import CrossEntropyLoss, FrameLoss, TrainStep

__all__ = ["TrainConfig", "train_model", "train_one_epoch", "dev_metrics"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    patience: int = 4  # epochs without dev improvement before stopping
    seed: int = 0
    frame_subset: float = 1.0  # fraction of training frames used (the paper's 3% experiment)
    eval_batch_size: int = 8192
    noise_std: float = 0.0  # input augmentation (asr_distill.nnet.augment.WindowAugment); 0 = off
    freq_mask: int = 0


# Fields added after checkpoints existed: left out of a run's recorded config while at their default.
_OPTIONAL_FIELDS = {"noise_std": 0.0, "freq_mask": 0}


def _lr_lambda(config: TrainConfig, steps_per_epoch: int):
    warm = max(1, int(config.warmup_epochs * steps_per_epoch))
    total = max(warm + 1, config.epochs * steps_per_epoch)

    def f(step: int) -> float:  # linear warm-up, then cosine decay to 5% of the peak
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / (total - warm))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def dev_metrics(model: nn.Module, frames, batch_size: int) -> Tuple[float, float]:
    """(frame accuracy %, mean CE) on ``frames``, each rank scoring every ``world``-th batch; the sums are
    all-reduced, so every rank gets the same numbers (and takes the same early-stopping decisions)."""
    sums = frame_sums(model, frames, batch_size, parallel.rank(), parallel.world_size())
    correct, loss, n = parallel.all_reduce(sums, "sum")
    return 100.0 * correct / max(1, n), loss / max(1, n)


def _subset_keep(config: TrainConfig):
    if config.frame_subset >= 1.0:
        return None
    return lambda utt_index, n: frame_subset_mask(config.seed, utt_index, n, config.frame_subset)


def _epoch_plan(train, config: TrainConfig, keep) -> Tuple[int, int, int]:
    """(per-rank batch size, steps per epoch, training frames over all ranks)."""
    world = parallel.world_size()
    batch_size = config.batch_size // world  # per rank: the global batch stays config.batch_size
    if batch_size < 1:
        raise ValueError(f"batch size {config.batch_size} is smaller than the {world} processes")
    if batch_size * world != config.batch_size and parallel.is_main():
        log.warning("batch size %d is not a multiple of %d processes: the global batch is %d", config.batch_size,
                    world, batch_size * world)
    n_local = train.count_frames(keep)
    local_steps = math.ceil(n_local / batch_size)
    steps = int(parallel.all_reduce([local_steps], "min")[0])
    if local_steps > steps:
        log.debug("rank %d: %d of its %d batches per epoch are left out to keep the ranks in step",
                  parallel.rank(), local_steps - steps, local_steps)
    return batch_size, steps, int(parallel.all_reduce([n_local], "sum")[0])


def train_one_epoch(stepper: TrainStep, train, epoch: int, config: TrainConfig, batch_size: int, steps: int,
                    lr_at, keep=None, desc: str = "", progress: bool = True) -> float:
    """One pass over ``steps`` batches; returns the mean training loss over all ranks."""
    # Per-rank streams (rank 0 draws a 1-process run's): same-seeded permutations of the ranks' near-equal shards
    # would pick the same positions in each, and the same dropout masks.
    epoch_seed = config.seed * 1000 + epoch + 7919 * parallel.rank()
    torch.manual_seed(epoch_seed)
    gen = torch.Generator().manual_seed(epoch_seed)
    losses = []
    batches = itertools.islice(train.train_batches(batch_size, gen, keep), steps)
    bar = tqdm(batches, total=steps, desc=f"{desc} epoch {epoch + 1}/{config.epochs}",
               disable=not (progress and parallel.is_main()), leave=False)
    for i, batch in enumerate(bar):
        stepper.set_lr(config.lr * lr_at(epoch * steps + i))
        losses.append(stepper.step(**batch))  # a device tensor: no host sync per step
        if i % 100 == 99:
            bar.set_postfix(loss=f"{float(torch.stack(losses[-100:]).mean()):.3f}")
    bar.close()
    train_loss = float(torch.stack(losses).mean()) if losses else float("nan")
    return parallel.all_reduce([train_loss], "sum")[0] / parallel.world_size()  # every rank ran `steps` steps


def _resume(path: Path, run_config: dict, model: nn.Module, stepper: TrainStep, device) -> Optional[dict]:
    """Rank 0 reads the checkpoint and sends it to the others: one view of "is there one" and of its contents."""
    ckpt = None
    if parallel.is_main() and path.exists():
        try:
            ckpt = load_checkpoint(path, "cpu" if parallel.world_size() > 1 else device, "training checkpoint")
        except CheckpointError as e:  # damaged (a full disk, a copy cut short): keep it for inspection, start over
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            log.warning("%s -- moved aside to %s; this run starts from epoch 1", str(e).split(";")[0], aside)
    ckpt = parallel.broadcast_object(ckpt)
    if ckpt is None:
        return None
    if ckpt.get("train_config") != run_config:
        raise CheckpointError(f"{path} was written with a different training config; remove it or pass the same "
                              f"options (was {ckpt.get('train_config')}, now {run_config})")
    model.load_state_dict(ckpt["model"])
    stepper.optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt


def _write_csv(history: List[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[0]))
            w.writeheader()
            w.writerows(history)


def train_model(model: nn.Module, train, dev, config: TrainConfig, out_dir: Pathlike,
                loss: Optional[FrameLoss] = None, resume: bool = True, stop_after_epochs: Optional[int] = None,
                progress: bool = True, cuda_graph: bool = True,
                keep: Optional[Callable[[int, int], Optional[np.ndarray]]] = None) -> Dict:
    """Train ``model`` on ``train`` frames with ``loss`` (default: hard-label cross-entropy); keep the epoch with
    the best DEV frame accuracy in ``out_dir/best.pt``.  Returns a summary dict (also ``out_dir/summary.json``).
    ``stop_after_epochs`` ends the run early as an interruption would (for tests and for splitting long runs).
    ``keep(utt_index, num_frames)``: the frames to train on (a boolean mask per utterance, None = all), instead of
    ``config.frame_subset``'s random fraction (a specialist's balanced selection).

    Under ``torchrun`` ``train`` is this rank's shard and every rank must call this with the same arguments
    otherwise; only rank 0 writes ``out_dir``.  A resident top-k cache in ``loss`` must hold the rows of this
    rank's shard."""
    out_dir = Path(out_dir)
    main, world = parallel.is_main(), parallel.world_size()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    loss = loss if loss is not None else CrossEntropyLoss()
    device = train.device
    model.to(device)
    keep = keep if keep is not None else _subset_keep(config)  # under DDP: that fraction of each rank's shard
    batch_size, steps, n_train = _epoch_plan(train, config, keep)
    lr_at = _lr_lambda(config, steps)
    augment = WindowAugment(config.noise_std, config.freq_mask)
    # CUDA graphs off under DDP: the per-step all-reduce cannot live inside a captured graph (see TrainStep).
    stepper = TrainStep(model, loss, frames=train if isinstance(train, FrameSet) else None, lr=config.lr,
                        weight_decay=config.weight_decay, cuda_graph=cuda_graph and device.type == "cuda" and world == 1,
                        grad_sync=parallel.average_gradients if world > 1 else None,
                        augment=augment if augment.active else None)
    ckpt_path = out_dir / "checkpoint.pt"
    run_config = {**{k: v for k, v in asdict(config).items() if _OPTIONAL_FIELDS.get(k, object()) != v},
                  **loss.describe()}
    ckpt = _resume(ckpt_path, run_config, model, stepper, device) if resume else None
    history: List[dict] = ckpt["history"] if ckpt else []
    best = ckpt["best"] if ckpt else {"dev_acc": -1.0, "epoch": -1}
    start_epoch = ckpt["epoch"] + 1 if ckpt else 0
    if ckpt and main:
        log.info("resuming %s at epoch %d (best dev acc %.2f%% at epoch %d)", out_dir, start_epoch + 1,
                 best["dev_acc"], best["epoch"] + 1)
    parallel.broadcast_module(model)  # identical start on every rank (fresh initialisations differ per process)
    if main:
        write_json({"model": model.config, "train": run_config, "params": count_parameters(model),
                    "train_frames": n_train, "processes": world}, out_dir / "config.json")
    for epoch in range(start_epoch, config.epochs):
        if best["epoch"] >= 0 and epoch - best["epoch"] > config.patience:
            log.info("early stop: no dev improvement for %d epochs", config.patience)
            break
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            break
        t0 = time.time()
        train_loss = train_one_epoch(stepper, train, epoch, config, batch_size, steps, lr_at, keep, out_dir.name,
                                     progress)
        dev_acc, dev_loss = dev_metrics(model, dev, config.eval_batch_size)
        row = {"epoch": epoch + 1, "lr": config.lr * lr_at((epoch + 1) * steps - 1), "train_loss": train_loss,
               "dev_loss": dev_loss, "dev_acc": dev_acc, "seconds": round(time.time() - t0, 1)}
        history.append(row)
        improved = dev_acc > best["dev_acc"]
        if improved:
            best = {"dev_acc": dev_acc, "epoch": epoch}
            if main:
                save_model(model, out_dir / "best.pt", {"dev_acc": dev_acc, "epoch": epoch + 1})
        if main:
            log.info("%s epoch %d: train loss %.4f, dev CE %.4f, dev frame acc %.2f%%%s (%.0f s)", out_dir.name,
                     epoch + 1, train_loss, dev_loss, dev_acc, " *" if improved else "", row["seconds"])
            atomic_torch_save({"model": model.state_dict(), "optimizer": stepper.optimizer.state_dict(),
                               "history": history, "best": best, "epoch": epoch, "train_config": run_config},
                              ckpt_path)
            _write_csv(history, out_dir / "log.csv")
    summary = {"best_epoch": best["epoch"] + 1, "best_dev_acc": best["dev_acc"], "epochs_run": len(history),
               "params": count_parameters(model), "train_frames": n_train, "finished": stop_after_epochs is None}
    if main:
        write_json(summary, out_dir / "summary.json")
    parallel.barrier()  # rank 0's files are complete before any rank goes on (and reads best.pt)
    return summary
