"""Shared fixtures: one small experiment built on the embedded AN4 slice (real audio, real graphs, real decoder),
reused by every test of the session, and helpers that copy a few utterances of the slice into a scratch corpus.

Never import ``kaldilm`` here or in any test: in the same process as kaldi_hmm_gmm it deadlocks
(``asr_distill.lang.make_g`` runs it in a child process).
"""
from __future__ import annotations

import itertools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "corpora" / "an4_slice"

# Small GMM settings: a monophone system, then triphones whose alignments label the DNNs' frames (senones), so
# every later test runs on tied triphone states as the recipe's default chain gives them.
# The dev grid is 4 scales x 2 penalties instead of the recipe's 11 x 5: the 55-point sweep was most of the
# fixture's time.
GMM_SETTINGS = dict(systems=("mono", "tri1"), num_iters=20, total_gauss=300, num_leaves=200, tri_gauss=800,
                    tree_min_gain=100.0, jobs=1,
                    scorer_options={"scales": (0.05, 0.0667, 0.0833, 0.1), "penalties": (0.0, 2.0)})


def read_fileids(part: str, corpus: Path = SLICE) -> List[str]:
    return [l.strip() for l in (corpus / "etc" / f"an4_{part}.fileids").read_text().splitlines() if l.strip()]


def read_transcription(part: str, corpus: Path = SLICE) -> Dict[str, str]:
    """utt id -> words, parsed here independently of the library (``<s>``, ``</s>``, ``<sil>`` dropped)."""
    out = {}
    for line in (corpus / "etc" / f"an4_{part}.transcription").read_text().splitlines():
        m = re.match(r"^(.*)\(([^()\s]+)\)\s*$", line.strip())
        if m:
            out[m.group(2)] = " ".join(w for w in m.group(1).split() if w not in ("<s>", "</s>", "<sil>"))
    return out


def pron_strings(words: Sequence[str], lexicon, limit: int = 20000) -> set:
    """Every phone string the word sequence can be pronounced as (alternate pronunciations combined)."""
    options = [[tuple(p) for p in lexicon.pronunciations(w)] for w in words]
    return {tuple(p for pron in combo for p in pron) for combo in itertools.islice(itertools.product(*options), limit)}


@dataclass
class BuiltExperiment:
    exp: "object"  # asr_distill.experiment.Experiment
    gmm_rows: List[dict]  # one per GMM system of the chain, mono first

    @property
    def gmm_row(self) -> dict:
        return self.gmm_rows[0]

    @property
    def dir(self) -> Path:
        return self.exp.dir


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> BuiltExperiment:
    """Stages 0-3 (manifests, features + CMVN, lang + HCLG, monophone and triphone GMMs + alignments + GMM decodes)
    on the slice."""
    from asr_distill.experiment import Experiment
    from asr_distill.recipe import stage_features, stage_gmm, stage_lang, stage_prepare

    exp = Experiment(tmp_path_factory.mktemp("exp_slice"))
    stage_prepare(exp, SLICE)
    stage_features(exp)
    stage_lang(exp, SLICE / "etc" / "an4.dic")
    rows = stage_gmm(exp, **GMM_SETTINGS)
    return BuiltExperiment(exp, rows)


@pytest.fixture(scope="session")
def exp(built):
    return built.exp


def load_frames(exp, split: str, left: int, right: int, device="cpu", shard=None):
    """The split's frames as a resident FrameSet (the shard's utterances only with ``shard=(rank, world)``)."""
    from asr_distill.nnet.frame_data import load_frame_set

    return load_frame_set(exp.frame_source(split), left, right, device, shard)[0]


def pdf_alignments(exp, split: str):
    """utt -> the pdf-ids stage 3 stored with the split's fbank cuts."""
    from lhotse import CutSet

    return {c.id: c.load_custom("pdf_ids") for c in CutSet.from_file(exp.labelled_cuts_path(split))}


# ----------------------------------------------------------------------------------------------------------------
# Small scratch corpora copied from the slice

def _pick(part: str, per_speaker: int, speakers: int) -> List[str]:
    """The first ``per_speaker`` utterances of the first ``speakers`` speakers of ``part`` (file ids)."""
    by_spk: Dict[str, List[str]] = {}
    for fid in read_fileids(part):
        by_spk.setdefault(fid.split("/")[1], []).append(fid)
    chosen = []
    for spk in sorted(by_spk)[:speakers]:
        chosen += by_spk[spk][:per_speaker]
    return chosen


@dataclass
class SmallCorpus:
    """A CMU-layout copy of a few utterances; ``train``/``test`` are lists of (file id, text)."""

    root: Path
    train: List[Tuple[str, str]]
    test: List[Tuple[str, str]]

    def audio(self, fileid: str) -> Path:
        return self.root / "wav" / f"{fileid}.flac"

    @staticmethod
    def uid(fileid: str) -> str:
        return fileid.rsplit("/", 1)[-1]

    def all_ids(self) -> List[str]:
        return [self.uid(f) for f, _ in self.train + self.test]

    def write_lists(self, fileids: Dict[str, Sequence[str]] | None = None,
                    transcripts: Dict[str, Sequence[str]] | None = None) -> None:
        """(Re)write etc/an4_{part}.{fileids,transcription}; explicit line lists override the defaults."""
        for part, items in (("train", self.train), ("test", self.test)):
            fid_lines = (fileids or {}).get(part, [f for f, _ in items])
            tr_lines = (transcripts or {}).get(part, [f"<s> {t} </s> ({self.uid(f)})" for f, t in items])
            (self.root / "etc" / f"an4_{part}.fileids").write_text("".join(l + "\n" for l in fid_lines))
            (self.root / "etc" / f"an4_{part}.transcription").write_text("".join(l + "\n" for l in tr_lines))


@pytest.fixture
def small_corpus(tmp_path) -> SmallCorpus:
    """5 real utterances: 2 training speakers x 2 utterances (one speaker becomes dev) + 1 test utterance.

    The transcripts are written Sphinx-style with ``<s> ... </s>`` so that stripping them is exercised too.
    """
    root = tmp_path / "an4_small"
    texts = {**read_transcription("train"), **read_transcription("test")}
    train = [(f, texts[f.rsplit("/", 1)[-1]]) for f in _pick("train", 2, 2)]
    test = [(f, texts[f.rsplit("/", 1)[-1]]) for f in _pick("test", 1, 1)]
    for fid, _ in train + test:
        dst = root / "wav" / f"{fid}.flac"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SLICE / "wav" / f"{fid}.flac", dst)
    (root / "etc").mkdir(parents=True)
    shutil.copyfile(SLICE / "etc" / "an4.dic", root / "etc" / "an4.dic")
    corpus = SmallCorpus(root, train, test)
    corpus.write_lists()
    return corpus
