"""Corpora -> validated Lhotse manifests -> features, CMVN, and the per-frame arrays the cuts carry.

:mod:`.corpus` (what all readers share), :mod:`.an4`, :mod:`.librispeech`, :mod:`.kaldi`, :mod:`.yesno` (the
readers), :mod:`.prepare` (stage 0: any corpus -> ``cuts_{train,dev,test}``), :mod:`.features` (fbank / MFCC,
CMVN), :mod:`.arrays` (frame labels and soft targets as cut fields), :mod:`.transfer` (untranscribed audio that only
the teachers label).
"""
from .an4 import prepare_an4, read_an4
from .arrays import FrameArrayError, attach_frame_arrays
from .corpus import (SPLITS, TARGET_RATE, BadItem, CorpusError, Utterance, check_audio, make_cutset, normalise_text,
                     report_bad, set_soundfile_backend, speaker_disjoint_split, split_speakers, write_manifest,
                     write_splits)
from .features import (FEATURE_CONFIGS, add_deltas, CmvnStats, compute_cmvn, compute_features, feature_extractor,
                       load_features, load_normalised, moments)
from .kaldi import read_kaldi_dir
from .librispeech import librispeech_parts, read_librispeech
from .prepare import CORPORA, prepare_corpus
from .transfer import find_audio, prepare_transfer
from .yesno import read_yesno

__all__ = ["prepare_an4", "read_an4", "FrameArrayError", "attach_frame_arrays", "SPLITS", "TARGET_RATE", "BadItem",
           "CorpusError", "Utterance", "check_audio", "make_cutset", "normalise_text", "report_bad",
           "set_soundfile_backend", "speaker_disjoint_split", "split_speakers", "write_manifest", "write_splits",
           "FEATURE_CONFIGS", "CmvnStats", "compute_cmvn", "compute_features", "feature_extractor", "load_features",
           "load_normalised", "moments", "add_deltas", "read_kaldi_dir", "librispeech_parts", "read_librispeech", "CORPORA",
           "prepare_corpus", "read_yesno", "find_audio", "prepare_transfer"]
