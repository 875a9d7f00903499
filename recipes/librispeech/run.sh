#!/usr/bin/env bash
# LibriSpeech / Mini LibriSpeech recipe (same stages and results.json as AN4).
#
#   recipes/librispeech/run.sh --corpus-dir DIR --exp-dir DIR [--download] [--stage 0] [--stop-stage 7]
#
# DIR holds LibriSpeech parts (train-clean-100, dev-clean, test-clean, ... or Mini LibriSpeech's train-clean-5 and
# dev-clean-2).  train* parts train; dev* tune; test* test (without a test part the dev parts test and dev comes
# from held-out training speakers).  --download fetches Mini LibriSpeech from openslr.org into DIR first.
# A corpus shipped as one directory: --dev-speakers N --test-speakers N.  Lexicon: CMUdict, grapheme-rule
# pronunciations for the words it lacks (lang/oov_fallback.txt).  Options and stages: recipes/common/stages.sh.
#
# The frame-level stages hold a split's features in memory as one tensor (float16 on disk, float32 in use):
# train-clean-100 (~36M frames) needs ~6 GB; the 960 h set does not fit.
corpus=librispeech
corpus_dir=
exp_dir=exp/librispeech
lexicon=
stop_stage=7
num_teachers=4
teacher_args=""
distill_args=""
gmm_args="--total-gauss 2000 --num-leaves 2500 --tri-gauss 15000 --mono-subset 500"  # Kaldi's mini_librispeech sizes
source "$(dirname "$0")/../common/stages.sh"
