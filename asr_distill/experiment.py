"""One experiment directory and everything in it: every path any stage reads or writes is named here, so no other
module joins paths by hand.

Layout of ``EXP``::

    data/       cuts_{train,dev,test}.jsonl.gz (stage 0), {fbank,mfcc}_{split}.jsonl.gz, cmvn_{fbank,mfcc}.npz
    feats/      Lilcom-compressed feature storage
    lang/       phones.txt words.txt lexicon.txt topo L.fst L_disambig.fst lm.arpa G.fst, graph/HCLG.fst
    gmm/        <system>/ for each of mono, tri1, tri2, tri3 that the chain trains (features, inventory, model,
                training alignment, graph); the last system's inventory/ (topo, tree, tid2pdf.txt) and graph/
                (HCLG.fst words.txt phones.txt tree tid2pdf.txt), targets.json, cuts_{split}.jsonl.gz (the
                fbank cuts with their frames' pdf-ids: the DNN stages' one manifest), pdf_ids/ (those arrays),
                pdf_counts.npy (the training alignments' pdf counts)
    teachers/   teachers.json, teacher<k>/ (checkpoint.pt, best.pt, config.json, log.csv, summary.json)
    decode/     <system>/ (wer.json, hyp_test.txt) for every scored system
    distill/    <system>/ like teachers, topk/ (top-k soft targets as cut fields), plots
    export/     <system>/ model directories
    results.json
    .done/<stage>

Each stage writes ``EXP/.done/<stage>`` last; a finished stage is skipped unless forced, an interrupted one (no
marker) is redone from its start.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
from lhotse import CutSet

from .data.arrays import read_arrays_meta
from .data.features import CmvnStats, load_features
from .data.transfer import transfer_paths
from .decode.priors import log_priors_from_counts
from .nnet.frame_data import FrameSource
from .provenance import describe_changes, stage_inputs
from .utils import Pathlike, read_json, write_json

__all__ = ["Experiment", "ExperimentBusy", "StageOptionsChanged", "StageInputsChanged", "SPLITS", "STAGE_ORDER"]

SPLITS = ("train", "dev", "test")
# The stages in recipe order: redoing one leaves every later one to be redone (its outputs came from the old ones).
STAGE_ORDER = ("prepare", "features", "lang", "gmm", "teachers", "evaluate", "distill")


class ExperimentBusy(RuntimeError):
    """Another process holds the experiment directory."""


class StageOptionsChanged(RuntimeError):
    """A finished stage asked again with options other than those it ran with."""


class StageInputsChanged(StageOptionsChanged):
    """A finished stage asked again after the files it read changed."""


class Experiment:
    """Paths and loaders over one experiment directory (``corpus``: the corpus kind, as results.json names it)."""

    def __init__(self, exp_dir: Pathlike, corpus: str = "an4"):
        self.dir = Path(exp_dir)
        self.corpus = corpus
        self.dir.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, other: str) -> Path:
        return self.dir / other

    # -- stage markers ----------------------------------------------------------------------------------------
    def marker(self, stage: str) -> Path:
        return self.dir / ".done" / stage

    def done(self, stage: str) -> bool:
        return self.marker(stage).exists()

    def mark_done(self, stage: str, info: Optional[dict] = None) -> None:
        write_json({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), **(info or {})}, self.marker(stage))

    def check_finished_with(self, stage: str, options: dict) -> None:
        """Raise :class:`StageOptionsChanged` naming them when finished ``stage`` ran with other ``options``, or
        :class:`StageInputsChanged` when what it read has changed since (:mod:`asr_distill.provenance`; a marker
        from before options or inputs were recorded is trusted for them, and so is one for options added since)."""
        marker = read_json(self.marker(stage))
        recorded = marker.get("options")
        # an option the marker does not know was added to the tool after the stage ran: trusted, as above
        differing = {k: v for k, v in options.items() if recorded is not None and k in recorded and recorded[k] != v}
        if differing:
            changed = ", ".join(f"{k}: {recorded.get(k)!r} then, {v!r} now" for k, v in differing.items())
            raise StageOptionsChanged(f"stage {stage} finished in {self.dir} with other options ({changed}); pass "
                                      f"--force to redo it with these")
        if marker.get("inputs") is not None:
            changes = describe_changes(marker["inputs"], stage_inputs(self.dir, stage, options))
            if changes:
                raise StageInputsChanged(f"stage {stage} finished in {self.dir}, but what it read has changed since "
                                         f"({changes}); pass --force to redo it (and the stages after it)")

    def invalidate_after(self, stage: str) -> List[str]:
        """Remove the markers of the stages after ``stage`` (their inputs are being remade); returns them."""
        later = [s for s in STAGE_ORDER[STAGE_ORDER.index(stage) + 1:] if self.done(s)]
        for s in later:
            self.marker(s).unlink()
        return later

    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """Hold ``EXP/.lock`` (an advisory ``flock``) while ``what`` runs; another process asking meanwhile gets
        :class:`ExperimentBusy` naming the holder, rather than two runs rewriting one directory.  The kernel
        releases the lock when its process dies, so an interrupted run leaves nothing to clean up."""
        with open(self.dir / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise ExperimentBusy(f"{self.dir} is in use by another asr-distill ({f.read().strip() or 'unknown'})"
                                     f"; wait for it to finish") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}: {what}, since {time.strftime('%H:%M:%S')}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- stage 0-1: manifests and features --------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def feats_dir(self) -> Path:
        return self.dir / "feats"

    def cuts_path(self, split: str, kind: Optional[str] = None) -> Path:
        """Stage 0's ``cuts_<split>`` (audio and supervisions) or stage 1's ``<kind>_<split>`` (with features)."""
        return self.data_dir / (f"cuts_{split}.jsonl.gz" if kind is None else f"{kind}_{split}.jsonl.gz")

    def cuts(self, split: str, kind: Optional[str] = None) -> CutSet:
        return _read_cuts(self.cuts_path(split, kind))

    def texts(self, split: str) -> Dict[str, str]:
        return {c.id: c.supervisions[0].text for c in self.cuts(split)}

    def speakers(self, split: str) -> Dict[str, str]:
        return {c.id: c.supervisions[0].speaker for c in self.cuts(split)}

    def cmvn_path(self, kind: str) -> Path:
        return self.data_dir / f"cmvn_{kind}.npz"

    def cmvn(self, kind: str) -> CmvnStats:
        return CmvnStats.load(self.cmvn_path(kind))

    def features(self, kind: str, split: str) -> Dict[str, np.ndarray]:
        """CMVN-normalised features of one split, utterance id -> (frames, dim)."""
        return dict(zip(*load_features(self.cuts(split, kind), self.cmvn(kind))))

    # -- stage 2: lang --------------------------------------------------------------------------------------
    @property
    def lang_dir(self) -> Path:
        return self.dir / "lang"

    @property
    def initial_hclg_path(self) -> Path:
        """HCLG of the untrained monophone inventory (stage 2; stage 3 writes the one systems are scored with)."""
        return self.lang_dir / "graph" / "HCLG.fst"

    # -- stage 3: GMM, graph, alignments ----------------------------------------------------------------------
    @property
    def gmm_dir(self) -> Path:
        return self.dir / "gmm"

    @property
    def inventory_dir(self) -> Path:
        return self.gmm_dir / "inventory"

    def gmm_system_dir(self, name: str) -> Path:
        """One GMM system of the chain (mono, tri1, ...): features.json (+ lda_mllt.npy, fmllr_<split>.npz),
        inventory/, final_gmm.npz, ali_train.npz, graph/, system.json."""
        return self.gmm_dir / name

    @property
    def graph_dir(self) -> Path:
        """The decoding graph every system is scored with (HCLG with the trained transitions)."""
        return self.gmm_dir / "graph"

    @property
    def hclg_path(self) -> Path:
        return self.graph_dir / "HCLG.fst"

    @property
    def words_path(self) -> Path:
        return self.graph_dir / "words.txt"

    @property
    def tid2pdf_path(self) -> Path:
        return self.graph_dir / "tid2pdf.txt"

    def labelled_cuts_path(self, split: str) -> Path:
        """The fbank cuts of ``split`` with their frames' pdf-ids (``pdf_ids``): the DNN stages' manifest."""
        return self.gmm_dir / f"cuts_{split}.jsonl.gz"

    def pdf_ids_dir(self, split: str) -> Path:
        return self.gmm_dir / "pdf_ids" / split

    def align_failed_path(self, split: str) -> Path:
        """The utterances of ``split`` the GMM could not align (one id per line; they get no frame labels)."""
        return self.gmm_dir / f"align_failed_{split}.txt"

    @property
    def pdf_counts_path(self) -> Path:
        return self.gmm_dir / "pdf_counts.npy"

    def num_pdfs(self) -> int:
        return int(read_json(_need(self.inventory_dir / "inventory.json", "gmm"))["num_pdfs"])

    def log_priors(self) -> np.ndarray:
        """Log pdf priors of the training alignments: what every hybrid decode divides by."""
        return log_priors_from_counts(np.load(_need(self.pdf_counts_path, "gmm"), allow_pickle=False))

    def frame_source(self, split: str, topk_manifest: Optional[Path] = None) -> FrameSource:
        """How the DNN stages read ``split``'s frames (features normalised with the fbank CMVN, labels, and with
        ``topk_manifest`` the top-k soft-target fields of those cuts)."""
        if topk_manifest is not None:
            return FrameSource(_need(topk_manifest, "distill"), self.cmvn("fbank"), topk=True,
                               topk_meta=read_arrays_meta(topk_manifest))
        if split == "transfer":  # untranscribed audio, its own CMVN statistics (asr_distill.data.transfer)
            paths = transfer_paths(self.transfer_dir)
            return FrameSource(_need(paths["labelled"], "distill --transfer-data"), CmvnStats.load(paths["cmvn"]))
        return FrameSource(_need(self.labelled_cuts_path(split), "gmm"), self.cmvn("fbank"))

    @property
    def transfer_dir(self) -> Path:
        """Stage 6's transfer set of untranscribed audio (``distill --transfer-data``)."""
        return self.dir / "transfer"

    # -- stages 4-6: trained systems --------------------------------------------------------------------------
    @property
    def teachers_dir(self) -> Path:
        return self.dir / "teachers"

    def teacher_dir(self, k: int) -> Path:
        return self.teachers_dir / f"teacher{k}"

    @property
    def teachers_meta_path(self) -> Path:
        return self.teachers_dir / "teachers.json"

    def teachers_meta(self) -> dict:
        """``{"num_teachers", "left", "right"}`` of stage 4."""
        return read_json(_need(self.teachers_meta_path, "train-teachers"))

    def teacher_paths(self) -> List[Path]:
        return [self.teacher_dir(k) / "best.pt" for k in range(self.teachers_meta()["num_teachers"])]

    @property
    def distill_dir(self) -> Path:
        return self.dir / "distill"

    def system_dir(self, name: str) -> Path:
        """Where stage 6 trains system ``name`` (baseline, student, sweep-..., ...)."""
        return self.distill_dir / name

    def topk_manifest(self, T: float, k: int, mean: str) -> Path:
        return self.distill_dir / "topk" / f"cuts_train_T{T:g}_k{k}_{mean}.jsonl.gz"

    def system_checkpoint(self, system: str) -> Path:
        """``teachers/<name>/best.pt`` for ``teacher<k>``, else ``distill/<name>/best.pt``."""
        for cand in (self.teachers_dir / system / "best.pt", self.system_dir(system) / "best.pt"):
            if cand.exists():
                return cand
        raise FileNotFoundError(f"no checkpoint for system {system!r} under {self.teachers_dir} or "
                                f"{self.distill_dir}")

    def decode_dir(self, system: str) -> Path:
        return self.dir / "decode" / system

    def plot_path(self, name: str) -> Path:
        return self.distill_dir / f"{name}.png"

    def export_dir(self, system: str) -> Path:
        return self.dir / "export" / system

    @property
    def results_path(self) -> Path:
        return self.dir / "results.json"


def _need(path: Path, stage: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run stage '{stage}' (and the stages before it) first")
    return path


def _read_cuts(path: Path) -> CutSet:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the earlier stages first")
    return CutSet.from_file(path)
