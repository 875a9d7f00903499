#!/usr/bin/env bash
# yesno smoke run (2-3 minutes on 2 CPU cores): 60 files of eight Hebrew "yes"/"no" words, 8 kHz, one speaker.
#
#   recipes/yesno/run.sh --corpus-dir DIR --exp-dir exp/yesno [--download]
#
# --download fetches waves_yesno from openslr.org (resource 1) into DIR.  Without network, build a synthetic
# stand-in with the same names and rate:  python tools/make_layouts.py yesno DIR
# Options and stages: recipes/common/stages.sh.
corpus=yesno
corpus_dir=
exp_dir=exp/yesno
lexicon=
stop_stage=7
num_teachers=2
teacher_args="--hidden-dim 128 --num-layers 2 --left-context 3 --right-context 3 --dropout 0 --epochs 4 --batch-size 128"
distill_args="--experiments table1"
gmm_args="--gmm-stages mono --num-iters 10 --total-gauss 50"  # as Kaldi's yesno: two words need no context
source "$(dirname "$0")/../common/stages.sh"
