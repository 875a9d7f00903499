"""Checkpoints that hold only tensors and plain types, written atomically and loaded with ``weights_only=True``
(no pickled code is ever executed); a damaged file is named in the error, with what to do about it."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..utils import Pathlike, atomic_path
from .models import build_model

__all__ = ["CheckpointError", "atomic_torch_save", "save_model", "load_model", "load_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (truncated, not ours, or carrying pickled code)."""


def atomic_torch_save(obj: Any, path: Pathlike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Pathlike, map_location="cpu", what: str = "checkpoint") -> dict:
    """``torch.load(weights_only=True)`` of a dict, or :class:`CheckpointError` naming the file."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable asr-distill {what} ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); if it was cut "
                              f"short by an interrupted run, delete it and run again") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an asr-distill {what} (a {type(obj).__name__}, not a dict)")
    return obj


def save_model(model: nn.Module, path: Pathlike, extra: Optional[dict] = None) -> None:
    """Weights + architecture config (plain types), loadable with ``weights_only=True``."""
    atomic_torch_save({"config": dict(model.config), "state_dict": model.state_dict(), **(extra or {})}, path)


def load_model(path: Pathlike, map_location="cpu") -> nn.Module:
    ckpt = load_checkpoint(path, map_location, "model checkpoint")
    if "config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: checkpoint lacks 'config'/'state_dict'")
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location)
