"""The GMM-HMM bootstrap: every frame gets its HMM-state (pdf-id) label, as the paper's targets came from a GMM
system.  :mod:`.inventory` (topology, tree, transition model), :mod:`.model` (diagonal GMMs as arrays),
:mod:`.align` (forced alignment), :mod:`.train_mono` (Kaldi's monophone schedule), :mod:`.tree_stats`,
:mod:`.questions` and :mod:`.tree` (tied-state triphone trees), :mod:`.train_tri` (train_deltas.sh),
:mod:`.posteriors` (Gaussian posteriors within an aligned pdf), :mod:`.lda_mllt` and :mod:`.train_lda_mllt`
(train_lda_mllt.sh), :mod:`.fmllr` and :mod:`.train_sat`
(train_sat.sh), :mod:`.features` (what each system reads), :mod:`.system` (one system of the chain)."""
from .align import AlignmentError, TrainingGraphs, align_utterances
from .features import GmmFeatures
from .inventory import StateInventory
from .model import GmmModel
from .questions import cluster_phones
from .system import GMM_SYSTEMS, GmmSystem, check_gmm_systems
from .train_lda_mllt import train_lda_mllt
from .train_mono import accumulate_stats, equal_alignments, train_monophone
from .train_sat import train_sat
from .train_tri import TriphoneConfig, train_triphone
from .tree import Tree, build_tree, read_context_dependency
from .tree_stats import TreeStats, accumulate_tree_stats

__all__ = ["AlignmentError", "TrainingGraphs", "align_utterances", "StateInventory", "GmmModel", "GmmFeatures",
           "accumulate_stats", "equal_alignments", "train_monophone", "TriphoneConfig", "train_triphone",
           "train_lda_mllt", "train_sat", "Tree", "build_tree", "read_context_dependency", "TreeStats",
           "accumulate_tree_stats", "cluster_phones", "GmmSystem", "GMM_SYSTEMS", "check_gmm_systems"]
