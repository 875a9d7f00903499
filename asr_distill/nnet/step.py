"""One optimisation step of a frame classifier, for any frame-level loss: the hard-label cross-entropy of teachers
and baselines, and distillation (:class:`asr_distill.distill.DistillationLoss`) are two losses of one step.

``step(frame_index=..., x=..., y=..., topk=...)`` runs: the input perturbation (if any), the model's forward (bf16
autocast with fp32 master weights on CUDA, plain fp32 on the CPU), the loss, backward, an optional gradient
all-reduce (data parallelism) and clipping, and an AdamW update (``fused=True`` on CUDA).  It returns the loss as a
detached 0-dim tensor on the device: call ``.item()`` only when you need the number, every call is a host-device
synchronisation.

Inputs come in one of two ways.  From a device-resident :class:`~asr_distill.nnet.frames.FrameSet` given as
``frames=``: ``frame_index`` (the frames' index in it, on its device) is enough, and the windows and labels are
gathered inside the step (inside the CUDA graph if any).  From a stream (:mod:`asr_distill.nnet.stream`): the
windows ``x``, labels ``y`` and, for a top-k cache, the soft targets ``topk = (values, indices)`` are given.

``cuda_graph=True`` (CUDA only) captures the whole step (gather, perturbation, forward, loss, backward, optimizer)
as one CUDA graph on the first full batch and replays it for every batch of that size; other sizes (a last partial
batch) run eagerly on the same weights.  Capture needs a few warm-up steps; the weights and optimizer state are
restored after them, so the captured run trains exactly like the eager one.  With a graph, change the learning rate
only through :meth:`TrainStep.set_lr`; the loss's settings and the model structure are baked into the graph, and
an ``optimizer=`` passed in must be ``capturable=True``.

Data parallelism: ``grad_sync(params, batch_frames)`` is called after ``backward`` and before clipping and the
optimizer step (:func:`asr_distill.nnet.parallel.average_gradients`: the ranks' frame-weighted mean gradient).  A
hook rather than ``DistributedDataParallel``: the model stays a plain module (its ``config``, ``state_dict`` keys
and checkpoints are those of a 1-process run), and one flattened all-reduce per step is all these models need.

``augment`` (e.g. :class:`asr_distill.nnet.augment.WindowAugment`) perturbs every batch's windows before the loss
and the model see them, so live teachers label the perturbed input; it draws from the global RNG (inside a CUDA
graph too: each replay draws afresh).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .frames import FrameSet

__all__ = ["FrameLoss", "CrossEntropyLoss", "TrainStep"]

TopK = Tuple[torch.Tensor, torch.Tensor]


class FrameLoss:
    """A batch-mean loss over frames.  ``__call__(logits, x, y, frame_index, topk)`` gets the model's logits, the
    (perturbed) windows it saw, the hard labels, and what identifies the frames (their index in the resident
    FrameSet, or their streamed top-k targets)."""

    needs_labels = True  # whether the step must gather hard labels
    uses_frame_index = False  # whether the loss reads per-frame data by frame index (a resident top-k cache)

    def bind(self, device: torch.device) -> None:
        """Move what the loss holds (teachers, a cache) to the model's device."""

    def describe(self) -> Dict[str, Any]:
        """Plain settings that identify the loss in a run's recorded config."""
        raise NotImplementedError

    def check(self, frames: Optional[FrameSet], augment) -> None:
        """Refuse combinations that would train on wrong targets."""

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, y: Optional[torch.Tensor],
                 frame_index: Optional[torch.Tensor], topk: Optional[TopK]) -> torch.Tensor:
        raise NotImplementedError


class CrossEntropyLoss(FrameLoss):
    """Hard-label cross-entropy against the alignment's pdf-ids (teachers, baselines), in fp32."""

    def describe(self) -> Dict[str, Any]:
        return {"loss": "cross-entropy"}

    def __call__(self, logits, x, y, frame_index, topk):
        return F.cross_entropy(logits.float(), y)


class TrainStep:
    """See the module docstring."""

    def __init__(self, model: nn.Module, loss: Optional[FrameLoss] = None, *, frames: Optional[FrameSet] = None,
                 lr: float = 1e-3, weight_decay: float = 0.0, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 max_grad_norm: Optional[float] = None, cuda_graph: bool = False,
                 optimizer: Optional[torch.optim.Optimizer] = None,
                 grad_sync: Optional[Callable[[Sequence[nn.Parameter], float], None]] = None,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.model = model
        self.loss = loss if loss is not None else CrossEntropyLoss()
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.frames = frames
        self.augment = augment
        self.max_grad_norm = max_grad_norm
        self.loss.check(frames, augment)
        self.loss.bind(self.device)
        self.grad_sync = grad_sync
        if grad_sync is not None and cuda_graph and self.cuda:
            # A cross-process all-reduce inside a captured graph would need NCCL graph capture and every rank
            # replaying in lock-step, and the eager last partial batch would all-reduce outside the graph.
            raise ValueError("grad_sync (data-parallel training) and cuda_graph=True do not combine")
        self.cuda_graph = bool(cuda_graph and self.cuda)
        self.optimizer = optimizer if optimizer is not None else self._adamw(lr, betas, eps, weight_decay)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._graph_batch = 0
        self._static: Dict[str, Any] = {}

    def _adamw(self, lr: float, betas: tuple, eps: float, weight_decay: float) -> torch.optim.Optimizer:
        kwargs: Dict[str, Any] = dict(betas=betas, eps=eps, weight_decay=weight_decay)
        lr_arg: Any = float(lr)
        if self.cuda:
            # A tensor lr lets a captured graph see learning-rate changes (set_lr writes into it).
            kwargs.update(fused=True, capturable=self.cuda_graph)
            if self.cuda_graph:
                lr_arg = torch.tensor(float(lr), device=self.device)
        return torch.optim.AdamW(self.model.parameters(), lr=lr_arg, **kwargs)

    # -- public ---------------------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def step(self, frame_index: Optional[torch.Tensor] = None, x: Optional[torch.Tensor] = None,
             y: Optional[torch.Tensor] = None, topk: Optional[TopK] = None) -> torch.Tensor:
        if self.loss.uses_frame_index and frame_index is None and topk is None:
            raise ValueError("this loss reads per-frame data by frame_index: give frame_index (or topk)")
        if x is None and (self.frames is None or frame_index is None):
            raise ValueError("give x (and y), or frames= at construction and frame_index")
        self.model.train()
        inputs = {"frame_index": frame_index, "x": x, "y": y, "topk": topk}
        if not self.cuda_graph:
            return self._step(inputs, zero_grad_to_none=True)
        batch = (x if x is not None else frame_index).shape[0]
        if self._graph is None:
            self._capture(inputs)
        if batch != self._graph_batch:
            return self._step(inputs, zero_grad_to_none=False)  # keep the graph's grad buffers
        for name, value in inputs.items():
            if name in self._static and value is not None:
                for dst, src in zip(_as_tuple(self._static[name]), _as_tuple(value)):
                    dst.copy_(src, non_blocking=True)
        self._graph.replay()
        return self._static["loss"].clone()

    # -- internals ------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.cuda:  # cache_enabled=False: required under graph capture, and each weight is cast once anyway
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def _loss(self, frame_index, x, y, topk) -> torch.Tensor:
        if x is None:
            x = self.frames.windows(frame_index)
            if y is None and self.loss.needs_labels:
                y = self.frames.labels[frame_index]
        if self.augment is not None:  # before the loss's teachers: they label what the model sees
            x = self.augment(x)
        with self._autocast():
            logits = self.model(x)
        return self.loss(logits, x, y, frame_index, topk)

    def _update(self, loss: torch.Tensor, batch: int) -> None:
        loss.backward()
        if self.grad_sync is not None:  # before clipping: the norm to clip is the global batch's gradient's
            self.grad_sync(self._params, float(batch))
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm, foreach=self.cuda or None)
        self.optimizer.step()

    def _step(self, inputs: Dict[str, Any], zero_grad_to_none: bool) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=zero_grad_to_none)
        loss = self._loss(**inputs)
        self._update(loss, (inputs["x"] if inputs["x"] is not None else inputs["frame_index"]).shape[0])
        return loss.detach()

    def _capture(self, inputs: Dict[str, Any], warmup: int = 3) -> None:
        """Warm up (compiles, cuBLAS handles, optimizer state) on a side stream, restore the weights and optimizer
        state, then capture one whole step into a CUDA graph over static input buffers."""
        for name, value in inputs.items():
            if value is not None:
                self._static[name] = tuple(v.detach().clone() for v in value) if isinstance(value, tuple) else \
                    value.detach().clone()
        static = {k: self._static.get(k) for k in inputs}
        self._graph_batch = (inputs["x"] if inputs["x"] is not None else inputs["frame_index"]).shape[0]
        state = [t for t in list(self.model.parameters()) + list(self.model.buffers())]
        saved = [t.detach().clone() for t in state]
        saved_opt = {id(p): {k: v.detach().clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
                     for p, st in self.optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._step(static, True)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(state, saved, saved_opt)
        del saved, saved_opt
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._loss(**static)
            self._update(loss, self._graph_batch)
            self._static["loss"] = loss.detach()
        self._graph = graph

    @torch.no_grad()
    def _restore(self, state, saved, saved_opt) -> None:
        """Undo the warm-up updates.  State the optimizer did not have before is new AdamW state: step 0 and zero
        moments, which zeroing reproduces (in place: the graph must see these very tensors)."""
        for t, s in zip(state, saved):
            t.copy_(s)
        for p, st in self.optimizer.state.items():
            before = saved_opt.get(id(p), {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    v.copy_(before[k]) if k in before else v.zero_()


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)
