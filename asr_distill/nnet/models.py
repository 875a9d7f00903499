"""Frame-level acoustic models: the paper's MLP and a TDNN, both mapping spliced fbank context to pdf logits.

Both take ``(batch, context, feat_dim)`` input (``context = left + 1 + right`` frames, the centre frame being the
one classified) and return ``(batch, num_pdfs)`` logits.  A model is fully described by its ``config`` dict, which
is what checkpoints store, so :func:`build_model` can re-create it without pickled code.

An MLP may be given its own split of the context (``left``, ``right``, e.g. a streaming student with little right
context); a model without one is symmetric or takes the experiment's split (the teachers').  Trained on windows of
the experiment's wider context, such a model sees only its own frames of them: :func:`fit_windows`.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

__all__ = ["MLP", "TDNN", "build_model", "count_parameters", "model_flops_per_frame", "own_context", "fit_windows"]


class MLP(nn.Module):
    """``num_layers`` x ``hidden_dim`` ReLU layers over the flattened context window (Hinton et al. 2015)."""

    def __init__(self, input_dim: int, context: int, num_pdfs: int, hidden_dim: int = 512, num_layers: int = 4,
                 dropout: float = 0.0, left: Optional[int] = None, right: Optional[int] = None):
        super().__init__()
        self.config = dict(arch="mlp", input_dim=input_dim, context=context, num_pdfs=num_pdfs,
                           hidden_dim=hidden_dim, num_layers=num_layers, dropout=dropout)
        if left is not None or right is not None:  # stored only when given: older configs stay as they were
            if left is None or right is None or left < 0 or right < 0 or left + 1 + right != context:
                raise ValueError(f"left {left} + 1 + right {right} must be the context {context}")
            self.config.update(left=int(left), right=int(right))
        layers: list[nn.Module] = []
        dim = input_dim * context
        for _ in range(num_layers):
            layers += [nn.Linear(dim, hidden_dim), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = hidden_dim
        layers.append(nn.Linear(dim, num_pdfs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class TDNN(nn.Module):
    """Dilated 1-D convolutions over the context window (Peddinti et al. 2015 style), then a linear output.

    The dilations are chosen so that the receptive field covers the whole window; the last conv layer collapses the
    remaining time axis, so the output describes the centre frame.
    """

    def __init__(self, input_dim: int, context: int, num_pdfs: int, hidden_dim: int = 512, num_layers: int = 4,
                 dropout: float = 0.0, kernel_size: int = 3):
        super().__init__()
        self.config = dict(arch="tdnn", input_dim=input_dim, context=context, num_pdfs=num_pdfs,
                           hidden_dim=hidden_dim, num_layers=num_layers, dropout=dropout, kernel_size=kernel_size)
        layers: list[nn.Module] = []
        dim, remaining = input_dim, context
        for i in range(num_layers):
            last = i == num_layers - 1
            dilation = 1 if last else max(1, min(2 ** i, (remaining - 1) // (kernel_size - 1)))
            k = remaining if last else kernel_size
            if not last and remaining - dilation * (kernel_size - 1) < 1:
                k, dilation = 1, 1
            layers += [nn.Conv1d(dim, hidden_dim, k, dilation=dilation), nn.BatchNorm1d(hidden_dim), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            remaining -= dilation * (k - 1)
            dim = hidden_dim
        assert remaining == 1, "receptive field must cover the context window exactly"
        self.net = nn.Sequential(*layers)
        self.output = nn.Linear(hidden_dim, num_pdfs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.net(x.transpose(1, 2)).squeeze(-1))


def build_model(config: Dict[str, Any]) -> nn.Module:
    """Re-create a model from its ``config`` dict (as stored in checkpoints)."""
    config = dict(config)
    arch = config.pop("arch")
    if arch == "mlp":
        return MLP(**config)
    if arch == "tdnn":
        return TDNN(**config)
    raise ValueError(f"unknown model architecture {arch!r} (expected 'mlp' or 'tdnn')")


def own_context(config: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """The model's own (left, right) split of its context, or None when it has none (symmetric or the
    experiment's)."""
    return (int(config["left"]), int(config["right"])) if "left" in config else None


def fit_windows(model: nn.Module, left: int, right: int) -> nn.Module:
    """Let ``model`` take windows of ``left + 1 + right`` frames (the experiment's: what the frame sets and the
    teachers use) when its own context is a narrower split of them: a forward pre-hook keeps its frames only.
    Returns ``model`` (unchanged when the windows are already its own).  Checkpoints are unaffected: the hook is not
    state, so a loaded model needs this call again."""
    split = own_context(model.config)
    if split is None or split == (left, right):
        return model
    own_left, own_right = split
    if own_left > left or own_right > right:
        raise ValueError(f"the model's context (left {own_left}, right {own_right}) is wider than the windows' "
                         f"(left {left}, right {right})")
    start, stop = left - own_left, left + 1 + own_right

    def crop(_module, args):
        return (args[0][:, start:stop],) + tuple(args[1:])

    model.register_forward_pre_hook(crop)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_flops_per_frame(model: nn.Module) -> int:
    """Forward multiply-add FLOPs (2 per MAC) of one frame: weights of Linear layers, and of convolutions times the
    number of output positions."""
    flops = 0
    if isinstance(model, MLP):
        for m in model.modules():
            if isinstance(m, nn.Linear):
                flops += 2 * m.in_features * m.out_features
        return flops
    cfg = model.config
    t = cfg["context"]
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            t = t - m.dilation[0] * (m.kernel_size[0] - 1)
            flops += 2 * m.in_channels * m.out_channels * m.kernel_size[0] * t
        elif isinstance(m, nn.Linear):
            flops += 2 * m.in_features * m.out_features
    return flops
