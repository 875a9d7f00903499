"""Frame-level DNN acoustic models and how they are trained.

:mod:`.models` (MLP, TDNN), :mod:`.frames` (the resident frame set), :mod:`.frame_data` (frames read from the
labelled cuts), :mod:`.stream` (the streaming frame path), :mod:`.augment` (input perturbation), :mod:`.step` (one
optimisation step, any frame loss), :mod:`.train` (the epoch loop, resumable), :mod:`.checkpoint`,
:mod:`.inference` (frame accuracy, log-posteriors, ensembles), :mod:`.parallel` (torchrun data parallelism).
"""
from .augment import WindowAugment
from .checkpoint import CheckpointError, load_model, save_model
from .frame_data import FrameSource, frame_subset_mask, load_frame_set
from .frames import FrameSet, splice_utterance
from .inference import ensemble_log_posteriors, frame_accuracy, log_posteriors
from .models import MLP, TDNN, build_model, count_parameters, model_flops_per_frame
from .step import CrossEntropyLoss, FrameLoss, TrainStep
from .stream import FrameStream, open_frames
from .train import TrainConfig, train_model

__all__ = ["WindowAugment", "CheckpointError", "load_model", "save_model", "FrameSource", "frame_subset_mask",
           "load_frame_set", "FrameSet", "splice_utterance", "ensemble_log_posteriors", "frame_accuracy",
           "log_posteriors", "MLP", "TDNN", "build_model", "count_parameters", "model_flops_per_frame",
           "CrossEntropyLoss", "FrameLoss", "TrainStep", "FrameStream", "open_frames", "TrainConfig", "train_model"]
