"""Sequence-level distillation over the decoding graph (needs k2).

Frame-level distillation matches the ensemble's posterior frame by frame; the decoder, though, scores whole paths
through HCLG.  Here the student matches the ensemble's distribution over those paths (Wong & Gales 2016,
"Sequence student-teacher training of deep neural networks"; Kaldi's sequence training uses the same
quantities).  With pseudo log-likelihoods ``a`` (log-posterior minus log-prior), acoustic scale ``k`` and graph
scores ``g``, a model's posterior of a path ``pi`` through the graph is

    P(pi) = exp(k * sum_t a[t, pi_t] + g(pi)) / Z,

and the sequence KL from the ensemble's to the student's path posterior, up to terms without the student, is

    L = log Z_student - k * sum_t sum_p gamma_teacher[t, p] * a_student[t, p],

where ``gamma_teacher[t, p]`` is the ensemble's occupancy of pdf ``p`` at frame ``t`` (the forward-backward
posterior over the graph's paths).  Its gradient with respect to ``a_student`` is ``k * (gamma_student -
gamma_teacher)``: the student is pulled to the teacher's occupancies, not to its frame posteriors.  ``log Z`` and
both occupancies come from k2's ``intersect_dense_pruned`` in the log semiring (the occupancies as the gradient of
``log Z`` with respect to the scores), over the paths within the search and lattice beams, as Kaldi's sequence
training sums over beam-pruned lattices.  A small frame-level term (the ensemble's posteriors, ``frame_weight``)
keeps the output layer a posterior, as Kaldi's frame smoothing does in sequence training.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..decode.k2_decoding import load_k2_graph, require_k2
from ..nnet.checkpoint import atomic_torch_save, load_checkpoint, save_model
from ..nnet.frames import FrameSet
from ..utils import Pathlike, atomic_path, write_json

try:
    import k2
except ImportError:  # pragma: no cover - k2 is optional
    k2 = None

__all__ = ["SequenceConfig", "graph_log_partition", "pdf_occupancies", "sequence_kl", "ensemble_log_posteriors",
           "SequenceDistiller"]

log = logging.getLogger(__name__)


@dataclass
class SequenceConfig:
    epochs: int = 2
    lr: float = 1e-4
    acoustic_scale: float = 0.1
    frame_weight: float = 0.1  # weight of the frame-level (ensemble posterior) term
    utterances_per_batch: int = 16
    # the graph x utterance lattice: search beam and lattice beam (Kaldi generates its sequence-training lattices
    # with beam 13-15 and lattice beam 8), active states per frame
    search_beam: float = 15.0
    output_beam: float = 8.0
    max_active: int = 10000
    seed: int = 100


def _dense(scores: torch.Tensor, lengths: Sequence[int]) -> "k2.DenseFsaVec":
    """``(N, T, num_pdfs)`` scaled pseudo log-likelihoods as a dense FSA over the pdf-labelled graph's labels
    (pdf p = label p + 1; label 0 is epsilon's, which the epsilon-free graph never uses).  ``lengths`` must not
    increase (k2's intersections want the longest sequence first)."""
    if any(b > a for a, b in zip(lengths, lengths[1:])):
        raise ValueError(f"utterance lengths must be sorted longest first, got {list(lengths)}")
    padded = torch.nn.functional.pad(scores, (1, 0), value=-1e10)
    segments = torch.tensor([[i, 0, n] for i, n in enumerate(lengths)], dtype=torch.int32)
    return k2.DenseFsaVec(padded, segments)


def graph_log_partition(graph: "k2.Fsa", scores: torch.Tensor, lengths: Sequence[int],
                        search_beam: float = 15.0, output_beam: float = 8.0, max_active: int = 10000
                        ) -> torch.Tensor:
    """``log Z`` per utterance: the log-sum over the graph's paths (those the beams keep) of ``exp(scores + graph
    scores)``; ``-inf`` where no path of the utterance's length reaches a final state.  Differentiable with respect
    to ``scores``."""
    lattice = k2.intersect_dense_pruned(graph, _dense(scores, lengths), search_beam, output_beam, 30, max_active)
    return lattice.get_tot_scores(log_semiring=True, use_double_scores=True)


def pdf_occupancies(graph: "k2.Fsa", scores: torch.Tensor, lengths: Sequence[int],
                    **beams) -> Tuple[torch.Tensor, torch.Tensor]:
    """(occupancies ``(N, T, num_pdfs)``, ``log Z`` per utterance): each frame's posterior of each pdf over the
    graph's paths (rows sum to 1 on an utterance's frames, 0 on padding and where no path survived)."""
    x = scores.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        log_z = graph_log_partition(graph, x, lengths, **beams)
        ok = torch.isfinite(log_z)
        if ok.any():
            (gamma,) = torch.autograd.grad(log_z[ok].sum(), x)
        else:
            gamma = torch.zeros_like(x)
    gamma[~ok] = 0.0
    return gamma.detach(), log_z.detach()


def sequence_kl(graph: "k2.Fsa", student_loglikes: torch.Tensor, teacher_gamma: torch.Tensor,
                lengths: Sequence[int], acoustic_scale: float, **beams) -> Tuple[torch.Tensor, int]:
    """(sum over utterances of ``log Z_student - k * <gamma_teacher, a_student>``, utterances used): the sequence
    KL up to the teacher's entropy.  Utterances where the student or the teacher has no surviving path are left
    out (their loss would be infinite)."""
    scaled = student_loglikes * acoustic_scale
    log_z = graph_log_partition(graph, scaled, lengths, **beams)
    expected = (teacher_gamma * scaled).sum(dim=(1, 2))
    ok = torch.isfinite(log_z) & (teacher_gamma.sum(dim=(1, 2)) > 0)
    return (log_z[ok] - expected[ok]).sum(), int(ok.sum())


def ensemble_log_posteriors(teachers: Sequence[nn.Module], windows: torch.Tensor, mean: str) -> torch.Tensor:
    """The ensemble's log-posteriors of one batch of windows (arithmetic: log of the mean posterior; geometric:
    the renormalised mean log-posterior)."""
    logp = torch.stack([torch.log_softmax(t(windows).float(), -1) for t in teachers])
    if mean == "arithmetic":
        return torch.logsumexp(logp, 0) - math.log(len(teachers))
    return torch.log_softmax(logp.mean(0), -1)


class SequenceDistiller:
    """Fine-tunes a (frame-level distilled) student with :func:`sequence_kl` toward the ensemble, utterance batches
    over the training frames; one checkpoint per epoch (resumable), the model of the best dev sequence loss kept
    as ``best.pt``."""

    def __init__(self, hclg: Pathlike, tid2pdf: np.ndarray, teachers: Sequence[nn.Module], log_priors: np.ndarray,
                 config: SequenceConfig, mean: str = "arithmetic"):
        require_k2()
        self.graph = load_k2_graph(hclg, tid2pdf)
        self.teachers = [t.eval() for t in teachers]
        self.log_priors = torch.as_tensor(log_priors, dtype=torch.float32)
        self.config, self.mean = config, mean
        self.beams = dict(search_beam=config.search_beam, output_beam=config.output_beam, max_active=config.max_active)

    def _batches(self, frames: FrameSet, order: Sequence[int]) -> Iterator[Tuple[List[torch.Tensor], List[int]]]:
        n = self.config.utterances_per_batch
        for a in range(0, len(order), n):
            # longest first: k2's intersect_dense wants its sequences from greatest to least length
            windows = sorted((frames.utterance(int(i))[1] for i in order[a:a + n]), key=len, reverse=True)
            yield windows, [len(w) for w in windows]

    def _pad(self, rows: List[torch.Tensor]) -> torch.Tensor:
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)

    def batch_loss(self, student: nn.Module, windows: List[torch.Tensor], lengths: List[int]
                   ) -> Tuple[torch.Tensor, int, int]:
        """(loss summed over the batch, utterances in the sequence term, frames)."""
        c = self.config
        with torch.no_grad():
            teacher_logp = [ensemble_log_posteriors(self.teachers, w, self.mean) for w in windows]
            teacher_scores = self._pad([(lp - self.log_priors) * c.acoustic_scale for lp in teacher_logp])
            gamma, _ = pdf_occupancies(self.graph, teacher_scores, lengths, **self.beams)
        student_logp = [torch.log_softmax(student(w).float(), -1) for w in windows]
        student_loglikes = self._pad([lp - self.log_priors for lp in student_logp])
        seq, used = sequence_kl(self.graph, student_loglikes, gamma, lengths, c.acoustic_scale, **self.beams)
        frame = -sum((t.exp() * s).sum() for t, s in zip(teacher_logp, student_logp))
        return seq + c.frame_weight * frame, used, sum(lengths)

    def dev_loss(self, student: nn.Module, dev: FrameSet) -> float:
        student.eval()
        total = frames = 0.0
        with torch.no_grad():
            for windows, lengths in self._batches(dev, range(len(dev.utt_ids))):
                loss, _, n = self.batch_loss(student, windows, lengths)
                total, frames = total + float(loss), frames + n
        return total / max(1.0, frames)

    def fit(self, student: nn.Module, train: FrameSet, dev: FrameSet, out_dir: Pathlike) -> dict:
        """Fine-tune ``student`` in place; returns the summary (also ``out_dir/summary.json``)."""
        c, out = self.config, Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        opt = torch.optim.Adam(student.parameters(), lr=c.lr)
        ckpt_path, history, start = out / "checkpoint.pt", [], 1
        if ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path, what="sequence training checkpoint")
            if ckpt.get("config") != asdict(c):
                raise ValueError(f"{ckpt_path} was written with other settings ({ckpt.get('config')}); remove it "
                                 f"or pass the same options")
            student.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            history, best, start = list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"]) + 1
            log.info("resuming %s at epoch %d", out, start)
        else:
            best = {"dev_loss": self.dev_loss(student, dev), "epoch": 0}
            log.info("sequence distillation: dev loss %.4f per frame before fine-tuning", best["dev_loss"])
            save_model(student, out / "best.pt", {"epoch": 0})
        generator = torch.Generator().manual_seed(c.seed)
        for epoch in range(start, c.epochs + 1):
            t0, student_loss, frames, skipped = time.time(), 0.0, 0, 0
            student.train()
            order = torch.randperm(len(train.utt_ids), generator=generator).tolist()
            batches = tqdm(self._batches(train, order), total=-(-len(order) // c.utterances_per_batch),
                           desc=f"sequence epoch {epoch}", leave=False)
            for windows, lengths in batches:
                loss, used, n = self.batch_loss(student, windows, lengths)
                opt.zero_grad()
                (loss / n).backward()
                opt.step()
                student_loss += float(loss.detach())
                frames, skipped = frames + n, skipped + len(lengths) - used
            dev_loss = self.dev_loss(student, dev)
            history.append({"epoch": epoch, "train_loss": round(student_loss / max(1, frames), 5),
                            "dev_loss": round(dev_loss, 5), "skipped_utterances": skipped,
                            "seconds": round(time.time() - t0, 1)})
            log.info("sequence epoch %d: train %.4f dev %.4f per frame (%d utterance(s) without a path, %.0f s)",
                     epoch, history[-1]["train_loss"], dev_loss, skipped, history[-1]["seconds"])
            if dev_loss < best["dev_loss"]:
                best = {"dev_loss": dev_loss, "epoch": epoch}
                save_model(student, out / "best.pt", {"epoch": epoch})
            atomic_torch_save({"model": student.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                               "history": history, "best": best, "config": asdict(c)}, ckpt_path)
        with atomic_path(out / "history.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                if history:
                    w = csv.DictWriter(f, fieldnames=list(history[0]))
                    w.writeheader()
                    w.writerows(history)
        summary = {"config": asdict(c), "best": best, "history": history}
        write_json(summary, out / "summary.json")
        return summary
