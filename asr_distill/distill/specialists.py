"""Specialists (Hinton, Vinyals & Dean 2015, section 5) for frame classifiers: a generalist plus specialists on the
classes it confuses.

* :func:`prediction_covariance`, :func:`cluster_classes`, :func:`grow_subsets` -- confusable subsets: K-means over
  the columns of the covariance matrix of the generalist's predictions (classes that are often predicted together
  have similar columns), optionally grown so that subsets overlap (each takes the classes outside it that
  co-vary most with it).
* :func:`dustbin_labels`, :func:`balanced_selection`, :func:`dustbin_log_prior_ratio` -- a specialist's targets:
  its subset's classes plus one dustbin class for everything else, on frames of which about half are its subset's
  and half are drawn at random from the rest; the dustbin's and the subset's priors are corrected afterwards for
  that oversampling.
* :func:`specialist_from` -- a specialist initialised from the generalist (every layer, and the subset's rows of the
  output layer; the dustbin row starts at zero with the log of the generalist's out-of-subset bias mass).
* :func:`combine` -- the full distribution ``q`` of a frame minimising ``KL(p_g || q) + sum_m KL(p_m || q_m)`` over
  the active specialists ``m`` (those whose subset meets the generalist's top-n classes), ``q_m`` being ``q``
  with its mass outside subset ``m`` summed into the dustbin.  The paper takes gradient steps on ``q``'s logits;
  this is the same minimum found by EM: the objective is a weighted log-likelihood of ``q`` in which each
  specialist's dustbin mass is an observation of "some class outside the subset", and EM shares that mass out in
  proportion to ``q``, improving the objective monotonically.  Batched over frames, on any device.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = ["prediction_covariance", "cluster_classes", "grow_subsets", "coverage", "dustbin_labels",
           "balanced_selection", "dustbin_log_prior_ratio", "specialist_from", "membership", "active_specialists",
           "combine", "share_out"]


def prediction_covariance(probs: Union[torch.Tensor, Iterable[torch.Tensor]]) -> torch.Tensor:
    """``(C, C)`` covariance over frames of the generalist's predicted distributions: ``probs`` ``(N, C)``, or
    batches of them (accumulated in float64, so the frames are never held at once)."""
    batches = [probs] if isinstance(probs, torch.Tensor) else probs
    n, total, outer = 0, None, None
    for p in batches:
        p = p.double()
        if total is None:
            total, outer = p.sum(0), p.T @ p
        else:
            total, outer = total + p.sum(0), outer + p.T @ p
        n += p.shape[0]
    if n < 2:
        raise ValueError("the covariance of the predictions needs at least 2 frames")
    mean = total / n
    return (outer - n * torch.outer(mean, mean)) / (n - 1)


def cluster_classes(cov: torch.Tensor, num_clusters: int, seed: int = 0, iterations: int = 50) -> List[np.ndarray]:
    """Disjoint subsets of the classes: K-means (k-means++ start, Lloyd iterations) on the unit-normalised columns
    of ``cov``.  Empty clusters are dropped, so fewer than ``num_clusters`` may come back; sorted by their
    smallest class."""
    cols = cov.double().T
    x = cols / cols.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = x.shape[0]
    k = min(num_clusters, n)
    gen = torch.Generator().manual_seed(seed)
    centres = [x[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):  # k-means++: the next centre far from the chosen ones
        d2 = torch.cdist(x, torch.stack(centres)).min(1).values ** 2
        centres.append(x[torch.multinomial(d2 + 1e-12, 1, generator=gen)].squeeze(0))
    c = torch.stack(centres)
    assign = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iterations):
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    subsets = [np.flatnonzero(assign.numpy() == j) for j in range(k)]
    return sorted((s for s in subsets if len(s)), key=lambda s: int(s[0]))


def grow_subsets(cov: torch.Tensor, subsets: Sequence[np.ndarray], extra: int) -> List[np.ndarray]:
    """Each subset plus the ``extra`` classes outside it with the largest mean covariance with its members: the
    subsets then overlap, and a class may be covered by several specialists."""
    if extra <= 0:
        return [np.asarray(s) for s in subsets]
    cov = cov.double()
    out = []
    for s in subsets:
        affinity = cov[:, torch.as_tensor(s)].mean(1)
        affinity[torch.as_tensor(s)] = -float("inf")
        take = torch.topk(affinity, min(extra, cov.shape[0] - len(s))).indices.numpy()
        out.append(np.sort(np.concatenate([s, take])))
    return out


def coverage(subsets: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """How many subsets each class is in."""
    count = np.zeros(num_classes, dtype=np.int64)
    for s in subsets:
        count[np.asarray(s)] += 1
    return count


def dustbin_labels(labels: torch.Tensor, subset: np.ndarray, num_classes: int) -> torch.Tensor:
    """Labels in the specialist's classes: the subset's class ``subset[i]`` -> ``i``, every other class -> the
    dustbin ``len(subset)``; ``-1`` (unaligned) stays ``-1``."""
    table = torch.full((num_classes + 1,), len(subset), dtype=torch.long)
    table[torch.as_tensor(subset, dtype=torch.long)] = torch.arange(len(subset))
    table[num_classes] = -1  # index -1 wraps to this entry
    return table.to(labels.device)[labels]


def balanced_selection(local_labels: torch.Tensor, dustbin: int, seed: int) -> torch.Tensor:
    """A boolean mask over frames: every frame of the subset, and as many frames (at most all) drawn at random
    from the dustbin's, so that about half of the selection is the subset's."""
    gen = torch.Generator().manual_seed(seed)
    labels = local_labels.cpu()
    inside = (labels >= 0) & (labels != dustbin)
    others = torch.nonzero(labels == dustbin).squeeze(1)
    take = others[torch.randperm(len(others), generator=gen)[:int(inside.sum())]]
    mask = inside.clone()
    mask[take] = True
    return mask.to(local_labels.device)


def share_out(costs: Sequence[float], workers: int) -> List[int]:
    """The worker of each job: longest first, each to the least-loaded worker so far (LPT scheduling: the busiest
    worker's load is within 4/3 of the best possible).  Deterministic, so every rank computes the same plan."""
    load = [0.0] * max(1, workers)
    owner = [0] * len(costs)
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        w = min(range(len(load)), key=lambda w: (load[w], w))
        owner[j] = w
        load[w] += costs[j]
    return owner


def dustbin_log_prior_ratio(true_subset_fraction: float, train_subset_fraction: float) -> torch.Tensor:
    """``(2,)`` log(true / training) prior ratios of (any subset class, the dustbin): added to a specialist's
    log-probabilities (subset classes, dustbin) and renormalised, they undo the training set's balancing."""
    ratios = [true_subset_fraction / train_subset_fraction, (1 - true_subset_fraction) / (1 - train_subset_fraction)]
    return torch.log(torch.tensor(ratios, dtype=torch.float64))


def _output_layer(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def specialist_from(generalist: nn.Module, subset: np.ndarray, build) -> nn.Module:
    """A model of the generalist's architecture with ``len(subset) + 1`` outputs, every weight copied from the
    generalist except the output layer's, of which the subset's rows are copied; the dustbin row's weights are
    zero and its bias the log of the generalist's softmax-bias mass outside the subset.  ``build``:
    :func:`asr_distill.nnet.models.build_model`."""
    config = {**generalist.config, "num_pdfs": len(subset) + 1}
    model = build(config)
    source = {k: v for k, v in generalist.state_dict().items()}
    out_g, out_s = _output_layer(generalist), _output_layer(model)
    skip = {id(out_s.weight), id(out_s.bias)}
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            if id(param) not in skip:
                param.copy_(source[name].to(param.device))
        idx = torch.as_tensor(subset, dtype=torch.long, device=out_g.weight.device)
        here = out_s.weight.device
        out_s.weight[:-1] = out_g.weight[idx].to(here)
        out_s.weight[-1] = 0.0
        out_s.bias[:-1] = out_g.bias[idx].to(here)
        rest = torch.ones(out_g.bias.shape[0], dtype=torch.bool, device=out_g.bias.device)
        rest[idx] = False
        out_s.bias[-1] = torch.logsumexp(out_g.bias[rest], 0).to(here) if rest.any() else -30.0
    return model


def membership(subsets: Sequence[np.ndarray], num_classes: int, device=None) -> torch.Tensor:
    """``(M, C)`` bool: class c is in subset m."""
    m = torch.zeros(len(subsets), num_classes, dtype=torch.bool, device=device)
    for i, s in enumerate(subsets):
        m[i, torch.as_tensor(s, dtype=torch.long, device=device)] = True
    return m


def active_specialists(general_probs: torch.Tensor, member: torch.Tensor, top_n: int) -> torch.Tensor:
    """``(B, M)`` bool: specialist m is active for a frame when its subset holds one of the generalist's ``top_n``
    most probable classes there."""
    top = torch.topk(general_probs, min(top_n, general_probs.shape[1]), dim=1).indices  # (B, n)
    return member[:, top].any(-1).T  # member[:, top]: (M, B, n)


@torch.no_grad()
def combine(general_probs: torch.Tensor, specialist_probs: Sequence[torch.Tensor], member: torch.Tensor,
            active: Optional[torch.Tensor] = None, iterations: int = 30, tol: float = 1e-7) -> torch.Tensor:
    """``(B, C)`` the distribution ``q`` minimising ``KL(p_g || q) + sum_m active[b, m] KL(p_m || q_m)`` per frame
    (see the module docstring), by EM from ``q = p_g``.

    ``general_probs`` ``(B, C)``; ``specialist_probs[m]`` ``(B, |S_m| + 1)`` over subset m's classes (in
    increasing class order) then the dustbin; ``member`` ``(M, C)`` from :func:`membership`; ``active`` ``(B, M)``
    (default: all).  Computed in float64."""
    pg = general_probs.double()
    b, c = pg.shape
    num_spec = member.shape[0]
    act = torch.ones(b, num_spec, dtype=torch.float64, device=pg.device) if active is None else active.double()
    inside = torch.zeros_like(pg)  # sum over active specialists of their in-subset probabilities
    dust = torch.zeros(b, num_spec, dtype=torch.float64, device=pg.device)
    for m, p in enumerate(specialist_probs):
        p = p.double()
        cols = torch.nonzero(member[m]).squeeze(1)
        inside[:, cols] += act[:, m:m + 1] * p[:, :-1]
        dust[:, m] = act[:, m] * p[:, -1]
    outside = (~member).double()  # (M, C)
    norm = 1.0 + act.sum(1, keepdim=True)
    q = pg.clone()
    for _ in range(iterations):
        q_out = (q @ outside.T).clamp_min(1e-300)  # (B, M): q's mass outside each subset
        shared = q * ((dust / q_out) @ outside)  # each dustbin's mass, shared out in proportion to q
        new = (pg + inside + shared) / norm
        done = (new - q).abs().max() < tol
        q = new
        if done:
            break
    return q / q.sum(1, keepdim=True)
