#!/usr/bin/env python3
"""Time one dev decode of a GMM system (``decode_loglikes`` alone, 2 processes):

    python tools/decode_timing.py   # exp/minilibri, tri3, the scale and penalty stage 3 chose
"""
import time
from asr_distill.experiment import Experiment
from asr_distill.recipe.gmm_stage import system_features
from asr_distill.gmm.system import GmmSystem
from asr_distill.decode.backend import DecodingConfig, decode_loglikes
from asr_distill.fst import read_tid2pdf
exp = Experiment("exp/minilibri", corpus="librispeech")
system = GmmSystem.load(exp.gmm_system_dir("tri3"))
ll = {u: system.gmm.loglikes(f) for u, f in system_features(exp, system, "dev").items()}
print("loglikes GB", sum(v.nbytes for v in ll.values()) / 1e9)
g = exp.gmm_system_dir("tri3") / "graph"
tid2pdf = read_tid2pdf(g / "tid2pdf.txt")
t = time.time()
h = decode_loglikes(g / "HCLG.fst", tid2pdf, ll, DecodingConfig(acoustic_scale=0.0667, word_penalty=1.0), jobs=2)
print("decode s", round(time.time() - t, 1))
