"""Data-parallel training under ``torchrun`` (one process per GPU, or several CPU processes with gloo).

Everything here is a no-op in a single process (``WORLD_SIZE`` unset or 1), so the training code calls these
helpers unconditionally and a 1-process run behaves exactly as before.

* :func:`init_distributed` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (``env://``), picks NCCL for
  CUDA and gloo for the CPU, and binds the process to GPU ``LOCAL_RANK``.
* :func:`average_gradients` is the whole of the data parallelism: after ``backward`` every rank holds the gradient
  of ITS batch; one all-reduce per parameter dtype (the gradients flattened into one buffer) replaces it with the
  frame-weighted mean over all ranks' batches, i.e. the gradient of the global batch.
* :func:`shard_utterances` splits a set into per-rank utterance shards of about equal frame counts.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["init_distributed", "shutdown", "is_distributed", "solo", "rank", "world_size", "local_rank", "is_main",
           "barrier", "average_gradients", "broadcast_module", "broadcast_object", "all_reduce",
           "shard_utterances", "shard_frame_index", "device_for", "resolve_device", "current_shard"]

log = logging.getLogger(__name__)

# Other ranks wait in a collective while rank 0 alone decodes a trained system (minutes at full scale), so the
# default collective timeout (10-30 min) is too short for the pipeline; a dead peer is still detected by torchrun.
DEFAULT_TIMEOUT = datetime.timedelta(hours=2)


def init_distributed(device: str = "cpu", timeout: Optional[datetime.timedelta] = None) -> bool:
    """Join torchrun's process group; returns whether this is a multi-process run.

    No-op (returns False) when ``WORLD_SIZE`` is unset or 1, or when the group is already initialised (then True
    iff it has several ranks).  ``device="cuda"`` selects NCCL and GPU ``LOCAL_RANK``; anything else gloo."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: launch with torchrun")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout or DEFAULT_TIMEOUT)
    log.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


# Inside solo(): this process acts alone (every helper here a 1-process no-op) although the group exists.
_solo = False


def is_distributed() -> bool:
    return not _solo and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Within the block this rank trains on its own, as a 1-process run (its own checkpoints, no collectives):
    for models that ranks share out instead of training together (one specialist per rank)."""
    global _solo
    before, _solo = _solo, True
    try:
        yield
    finally:
        _solo = before


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the only process that writes checkpoints, results and markers, and decodes."""
    return rank() == 0


def device_for(name: str) -> torch.device:
    """``torch.device(name)``, with CUDA pinned to this process's GPU (``LOCAL_RANK``) under torchrun."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def resolve_device(name: str) -> torch.device:
    """:func:`device_for`, refusing ``cuda`` where torch sees no CUDA device."""
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return device_for(name)


def current_shard() -> Optional[Tuple[int, int]]:
    """``(rank, world)`` under torchrun, else None (the whole set)."""
    return (rank(), world_size()) if is_distributed() else None


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce(values: Sequence[float], op: str = "sum", device: Optional[torch.device] = None) -> List[float]:
    """Element-wise sum / min / max of a few numbers over the ranks (float64; identical result on every rank)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device or _comm_device())
    dist.all_reduce(t, {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled: for small things such as decisions and checkpoints)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Overwrite every rank's parameters and buffers with rank ``src``'s (so that all ranks start identical)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter], weight: float = 1.0) -> None:
    """Replace each parameter's ``.grad`` by the ``weight``-weighted mean of the ranks' gradients, in place.

    With ``weight`` = the number of frames in this rank's batch and a batch-mean loss, the result is exactly the
    gradient of the batch-mean loss over the union of the ranks' batches (a rank whose last batch is short counts
    for its frames, not for a full batch).  One all-reduce per dtype: the gradients are flattened into one buffer
    with the weight appended, so the weights' sum travels in the same collective.  A parameter without a gradient
    on this rank contributes zeros (every rank must send buffers of the same layout)."""
    if not is_distributed():
        return
    groups: Dict[Tuple[torch.dtype, torch.device], List[nn.Parameter]] = {}
    for p in params:
        if p.requires_grad:
            groups.setdefault((p.dtype, p.device), []).append(p)
    for (dtype, device), ps in groups.items():
        # fp32 master weights in this project; a bf16/fp16 group would carry its weight rounded to 8-11 bits
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
                         + [torch.ones(1, dtype=dtype, device=device)])
        flat.mul_(weight)
        dist.all_reduce(flat)
        flat[:-1].div_(flat[-1])
        offset = 0
        for p in ps:
            chunk = flat[offset:offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)
            offset += p.numel()


def shard_utterances(lengths: Sequence[int], rank: int, world: int) -> np.ndarray:
    """Indices (ascending) of the utterances that rank ``rank`` of ``world`` trains on.

    Longest utterance first, each to the rank with the fewest frames so far (ties: the lower rank): every
    utterance goes to exactly one rank, the frame counts differ by at most one utterance's length, and the split
    depends only on ``lengths`` and ``world`` (every rank computes the same one without communicating).
    Utterance-level, not frame-level, so that every rank has whole utterances for its context windows."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) < world:
        raise ValueError(f"{len(lengths)} utterance(s) cannot be split over {world} processes")
    order = np.argsort(-lengths, kind="stable")
    load = np.zeros(world, dtype=np.int64)
    owner = np.empty(len(lengths), dtype=np.int64)
    for u in order:
        r = int(np.argmin(load))  # argmin returns the first minimum: the lowest rank on ties
        owner[u] = r
        load[r] += lengths[u]
    return np.flatnonzero(owner == rank)


def shard_frame_index(lengths: Sequence[int], utterances: Sequence[int]) -> np.ndarray:
    """Frame indices, in the set of all utterances, of the frames of ``utterances`` (in that order): the rows of a
    full-set per-frame table (a top-k cache) that a shard's FrameSet indexes by its own frame positions."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    parts = [np.arange(offsets[u], offsets[u + 1]) for u in utterances]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _comm_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
