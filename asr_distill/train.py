"""Frame-level training of acoustic models on GMM alignments, with model selection on DEV frame accuracy only.

One loop serves the hard-label teachers/baselines (cross-entropy: ``alpha = 0``) and the distilled students: the
step itself is :class:`asr_distill.distill.DistillStep` either way.

Reproducible and resumable: the frame order of epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone, and
the global RNG (dropout) is re-seeded from them at the start of every epoch, so a run interrupted after any epoch
and resumed with ``resume=True`` ends with the same weights as an uninterrupted one.  The checkpoint
(``checkpoint.pt``: model, optimizer, scheduler, best model, history) is written atomically after every epoch and
loaded with ``weights_only=True``.

Data-parallel under ``torchrun`` (:mod:`asr_distill.parallel`): each rank gets ``train`` = its own utterance
shard and the same ``dev``; the per-rank batch is ``batch_size // world`` so that the global batch is the
1-process batch, every rank runs the same number of steps per epoch (the smallest shard's count, so no rank waits
in a collective another never enters), gradients are averaged across ranks every step, dev metrics are summed over
the ranks' parts of ``dev`` (identical on every rank, hence identical early-stopping and best-epoch decisions), and
only rank 0 writes files.
"""
from __future__ import annotations

import csv
import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import parallel
from .frames import FrameSet
from .models import build_model, count_parameters
from .utils import Pathlike, atomic_path, atomic_torch_save, write_json

__all__ = ["TrainConfig", "train_model", "frame_accuracy", "log_posteriors", "load_model", "save_model"]

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
    noise_std: float = 0.0  # input augmentation (asr_distill.augment.WindowAugment); 0 = off
    freq_mask: int = 0


# Fields added after checkpoints existed: left out of a run's recorded config while at their default, so that
# older checkpoints still resume (their config has no such key).
_OPTIONAL_FIELDS = {"noise_std": 0.0, "freq_mask": 0}


def frame_accuracy(model: nn.Module, frames: FrameSet, batch_size: int = 8192) -> Tuple[float, float]:
    """(accuracy in percent, mean cross-entropy) of ``model`` on every labelled frame of ``frames``."""
    correct, loss, n = _frame_sums(model, frames, batch_size)
    return 100.0 * correct / max(1, n), loss / max(1, n)


def _dev_metrics(model: nn.Module, frames: FrameSet, batch_size: int) -> Tuple[float, float]:
    """:func:`frame_accuracy`, each rank scoring every ``world``-th batch; the sums are all-reduced, so every rank
    gets the same numbers (and so takes the same early-stopping and best-epoch decisions)."""
    sums = _frame_sums(model, frames, batch_size, parallel.rank(), parallel.world_size())
    correct, loss, n = parallel.all_reduce(sums, "sum")
    return 100.0 * correct / max(1, n), loss / max(1, n)


@torch.no_grad()
def _frame_sums(model: nn.Module, frames: FrameSet, batch_size: int, part: int = 0,
                parts: int = 1) -> Tuple[int, float, int]:
    """(correct, summed cross-entropy, frames) over the batches ``part``, ``part + parts``, ... of ``frames``."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for b, idx in enumerate(frames.sequential_batches(batch_size)):
        if b % parts != part:
            continue
        x, y = frames.batch(idx)
        logits = model(x).float()  # fp32: these numbers are reported and become decoder log-likelihoods
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
    model.train(was_training)
    return correct, loss, n


@torch.no_grad()
def log_posteriors(model: nn.Module, frames: FrameSet, batch_size: int = 8192) -> Dict[str, np.ndarray]:
    """Per-utterance (frames, num_pdfs) log-softmax outputs."""
    model.eval()
    out = []
    for idx in frames.sequential_batches(batch_size):
        # fp32, not bf16 autocast: bf16 logits (3 significant digits) would add noise to the log-likelihoods
        out.append(torch.log_softmax(model(frames.windows(idx)).float(), -1).cpu())
    allp = torch.cat(out).numpy()
    offs = frames.offsets.tolist()
    return {u: allp[offs[i]:offs[i + 1]] for i, u in enumerate(frames.utt_ids)}


def save_model(model: nn.Module, path: Pathlike, extra: Optional[dict] = None) -> None:
    """Weights + architecture config (plain types), loadable with ``weights_only=True``."""
    atomic_torch_save({"config": dict(model.config), "state_dict": model.state_dict(), **(extra or {})}, path)


def load_model(path: Pathlike, map_location="cpu") -> nn.Module:
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: not a readable asr-distill model checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise RuntimeError(f"{path}: checkpoint lacks 'config'/'state_dict'")
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location)


def _lr_lambda(config: TrainConfig, steps_per_epoch: int):
    warm = max(1, int(config.warmup_epochs * steps_per_epoch))
    total = max(warm + 1, config.epochs * steps_per_epoch)

    def f(step: int) -> float:  # linear warm-up, then cosine decay to 5% of the peak
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / (total - warm))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _subset(frames: FrameSet, fraction: float, seed: int) -> Optional[torch.Tensor]:
    if fraction >= 1.0:
        return None
    g = torch.Generator().manual_seed(10_000 + seed)
    n = max(1, int(round(fraction * frames.num_frames)))
    return torch.randperm(frames.num_frames, generator=g)[:n].sort().values


def train_model(model: nn.Module, train: FrameSet, dev: FrameSet, config: TrainConfig, out_dir: Pathlike,
                teachers: Optional[Sequence[nn.Module]] = None, cache=None, T: float = 1.0, alpha: float = 0.0,
                mean: str = "arithmetic", resume: bool = True, stop_after_epochs: Optional[int] = None,
                progress: bool = True, cuda_graph: bool = True) -> Dict:
    """Train ``model`` on ``train`` frames; keep the epoch with the best DEV frame accuracy in ``out_dir/best.pt``.

    ``alpha = 0`` is plain cross-entropy on the alignment labels (teachers, baselines); ``alpha > 0`` distils from
    ``teachers`` (evaluated on the fly) or a top-k ``cache`` at temperature ``T`` (:class:`~asr_distill.distill.
    DistillStep` does the step either way).  Returns a summary dict (also ``out_dir/summary.json``).
    ``stop_after_epochs`` ends the run early as an interruption would (for tests and for splitting long runs).

    Under ``torchrun`` (process group initialised, see :mod:`asr_distill.parallel`) ``train`` is this rank's shard
    and every rank must call this with the same arguments otherwise; only rank 0 writes ``out_dir``.  Live
    ``teachers`` work as they are; a ``cache`` must hold the rows of this rank's shard (``cache.lookup`` is indexed
    by the shard's own frame positions).
    """
    from tqdm import tqdm

    from .augment import WindowAugment
    from .distill import DistillStep

    out_dir = Path(out_dir)
    main, world = parallel.is_main(), parallel.world_size()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = train.device
    model.to(device)
    batch_size = config.batch_size // world  # per rank: the global batch stays config.batch_size
    if batch_size < 1:
        raise ValueError(f"batch size {config.batch_size} is smaller than the {world} processes")
    if batch_size * world != config.batch_size and main:
        log.warning("batch size %d is not a multiple of %d processes: the global batch is %d", config.batch_size,
                    world, batch_size * world)
    subset = _subset(train, config.frame_subset, config.seed)  # under DDP: that fraction of each rank's shard
    n_local = train.num_frames if subset is None else len(subset)
    local_steps = math.ceil(n_local / batch_size)
    n_train = int(parallel.all_reduce([n_local], "sum")[0])
    steps_per_epoch = int(parallel.all_reduce([local_steps], "min")[0])
    if local_steps > steps_per_epoch:
        log.debug("rank %d: %d of its %d batches per epoch are left out to keep the ranks in step",
                  parallel.rank(), local_steps - steps_per_epoch, local_steps)
    lr_at = _lr_lambda(config, steps_per_epoch)
    augment = WindowAugment(config.noise_std, config.freq_mask)
    # CUDA graphs off under DDP: the per-step all-reduce cannot live inside a captured graph (see DistillStep).
    stepper = DistillStep(model, teachers if alpha > 0 else None, cache=cache if alpha > 0 else None, frames=train,
                          T=T, alpha=alpha, mean=mean, lr=config.lr, weight_decay=config.weight_decay,
                          cuda_graph=cuda_graph and device.type == "cuda" and world == 1,
                          grad_sync=parallel.average_gradients if world > 1 else None,
                          augment=augment if augment.active else None)
    ckpt_path = out_dir / "checkpoint.pt"
    history: List[dict] = []
    best = {"dev_acc": -1.0, "epoch": -1}
    start_epoch = 0
    run_config = {**{k: v for k, v in asdict(config).items() if _OPTIONAL_FIELDS.get(k, object()) != v},
                  "T": T, "alpha": alpha, "mean": mean}
    # Rank 0 reads the checkpoint and sends it to the others: one view of "is there one" and of its contents.
    ckpt = None
    if resume and main and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu" if world > 1 else device, weights_only=True)
    ckpt = parallel.broadcast_object(ckpt)
    if ckpt is not None:
        if ckpt.get("train_config") != run_config:
            raise RuntimeError(f"{ckpt_path} was written with a different training config; remove it or pass "
                               f"the same options (was {ckpt.get('train_config')}, now {run_config})")
        model.load_state_dict(ckpt["model"])
        stepper.optimizer.load_state_dict(ckpt["optimizer"])
        history, best, start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
        if main:
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
        # Per-rank streams (rank 0 draws a 1-process run's): same-seeded permutations of the ranks' near-equal
        # shards would pick the same positions in each, and the same dropout masks.
        epoch_seed = config.seed * 1000 + epoch + 7919 * parallel.rank()
        torch.manual_seed(epoch_seed)
        gen = torch.Generator().manual_seed(epoch_seed)
        t0 = time.time()
        losses = []
        batches = itertools.islice(train.shuffled_batches(batch_size, gen, subset), steps_per_epoch)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"{out_dir.name} epoch {epoch + 1}/{config.epochs}",
                   disable=not (progress and main), leave=False)
        for i, idx in enumerate(bar):
            stepper.set_lr(config.lr * lr_at(epoch * steps_per_epoch + i))
            losses.append(stepper.step(idx))  # a device tensor: no host sync per step
            if i % 100 == 99:
                bar.set_postfix(loss=f"{float(torch.stack(losses[-100:]).mean()):.3f}")
        train_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        train_loss = parallel.all_reduce([train_loss], "sum")[0] / world  # every rank ran steps_per_epoch steps
        dev_acc, dev_loss = _dev_metrics(model, dev, config.eval_batch_size)
        row = {"epoch": epoch + 1, "lr": config.lr * lr_at((epoch + 1) * steps_per_epoch - 1),
               "train_loss": train_loss, "dev_loss": dev_loss, "dev_acc": dev_acc, "seconds": round(time.time() - t0, 1)}
        history.append(row)
        improved = dev_acc > best["dev_acc"]
        if improved:
            best = {"dev_acc": dev_acc, "epoch": epoch}
            if main:
                save_model(model, out_dir / "best.pt", {"dev_acc": dev_acc, "epoch": epoch + 1})
        if not main:
            continue
        log.info("%s epoch %d: train loss %.4f, dev CE %.4f, dev frame acc %.2f%%%s (%.0f s)", out_dir.name,
                 epoch + 1, train_loss, dev_loss, dev_acc, " *" if improved else "", row["seconds"])
        atomic_torch_save({"model": model.state_dict(), "optimizer": stepper.optimizer.state_dict(),
                           "history": history, "best": best, "epoch": epoch, "train_config": run_config}, ckpt_path)
        _write_csv(history, out_dir / "log.csv")
    summary = {"best_epoch": best["epoch"] + 1, "best_dev_acc": best["dev_acc"], "epochs_run": len(history),
               "params": count_parameters(model), "train_frames": n_train, "finished": stop_after_epochs is None}
    if main:
        write_json(summary, out_dir / "summary.json")
    parallel.barrier()  # rank 0's files are complete before any rank goes on (and reads best.pt)
    return summary


def _write_csv(history: List[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[0]))
            w.writeheader()
            w.writerows(history)
