"""The recipe's stages as library functions over one experiment directory (icefall-style recipes call them through
the ``asr-distill`` CLI): 0 prepare, 1 features, 2 lang, 3 gmm, 4 teachers, 5 evaluate, 6 distill."""
from .data_stages import stage_features, stage_lang, stage_prepare
from .distill_stage import DISTILL_EXPERIMENTS, stage_distill
from .gmm_stage import gmm_features, stage_gmm
from .nnet_stages import model_config, stage_evaluate, stage_teachers

__all__ = ["stage_prepare", "stage_features", "stage_lang", "stage_gmm", "gmm_features", "stage_teachers",
           "stage_evaluate", "model_config", "stage_distill", "DISTILL_EXPERIMENTS"]
