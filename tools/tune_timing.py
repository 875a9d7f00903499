#!/usr/bin/env python3
"""Time the dev tuners on one system's dev log-likelihoods (a GMM system of stage 3, or a DNN of stages 4-6):

    python tools/tune_timing.py EXP SYSTEM grid,search,lattice-k2,lattice-kaldi [--jobs 2]

``lattice`` is the default tuner with its automatic lattice generator (k2 where installed); ``lattice-k2`` and
``lattice-kaldi`` force one.  One JSON line per tuner: seconds, grid points decoded or rescored, the choice and its
dev WER.  The grid is the Scorer's (GMM_SCALES for a GMM, DNN_SCALES for a DNN, x WORD_PENALTIES).
"""
import argparse
import functools
import json
import logging
import time

import torch

from asr_distill.decode.backend import DecodingConfig
from asr_distill.decode.lattice import tune_by_rescoring
from asr_distill.decode.priors import pseudo_loglikes
from asr_distill.decode.scorer import DNN_SCALES, GMM_SCALES, WORD_PENALTIES
from asr_distill.decode.tuning import search_acoustic_scale, tune_acoustic_scale
from asr_distill.experiment import Experiment
from asr_distill.fst import invert_symbols, read_symbols, read_tid2pdf

TUNERS = {"grid": tune_acoustic_scale, "search": search_acoustic_scale, "lattice": tune_by_rescoring,
          "lattice-k2": functools.partial(tune_by_rescoring, lattice_decoder="k2"),
          "lattice-kaldi": functools.partial(tune_by_rescoring, lattice_decoder="kaldi-decoder")}


def dev_loglikes(exp: Experiment, name: str):
    """(dev log-likelihoods, graph dir, scale grid) of a GMM system or a DNN checkpoint."""
    if exp.gmm_system_dir(name).is_dir():
        from asr_distill.gmm.system import GmmSystem
        from asr_distill.recipe.gmm_stage import system_features
        system = GmmSystem.load(exp.gmm_system_dir(name))
        ll = {u: system.gmm.loglikes(f) for u, f in system_features(exp, system, "dev").items()}
        return ll, exp.gmm_system_dir(name) / "graph", GMM_SCALES
    from asr_distill.nnet.checkpoint import load_model
    from asr_distill.nnet.frame_data import load_frame_set
    from asr_distill.nnet.inference import log_posteriors
    from asr_distill.nnet.models import fit_windows
    meta = exp.teachers_meta()
    model = fit_windows(load_model(exp.system_checkpoint(name)), meta["left"], meta["right"]).eval()
    frames = load_frame_set(exp.frame_source("dev"), meta["left"], meta["right"])[0]
    priors = exp.log_priors()
    ll = {u: pseudo_loglikes(x, priors) for u, x in log_posteriors(model, frames).items()}
    return ll, exp.hclg_path.parent, DNN_SCALES


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("exp_dir")
    p.add_argument("system")
    p.add_argument("tuners", help="comma-separated: " + ",".join(TUNERS))
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    exp = Experiment(a.exp_dir)
    ll, graph, scales = dev_loglikes(exp, a.system)
    tid2pdf = read_tid2pdf(graph / "tid2pdf.txt")
    id2word = invert_symbols(read_symbols(graph / "words.txt"))
    refs = {u: t.split() for u, t in exp.texts("dev").items()}
    for tuner in a.tuners.split(","):
        t0 = time.time()
        best, wers = TUNERS[tuner](graph / "HCLG.fst", tid2pdf, ll, refs, id2word, scales, DecodingConfig(beam=13.0),
                                   a.jobs, WORD_PENALTIES)
        k = f"{best.acoustic_scale:g}/{best.word_penalty:g}"
        print(json.dumps({"system": a.system, "tuner": tuner, "seconds": round(time.time() - t0, 1), "choice": k,
                          "dev_wer": round(wers[k], 2), "points": len(wers)}), flush=True)


if __name__ == "__main__":
    main()
