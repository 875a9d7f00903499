"""Distillation of an ensemble of hybrid acoustic models into one student, and the paper's experiments.

:mod:`.teachers` (stacked frozen teachers, ensemble soft targets), :mod:`.loss` (the distillation loss and step),
:mod:`.fused` (its Triton kernel), :mod:`.topk` (the top-k soft-target cache, stored with the cuts),
:mod:`.runner` (what stage 6 trains and scores), :mod:`.experiments` (Table 1, Table 5, sweep, compression,
small, specialists, streaming, select), :mod:`.recipes` (student recipes and their parsers), :mod:`.specialists`
(the paper's section 5: confusable subsets, dustbin targets, the KL combination) and :mod:`.specialist_system`
(a generalist with its trained specialists), :mod:`.plots`.
"""
from .fused import fused_ensemble_distillation_loss
from .loss import DistillationLoss, DistillStep, distill_flops_per_frame, distillation_loss
from .specialist_system import SpecialistSystem
from .specialists import combine as combine_specialists
from .teachers import ENSEMBLE_MEANS, StackedTeachers, ensemble_soft_targets
from .topk import TopKCache, compute_topk_soft_targets, topk_soft_targets, write_topk_cuts

__all__ = ["fused_ensemble_distillation_loss", "DistillationLoss", "DistillStep", "distill_flops_per_frame",
           "distillation_loss", "ENSEMBLE_MEANS", "StackedTeachers", "ensemble_soft_targets", "TopKCache",
           "compute_topk_soft_targets", "topk_soft_targets", "write_topk_cuts", "SpecialistSystem",
           "combine_specialists"]
