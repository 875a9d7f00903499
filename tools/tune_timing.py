#!/usr/bin/env python3
"""Time the dev tuners (grid, search, lattice) on one GMM system's dev log-likelihoods:

    python tools/tune_timing.py EXP SYSTEM grid,search,lattice

One JSON line per tuner: seconds, grid points decoded or rescored, the choice and its dev WER.
"""
import sys, time, logging, json
logging.basicConfig(level=logging.INFO, format="%(message)s")
from asr_distill.experiment import Experiment
from asr_distill.recipe.gmm_stage import system_features
from asr_distill.gmm.system import GmmSystem
from asr_distill.decode.backend import DecodingConfig
from asr_distill.decode.tuning import tune_acoustic_scale, search_acoustic_scale
from asr_distill.decode.lattice import tune_by_rescoring
from asr_distill.decode.scorer import GMM_SCALES, WORD_PENALTIES
from asr_distill.fst import read_tid2pdf, read_symbols, invert_symbols
exp = Experiment(sys.argv[1]); name = sys.argv[2]
system = GmmSystem.load(exp.gmm_system_dir(name))
ll = {u: system.gmm.loglikes(f) for u, f in system_features(exp, system, "dev").items()}
g = exp.gmm_system_dir(name) / "graph"
tid2pdf = read_tid2pdf(g / "tid2pdf.txt"); id2word = invert_symbols(read_symbols(g / "words.txt"))
refs = {u: t.split() for u, t in exp.texts("dev").items()}
for tuner in sys.argv[3].split(","):
    f = {"grid": tune_acoustic_scale, "search": search_acoustic_scale, "lattice": tune_by_rescoring}[tuner]
    t0 = time.time()
    best, wers = f(g / "HCLG.fst", tid2pdf, ll, refs, id2word, GMM_SCALES, DecodingConfig(beam=13.0), 2, WORD_PENALTIES)
    k = f"{best.acoustic_scale:g}/{best.word_penalty:g}"
    print(json.dumps({"tuner": tuner, "seconds": round(time.time() - t0, 1), "choice": k, "dev_wer": round(wers[k], 2), "points": len(wers)}))
