"""The GMM-HMM bootstrap: every frame gets its HMM-state (pdf-id) label, as the paper's targets came from a GMM
system.  :mod:`.inventory` (topology, tree, transition model), :mod:`.model` (diagonal GMMs as arrays),
:mod:`.align` (forced alignment), :mod:`.train_mono` (Kaldi's monophone schedule)."""
from .align import AlignmentError, TrainingGraphs, align_utterances
from .inventory import StateInventory
from .model import GmmModel
from .train_mono import accumulate_stats, equal_alignments, train_monophone

__all__ = ["AlignmentError", "TrainingGraphs", "align_utterances", "StateInventory", "GmmModel",
           "accumulate_stats", "equal_alignments", "train_monophone"]
