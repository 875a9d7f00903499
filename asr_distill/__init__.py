"""asr-distill: distil an ensemble of hybrid HMM-DNN acoustic models into one small student.

One concept per module: :mod:`data` (Lhotse manifests, features, CMVN), :mod:`lang` (lexicon, LM, HCLG),
:mod:`align` (GMM-HMM bootstrap and frame labels), :mod:`models` (MLP / TDNN), :mod:`frames` (spliced frame
batches), :mod:`train` (cross-entropy teachers), :mod:`distill` (ensemble -> student), :mod:`decode` (hybrid WFST
decoding and scoring), :mod:`export` (deployable student).
"""

__version__ = "0.1.0"
