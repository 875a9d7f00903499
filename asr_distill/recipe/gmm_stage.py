"""Stage 3: the GMM-HMM bootstrap as a chain of systems (Kaldi's mono -> tri1 -> tri2 -> tri3), each aligning the
training data for the next and each decoded and scored; the last one's alignments label every frame (the DNNs'
targets, stored with the fbank cuts) and its graph is the one every later system is decoded with."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..data.arrays import attach_frame_arrays
from ..data.corpus import SPLITS
from ..decode.backend import DecodingConfig, decode_loglikes
from ..decode.priors import log_priors_from_counts, pdf_counts
from ..decode.scorer import GMM_SCALES, WORD_PENALTIES, Scorer
from ..decode.scoring import words_of
from ..experiment import Experiment
from ..fst import invert_symbols, read_symbols, read_tid2pdf
from ..gmm import StateInventory, TrainingGraphs, align_utterances, train_monophone
from ..gmm.align import AlignmentError
from ..gmm.features import GmmFeatures, adapt
from ..gmm.system import DESCRIPTIONS, GMM_SYSTEMS, GmmSystem, check_gmm_systems
from ..gmm.train_lda_mllt import train_lda_mllt
from ..gmm.train_sat import estimate_speaker_fmllr, train_sat
from ..gmm.train_tri import TriphoneConfig, train_triphone
from ..lang import Lang, make_hclg
from ..results import update_results
from ..utils import atomic_path, atomic_write_text, read_json, write_json

__all__ = ["stage_gmm", "UNALIGNED", "shortest_utterances", "check_training_alignments", "gmm_features", "GMM_SYSTEMS", "check_gmm_systems", "GmmSystem", "load_targets_system",
           "system_features"]

log = logging.getLogger(__name__)

# The pdf-id of the frames of a dev/test utterance the GMM could not align (decoded, never scored for frame accuracy)
UNALIGNED = -1

def load_targets_system(exp: Experiment) -> GmmSystem:
    """The GMM system whose alignments label the DNNs' frames (the last of the chain stage 3 trained)."""
    return GmmSystem.load(exp.gmm_system_dir(read_json(exp.gmm_dir / "targets.json")["system"]))


def system_features(exp: Experiment, system: GmmSystem, split: str) -> Dict[str, np.ndarray]:
    """What ``system`` reads for ``split`` (its speaker transforms of that split included)."""
    return system.features(split, exp.features("mfcc", split), exp.speakers(split))


def gmm_features(exp: Experiment, split: str) -> Dict[str, np.ndarray]:
    """MFCC + deltas + delta-deltas, per-speaker mean-normalised: what the monophone and tri1 systems read."""
    return GmmFeatures("delta").speaker_independent(exp.features("mfcc", split))


class _Corpus:
    """The MFCCs, transcripts and speakers of every split, read once for the whole chain."""

    def __init__(self, exp: Experiment):
        self.mfcc = {s: exp.features("mfcc", s) for s in SPLITS}
        self.texts = {s: exp.texts(s) for s in SPLITS}
        self.speakers = {s: exp.speakers(s) for s in SPLITS}

    def feats(self, system: GmmSystem, split: str) -> Dict[str, np.ndarray]:
        return system.features(split, self.mfcc[split], self.speakers[split])


def shortest_utterances(lengths: Mapping[str, int], n: int) -> List[str]:
    """The ``n`` shortest utterances (all with ``n <= 0``), ties broken by id (``subset_data_dir.sh --shortest``)."""
    order = sorted(lengths, key=lambda u: (lengths[u], u))
    return order if n <= 0 else order[:n]


def _train(name: str, prev: Optional[GmmSystem], lang: Lang, data: _Corpus, opts: dict) -> GmmSystem:
    texts, mfcc = data.texts["train"], data.mfcc["train"]
    if name == "mono":
        # train_mono.sh on the shortest utterances (long ones defeat a flat start), then align_si.sh: every
        # training utterance aligned by the trained monophones, with a retry beam -- what tri1 starts from
        features = GmmFeatures("delta")
        inventory = StateInventory.monophone(lang)
        feats = features.speaker_independent(mfcc)
        subset = shortest_utterances({u: len(f) for u, f in feats.items()}, opts["mono_subset"])
        if len(subset) < len(feats):
            log.info("mono: trained on the %d shortest of %d training utterances (up to %.1f s)", len(subset),
                     len(feats), len(feats[subset[-1]]) / 100)
        graphs = TrainingGraphs(lang, inventory, {u: texts[u] for u in subset})
        gmm, _ = train_monophone(inventory, graphs, {u: feats[u] for u in subset}, num_iters=opts["num_iters"],
                                 total_gauss=opts["total_gauss"])
        if len(subset) < len(feats):
            graphs = TrainingGraphs(lang, inventory, texts)
        alis, _, _ = align_utterances(gmm.to_am(), inventory, graphs, feats, beam=10.0, retry_beam=40.0)
        return GmmSystem(name, features, inventory, gmm, alis)
    config = TriphoneConfig(num_leaves=opts["num_leaves"], total_gauss=opts["tri_gauss"],
                            min_gain=opts["tree_min_gain"])
    if name == "tri1":
        features = GmmFeatures("delta")
        inventory, gmm, alis, _ = train_triphone(lang, prev.inventory, prev.train_alis,
                                                 features.speaker_independent(mfcc), texts, config, name=name)
    elif name == "tri2":
        inventory, gmm, alis, features = train_lda_mllt(lang, prev.inventory, prev.train_alis, mfcc, texts, config)
    else:
        inventory, gmm, alis, features = train_sat(lang, prev.inventory, prev.gmm, prev.features, prev.train_alis,
                                                   mfcc, data.speakers["train"], texts, config)
    return GmmSystem(name, features, inventory, gmm, alis)


def _write_graph(lang: Lang, inventory: StateInventory, graph_dir: Path) -> None:
    hclg = make_hclg(lang, inventory)
    graph_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(graph_dir / "HCLG.fst") as tmp:
        hclg.write(tmp)
    for name in ("words.txt", "phones.txt"):
        atomic_write_text(graph_dir / name, (lang.dir / name).read_text())
    for name in ("tree", "tid2pdf.txt"):  # as the inventory saved them (atomically)
        with atomic_path(graph_dir / name, suffix="") as tmp:
            shutil.copyfile(graph_dir.parent / "inventory" / name, tmp)


def _align(system: GmmSystem, lang: Lang, texts: Mapping[str, str], feats: Mapping[str, np.ndarray]
           ) -> Tuple[Dict[str, List[int]], List[str]]:
    graphs = TrainingGraphs(lang, system.inventory, {u: texts[u] for u in feats})
    alis, failed, avg = align_utterances(system.gmm.to_am(), system.inventory, graphs, feats)
    log.info("%s: aligned %d utterances (%d failed), avg log-likelihood per frame %.3f", system.name, len(alis),
             len(failed), avg)
    return alis, failed


def _first_pass_fmllr(exp: Experiment, system: GmmSystem, si: GmmSystem, lang: Lang, data: _Corpus, split: str,
                      jobs: int, beam: float) -> Dict[str, np.ndarray]:
    """Speaker transforms for a split without using its transcripts (Kaldi's decode_fmllr.sh): decode with the
    speaker-independent system at its tuned scale, align those hypotheses with the SAT model (twice: on the
    unadapted, then on the adapted features) and estimate each speaker's fMLLR from them, silence weighted 0.01."""
    si_dir = exp.gmm_system_dir(si.name)
    scored = exp.decode_dir(f"gmm-{si.name}") / "wer.json"
    # an unscored speaker-independent system decodes at Kaldi's decode_fmllr.sh first-pass scale
    tuned = read_json(scored) if scored.is_file() else {"acoustic_scale": 0.083333, "word_penalty": 0.0}
    config = DecodingConfig(beam=beam, acoustic_scale=tuned["acoustic_scale"], word_penalty=tuned["word_penalty"])
    si_feats = data.feats(si, split)
    ids = decode_loglikes(si_dir / "graph" / "HCLG.fst", read_tid2pdf(si_dir / "graph" / "tid2pdf.txt"),
                          {u: si.gmm.loglikes(f) for u, f in si_feats.items()}, config, jobs)
    id2word = invert_symbols(read_symbols(si_dir / "graph" / "words.txt"))
    hyps = {u: " ".join(words_of(h, id2word)) for u, h in ids.items()}
    base = system.features.speaker_independent(data.mfcc[split])
    transforms: Dict[str, np.ndarray] = {}
    for _ in range(2):
        adapted = adapt(base, data.speakers[split], transforms)
        alis, _ = _align(system, lang, hyps, adapted)
        transforms = estimate_speaker_fmllr(system.gmm, system.inventory, base, alis, data.speakers[split],
                                            lang.silence_phones, silence_weight=0.01, previous=transforms)
    return transforms


def _score(exp: Experiment, system: GmmSystem, lang: Lang, data: _Corpus, jobs: int, beam: float,
           scorer_options: Optional[dict] = None) -> dict:
    """Decode dev and test with the system's own graph (scale tuned on dev) and its own frame labels."""
    feats = {s: data.feats(system, s) for s in ("dev", "test")}
    labels = {}
    for s in ("dev", "test"):
        alis, _ = _align(system, lang, data.texts[s], feats[s])
        labels[s] = {u: system.inventory.tids_to_pdfs(a) for u, a in alis.items()}
    counts = pdf_counts([system.inventory.tids_to_pdfs(a) for a in system.train_alis.values()],
                        system.inventory.num_pdfs)
    options = {"scales": GMM_SCALES, **(scorer_options or {})}
    scorer = Scorer(exp, jobs, beam, graph_dir=exp.gmm_system_dir(system.name) / "graph", labels=labels,
                    log_priors=log_priors_from_counts(counts), **options)
    loglikes = {s: {u: system.gmm.loglikes(f) for u, f in feats[s].items()} for s in feats}
    gmm = system.gmm
    return scorer.evaluate(f"gmm-{system.name}", "gmm", loglikes, int(gmm.means.size * 2 + gmm.weights.size),
                           {"num_gauss": int(gmm.weights.size), "num_pdfs": system.inventory.num_pdfs,
                            "system": DESCRIPTIONS[system.name],
                            "train_seconds": read_json(exp.gmm_system_dir(system.name) / "system.json")
                            ["train_seconds"]})


def _write_targets(exp: Experiment, system: GmmSystem, lang: Lang, data: _Corpus) -> None:
    """The last system labels every frame: forced alignment of each split (its fbank cuts with the frames' pdf-ids
    become ``gmm/cuts_<split>``), the training pdf counts, and its inventory and graph as the experiment's."""
    for split in SPLITS:
        alis, failed = _align(system, lang, data.texts[split], data.feats(system, split))
        atomic_write_text(exp.align_failed_path(split), "".join(f"{u}\n" for u in failed))
        if failed:
            log.warning("%s: %d utterance(s) could not be aligned (listed in %s): %s; %s", split, len(failed),
                        exp.align_failed_path(split), failed[:10],
                        "left out of training" if split == "train" else "decoded, left out of frame accuracy")
        pdf_alis = {u: system.inventory.tids_to_pdfs(a).astype(np.int32) for u, a in alis.items()}
        if split == "train":
            with atomic_path(exp.pdf_counts_path) as tmp:
                np.save(tmp, pdf_counts(list(pdf_alis.values()), system.inventory.num_pdfs))
        cuts = exp.cuts(split, "fbank")
        if split != "train":
            # dev and test keep every utterance: one the GMM could not align is still decoded and scored for WER;
            # its frames carry UNALIGNED and frame accuracies leave them out
            pdf_alis.update({c.id: np.full(c.num_frames, UNALIGNED, dtype=np.int32) for c in cuts
                             if c.id not in pdf_alis})
        storage = exp.pdf_ids_dir(split)
        shutil.rmtree(storage, ignore_errors=True)  # a redone stage leaves no arrays of utterances that now failed
        attach_frame_arrays(((c, {"pdf_ids": pdf_alis[c.id]}) for c in cuts if c.id in pdf_alis), storage,
                            exp.labelled_cuts_path(split))
    src = exp.gmm_system_dir(system.name)
    for name in ("inventory", "graph"):
        dst = exp.gmm_dir / name
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src / name, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    write_json({"system": system.name, "description": DESCRIPTIONS[system.name]}, exp.gmm_dir / "targets.json")


def check_training_alignments(exp: Experiment, system: GmmSystem, data: _Corpus, max_failures: float) -> None:
    """List the training utterances ``system`` could not align (``gmm/<system>/align_failed_train.txt``, one per line
    with the reason) and refuse to go on when they are more than ``max_failures`` of the training set: the next
    system, or the DNNs, would learn from what is left."""
    texts, frames = data.texts["train"], {u: len(f) for u, f in data.mfcc["train"].items()}
    failed = sorted(u for u in frames if u not in system.train_alis)
    path = exp.gmm_system_dir(system.name) / "align_failed_train.txt"
    atomic_write_text(path, "".join(f"{u} no alignment within the retry beam ({frames[u]} frames, "
                                    f"{len(texts[u].split())} words)\n" for u in failed))
    if not failed:
        return
    fraction = len(failed) / max(1, len(frames))
    log.warning("%s: %d of %d training utterances (%.1f%%) could not be aligned (listed in %s): %s", system.name,
                len(failed), len(frames), 100 * fraction, path, failed[:5])
    if fraction > max_failures:
        raise AlignmentError(
            f"{system.name}: {len(failed)} of {len(frames)} training utterances ({100 * fraction:.1f}%) could not be "
            f"aligned, more than --max-align-failures {max_failures:g} allows; they are listed in {path}.  Check "
            f"their transcripts against the audio; for long utterances train the monophones on fewer, shorter ones "
            f"(--mono-subset); or allow more (--max-align-failures)")


def stage_gmm(exp: Experiment, systems: Sequence[str] = GMM_SYSTEMS, num_iters: int = 40, total_gauss: int = 1000,
              num_leaves: int = 2000, tri_gauss: int = 10000, tree_min_gain: float = 300.0, jobs: int = 2,
              beam: float = 13.0, reuse_trained: bool = True, scorer_options: Optional[dict] = None,
              mono_subset: int = 1000, max_align_failures: float = 0.05,
              score_systems: Optional[Sequence[str]] = None) -> List[dict]:
    """Stage 3: train, decode and score each GMM system of ``systems`` in turn; the last one's alignments are the
    DNNs' targets.  ``reuse_trained``: systems whose training finished (with the same options) in an interrupted
    earlier run are reused (False: everything is trained anew).  ``scorer_options``: the
    :class:`~asr_distill.decode.scorer.Scorer`'s (default: the GMM scale grid).  ``mono_subset``: the monophones
    train on this many of the shortest training utterances (0: all), as Kaldi's recipes do, then align them all;
    ``max_align_failures``: the fraction of training utterances a system may fail to align before the stage
    stops (:func:`check_training_alignments`).  ``score_systems``: the systems decoded and scored (default: all;
    the others are trained, aligned and given a graph).  Returns the results rows."""
    systems = check_gmm_systems(systems)
    if not 0.0 <= max_align_failures <= 1.0:
        raise ValueError(f"max_align_failures must be a fraction in [0, 1], not {max_align_failures}")
    lang = Lang.load(exp.lang_dir)
    data = _Corpus(exp)
    opts = {"num_iters": num_iters, "total_gauss": total_gauss, "num_leaves": num_leaves, "tri_gauss": tri_gauss,
            "tree_min_gain": tree_min_gain, "mono_subset": mono_subset}
    score_settings = {"beam": beam, "scales": GMM_SCALES, "penalties": WORD_PENALTIES, **(scorer_options or {})}
    score_settings = json.loads(json.dumps(score_settings))  # tuples as lists: comparable with a stored copy
    rows, prev, chain_reused = [], None, True
    for name in systems:
        out = exp.gmm_system_dir(name)
        meta = out / "system.json"
        own = {k: opts[k] for k in (("num_iters", "total_gauss", "mono_subset") if name == "mono" else
                                    ("num_leaves", "tri_gauss", "tree_min_gain"))}
        own["after"] = prev.name if prev else None
        # reused only when every system before it was too: one trained anew changes the alignments it starts from
        reused = reuse_trained and chain_reused and meta.exists() and read_json(meta)["options"] == own
        if reused:
            log.info("%s: reusing the trained system in %s", name, out)
            system = GmmSystem.load(out)
        else:
            chain_reused = False
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.time()
            system = _train(name, prev, lang, data, opts)
            system.save(out, own, time.time() - t0)
            system = GmmSystem.load(out)  # as every later reader gets it (transitions re-estimated from counts)
        check_training_alignments(exp, system, data, max_align_failures)
        scored = out / "scored.json"
        if reused and scored.exists() and read_json(scored)["settings"] == score_settings:
            # the same system (and the same systems before it) scored with the same settings: its graph, its
            # dev/test fMLLR and its row are already there
            rows.append(read_json(scored)["row"])
            update_results(exp.dir, exp.corpus, rows[-1])
            prev = system
            continue
        _write_graph(lang, system.inventory, out / "graph")
        if system.features.speaker_adapted:
            for split in ("dev", "test"):
                system.features.fmllr[split] = _first_pass_fmllr(exp, system, prev, lang, data, split, jobs, beam)
            system.features.save(out)
        if score_systems is not None and name not in score_systems:
            log.info("%s: not scored (--score-systems)", name)
            prev = system
            continue
        rows.append(_score(exp, system, lang, data, jobs, beam, scorer_options))
        write_json({"settings": score_settings, "row": rows[-1]}, scored)
        prev = system
    _write_targets(exp, prev, lang, data)
    return rows
