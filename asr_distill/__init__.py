"""asr-distill: distil an ensemble of hybrid HMM-DNN acoustic models into one small student.

One subpackage per stage family: :mod:`.data` (corpora, manifests, features, per-frame cut fields), :mod:`.lang`
(lexicon, LM, HCLG), :mod:`.gmm` (GMM-HMM bootstrap and frame labels), :mod:`.nnet` (models, frame paths,
training), :mod:`.distill` (ensemble -> student, the paper's experiments), :mod:`.decode` (hybrid WFST decoding
and the scorer), :mod:`.deploy` (export, transcribe), :mod:`.recipe` (the stages); :mod:`.experiment` names every
path of an experiment directory.
"""

__version__ = "0.2.0"
