#!/usr/bin/env python3
"""Time the 1-best decoder against the lattice decoder on one dev utterance of a GMM system:

    python tools/lattice_decoder_timing.py mono 0.05   # exp/minilibri
"""
import sys
import time
import numpy as np
import kaldi_decoder, kaldifst
from asr_distill.experiment import Experiment
from asr_distill.recipe.gmm_stage import system_features
from asr_distill.gmm.system import GmmSystem
from asr_distill.fst import read_tid2pdf
from asr_distill.decode.lattice import lattice_of
from asr_distill.decode.backend import DecodingConfig, decode_loglikes
exp = Experiment("exp/minilibri", corpus="librispeech")
system = GmmSystem.load(exp.gmm_system_dir(sys.argv[1]))
feats = system_features(exp, system, "dev")
u = sorted(feats)[0]
ll = system.gmm.loglikes(feats[u])
print(u, ll.shape)
g = exp.gmm_system_dir(sys.argv[1]) / "graph"
tid2pdf = read_tid2pdf(g / "tid2pdf.txt")
hclg = kaldifst.StdVectorFst.read(str(g / "HCLG.fst"))
scale = float(sys.argv[2])
scores = np.ascontiguousarray(ll[:, tid2pdf[1:]], dtype=np.float32) * np.float32(scale)
t = time.time()
ids = decode_loglikes(g / "HCLG.fst", tid2pdf, {u: ll}, DecodingConfig(acoustic_scale=scale))
print("faster decode", time.time() - t)
for beam, lb in ((13, 8), (11, 6)):
    dec = kaldi_decoder.LatticeSimpleDecoder(hclg, kaldi_decoder.LatticeSimpleDecoderConfig(beam=beam, lattice_beam=lb))
    t = time.time()
    dec.decode(kaldi_decoder.DecodableCtc(scores))
    t1 = time.time()
    ok, lat = dec.get_raw_lattice()
    t2 = time.time()
    s = lat.to_str()
    t3 = time.time()
    L = lattice_of(lat, scale)
    t4 = time.time()
    print(beam, lb, "decode", round(t1 - t, 1), "raw", round(t2 - t1, 1), "to_str", round(t3 - t2, 1), "parse", round(t4 - t3, 1), "arcs", len(L.src), "levels", len(L.levels))
