"""Stage 6: the paper's experiments on this corpus (:mod:`asr_distill.distill.experiments`)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from ..data.transfer import prepare_transfer
from ..distill.experiments import EXPERIMENTS, DistillSettings, check_experiments, run_experiments
from ..distill.runner import DistillRunner
from ..distill.teachers import fp8_support
from ..nnet import parallel
from ..experiment import Experiment
from ..utils import Pathlike

__all__ = ["stage_distill", "DISTILL_EXPERIMENTS"]

DISTILL_EXPERIMENTS = tuple(EXPERIMENTS)


def stage_distill(exp: Experiment, device: str = "cpu", jobs: int = 2, T: float = 2.0, alpha: float = 0.5,
                  mean: str = "arithmetic", teacher_source: str = "live", topk: int = 16,
                  experiments: Sequence[str] = ("table1",), train_config: Optional[dict] = None,
                  student_recipe: Optional[dict] = None,
                  select_candidates: Optional[Sequence[Tuple[float, float, dict]]] = None,
                  frames: str = "auto", scorer_options: Optional[dict] = None, seeds: int = 3,
                  stream_right: Sequence[int] = (2,), small_fraction: float = 0.25,
                  specialists: Optional[dict] = None, teacher_precision: str = "auto",
                  baseline_choice: str = "own", transfer_data: Optional[Pathlike] = None) -> dict:
    """Stage 6: ``experiments`` (names of :data:`DISTILL_EXPERIMENTS`, run in that table's order).

    ``student_recipe`` overrides the teachers' training settings (e.g. ``epochs``, ``noise_std``, ``freq_mask``)
    for table 1's students and baselines alike, which then differ only in their targets; ``seeds``: how many
    seeds table 1 trains each of them with; ``stream_right``: the streaming students' right contexts; ``small_fraction``: the small student's share of a teacher's
    parameters; ``specialists``: settings of the ``specialists`` experiment (``generalist``, ``num_specialists``,
    ``specialist_overlap``, ``specialist_epochs``, ``specialist_alpha``, ``specialist_top_n``).  Under
    ``torchrun`` every system is trained data-parallel by all ranks; rank 0 alone decodes and writes the results.
    ``frames``: the frame path; ``scorer_options``: the :class:`~asr_distill.decode.scorer.Scorer`'s;
    ``teacher_precision``: ``fp8`` runs the live teachers' matmuls in FP8 (GPUs of compute capability 8.9 or
    newer; refused elsewhere, naming why); ``baseline_choice``: with ``select``, whether table 1's baseline takes
    the recipe its own hard-label control did best with on dev (``own``) or the student's (``shared``);
    ``transfer_data``: a directory of untranscribed audio whose frames the live-teacher students also learn from,
    labelled by the teachers alone (:mod:`asr_distill.data.transfer`; prepared once under ``EXP/transfer``).
    """
    check_experiments(experiments)  # before the runner loads anything
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    if teacher_precision not in ("auto", "fp8"):
        raise ValueError(f"teacher_precision must be 'auto' or 'fp8', not {teacher_precision!r}")
    if teacher_precision == "fp8":
        reason = fp8_support(parallel.resolve_device(device))
        if reason is not None:
            raise ValueError(f"--teacher-precision fp8: {reason}; leave it at auto (bf16 teachers on CUDA)")
    if transfer_data is not None:
        if teacher_source != "live":
            raise ValueError("transfer data needs live teachers (teacher_source live): the top-k cache covers the "
                             "training set only")
        if parallel.is_main():
            prepare_transfer(exp.transfer_dir, transfer_data, exp.cuts("train", "fbank"), exp.cmvn("fbank").mode)
        parallel.barrier()
    run = DistillRunner(exp, device, jobs, train_config, mean, frames, scorer_options,
                        teacher_mode="fp8" if teacher_precision == "fp8" else "auto",
                        transfer=transfer_data is not None)
    settings = DistillSettings(T=T, alpha=alpha, mean=mean, recipe=dict(student_recipe or {}),
                               teacher_source=teacher_source, topk=topk, select_candidates=select_candidates,
                               seeds=seeds, stream_right=tuple(stream_right),
                               small_fraction=small_fraction, baseline_choice=baseline_choice,
                               **(specialists or {}))
    return run_experiments(run, experiments, settings)
