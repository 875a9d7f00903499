#!/usr/bin/env python3
"""kaldi-decoder and k2 side by side: one system's dev and test log-likelihoods decoded by both backends at the
settings its stage chose on dev (same HCLG, same beam); WER, errors, identical hypotheses, decode time and speed.

    python tools/decoder_compare.py --exp-dir exp/an4_sen --system student [--jobs 2] [--out FILE.json]

Decode time excludes computing the log-likelihoods and, for k2, converting the graph (reported apart: it is done
once and cached as HCLG.k2.pt).
"""
import argparse
import json
import platform
import time

import torch

from asr_distill.decode import compute_wer, words_of
from asr_distill.decode.backend import DecodingConfig, decode_loglikes
from asr_distill.decode.k2_decoding import hclg_to_k2, load_k2_graph
from asr_distill.decode.priors import pseudo_loglikes
from asr_distill.experiment import Experiment
from asr_distill.fst import invert_symbols, read_symbols, read_tid2pdf
from asr_distill.nnet.checkpoint import load_model
from asr_distill.nnet.frame_data import load_frame_set
from asr_distill.nnet.inference import log_posteriors
from asr_distill.nnet.models import fit_windows
from asr_distill.utils import read_json


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--system", default="student")
    p.add_argument("--jobs", type=int, default=2, help="kaldi-decoder processes")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    exp = Experiment(a.exp_dir)
    meta = exp.teachers_meta()
    model = fit_windows(load_model(exp.system_checkpoint(a.system)), meta["left"], meta["right"]).eval()
    priors = exp.log_priors()
    tid2pdf = read_tid2pdf(exp.tid2pdf_path)
    id2word = invert_symbols(read_symbols(exp.words_path))
    chosen = read_json(exp.decode_dir(a.system) / "wer.json")
    cfg = DecodingConfig(acoustic_scale=chosen["acoustic_scale"], word_penalty=chosen["word_penalty"])
    t0 = time.time()
    hclg_to_k2(exp.hclg_path, tid2pdf)
    convert = time.time() - t0
    load_k2_graph(exp.hclg_path, tid2pdf)  # writes the cache the k2 decodes below read
    report = {"exp_dir": a.exp_dir, "system": a.system, "acoustic_scale": cfg.acoustic_scale,
              "word_penalty": cfg.word_penalty, "beam": cfg.beam, "max_active": cfg.max_active,
              "k2_graph_conversion_s": round(convert, 2), "machine": f"{platform.node()} {torch.get_num_threads()} "
              f"torch thread(s)", "splits": {}}
    for split in ("dev", "test"):
        frames = load_frame_set(exp.frame_source(split), meta["left"], meta["right"])[0]
        ll = {u: pseudo_loglikes(x, priors) for u, x in log_posteriors(model, frames).items()}
        n_frames = sum(len(x) for x in ll.values())
        refs = {u: t.split() for u, t in exp.texts(split).items() if u in ll}
        out, hyps = {}, {}
        for name, config, jobs in (("kaldi-decoder", cfg, a.jobs), ("kaldi-decoder-1proc", cfg, 1),
                                   ("k2", cfg.with_(backend="k2"), 1)):
            t0 = time.time()
            h = decode_loglikes(exp.hclg_path, tid2pdf, ll, config, jobs=jobs)
            sec = time.time() - t0
            hyps[name] = h
            w = compute_wer(refs, {u: words_of(x, id2word) for u, x in h.items()}, bootstrap_replications=0)
            out[name] = {"wer": round(w.wer, 2), "errors": f"{w.errors}/{w.ref_words}", "seconds": round(sec, 2),
                         "processes": jobs, "frames_per_second": round(n_frames / sec),
                         "rtf": round(sec / (n_frames * 0.01), 4)}
        out["identical_hypotheses"] = f"{sum(hyps['k2'][u] == hyps['kaldi-decoder'][u] for u in ll)}/{len(ll)}"
        out["frames"] = n_frames
        report["splits"][split] = out
        print(split, json.dumps(out), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
