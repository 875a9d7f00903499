#!/usr/bin/env python3
"""How G and HCLG grow with the language model: for each LM configuration, a scratch lang directory (the
experiment's transcripts and lexicon sources, plus ``--lm-text`` at the given order and count cut-off) and the HCLG
of a trained system's tree, each built in a fresh process so that its peak memory is its own.

    python tools/graph_scaling.py --exp-dir exp/minilibri --system tri3 --lm-text lm_text.txt \
        --config 2:1:none --config 3:1:lm --config 3:2:lm --out docs/results/graph_scaling.json

A configuration is ORDER:MIN_COUNT:TEXT (TEXT ``none``: training transcripts only, ``lm``: plus --lm-text).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_one(exp_dir: str, system: str, order: int, min_count: int, lm_text: str, lexicon: str) -> dict:
    from asr_distill.experiment import Experiment
    from asr_distill.gmm.inventory import StateInventory
    from asr_distill.lang import Lang, make_hclg
    from asr_distill.recipe import stage_lang

    exp = Experiment(exp_dir)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Experiment(Path(tmp) / "e")
        scratch.data_dir.mkdir(parents=True)
        for split in ("train", "dev", "test"):
            shutil.copy(exp.cuts_path(split), scratch.cuts_path(split))
        t0 = time.time()
        stage_lang(scratch, lexicon or None, lm_texts=[lm_text] if lm_text else [], lm_order=order,
                   lm_min_count=min_count)
        t_lang = time.time() - t0
        lang = Lang.load(scratch.lang_dir)
        meta = json.loads((scratch.lang_dir / "lang.json").read_text())
        report = json.loads((scratch.lang_dir / "lexicon_report.json").read_text())
        import kaldifst
        G = kaldifst.StdVectorFst.read(str(scratch.lang_dir / "G.fst"))
        g_arcs = sum(G.num_arcs(s) for s in range(G.num_states))
        inventory = StateInventory.load(exp.dir / "gmm" / system / "inventory")
        t0 = time.time()
        hclg = make_hclg(lang, inventory)
        t_hclg = time.time() - t0
        hclg_arcs = sum(hclg.num_arcs(s) for s in range(hclg.num_states))
        return {"order": order, "min_count": min_count, "lm_text": bool(lm_text), "lm_ngrams": meta["lm_ngrams"],
                "lm_words": report["lm_words"], "dev_oov_rate": report["dev_oov_rate"],
                "dev_perplexity": report.get("dev_perplexity"), "G_states": G.num_states, "G_arcs": g_arcs,
                "HCLG_states": hclg.num_states, "HCLG_arcs": hclg_arcs, "lang_seconds": round(t_lang, 1),
                "hclg_seconds": round(t_hclg, 1), "pdfs": inventory.num_pdfs,
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp-dir", required=True)
    ap.add_argument("--system", default="tri3")
    ap.add_argument("--lm-text", default="")
    ap.add_argument("--lexicon", default="")
    ap.add_argument("--config", action="append", required=True, help="ORDER:MIN_COUNT:none|lm")
    ap.add_argument("--out")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        order, min_count, text = args.config[0].split(":")
        row = build_one(args.exp_dir, args.system, int(order), int(min_count),
                        args.lm_text if text == "lm" else "", args.lexicon)
        print("ROW " + json.dumps(row), flush=True)
        return
    rows = []
    for config in args.config:
        cmd = [sys.executable, __file__, "--child", "--exp-dir", args.exp_dir, "--system", args.system,
               "--lm-text", args.lm_text, "--lexicon", args.lexicon, "--config", config]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"{config} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(lines[0][4:]))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
