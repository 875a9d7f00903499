#!/usr/bin/env bash
# Any Kaldi-style data directory (wav.scp, text, utt2spk, optional segments) through the same stages.
#
#   recipes/kaldi/run.sh --train-dir data/train --test-dir data/test [--dev-dir data/dev] --exp-dir exp/mycorpus
#   recipes/kaldi/run.sh --train-dir data/all --dev-speakers 4 --test-speakers 8 --exp-dir exp/mycorpus
#
# wav.scp entries may be files or Kaldi pipes ("rec sph2pipe -f wav x.sph |").  Any sample rate (resampled to
# 16 kHz).  Lexicon: --lexicon FILE if given, then CMUdict, then grapheme rules (lang/oov_fallback.txt lists
# those).  Without --dev-dir, dev = held-out training speakers.  Options and stages: recipes/common/stages.sh.
corpus=kaldi
corpus_dir=
exp_dir=exp/kaldi
lexicon=
stop_stage=7
num_teachers=4
teacher_args=""
distill_args=""
source "$(dirname "$0")/../common/stages.sh"
