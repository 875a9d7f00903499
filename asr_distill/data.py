"""Corpus -> validated Lhotse manifests -> compressed features (+ CMVN statistics).

AN4 comes in CMU's own layout::

    wav/an4_clstk/<speaker>/<utt>.sph        (train; .flac/.wav are accepted too)
    wav/an4test_clstk/<speaker>/<utt>.sph    (test)
    etc/an4_{train,test}.fileids             (one path per line, relative to wav/, no extension)
    etc/an4_{train,test}.transcription       ("<s> WORDS </s> (utt-id)" per line)
    etc/an4.dic                              (pronunciations; alternates as WORD(2))

Every problem found (unreadable or truncated audio, missing or extra transcripts, empty text, duplicate ids,
unexpected sample rate) is collected into a report naming the file or utterance; :func:`prepare_an4` raises
:class:`CorpusError` listing them all unless ``skip_bad=True``, in which case the bad items are written to
``bad_utterances.txt`` next to the manifests and left out.

A speaker-disjoint dev set is carved from train (the test set is never used for any choice).  Manifests are
written atomically: a crash leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .utils import Pathlike, atomic_path

if TYPE_CHECKING:
    from lhotse import CutSet

__all__ = [
    "CorpusError", "Utterance", "BadItem", "read_an4", "speaker_disjoint_split", "make_cutset", "prepare_an4",
    "check_audio", "report_bad", "write_splits", "write_manifest",
    "compute_features", "FEATURE_CONFIGS", "CmvnStats", "compute_cmvn", "load_features", "set_soundfile_backend",
]

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".sph", ".flac", ".wav")
SPLITS = ("train", "dev", "test")


class CorpusError(RuntimeError):
    """Bad corpus input; the message lists every problem with the file or utterance it concerns."""


@dataclass
class Utterance:
    utt_id: str
    speaker: str
    audio_path: Path
    text: str
    num_samples: int = 0  # of the whole recording (0: not read yet)
    sampling_rate: int = 0
    # A segment of a longer recording (Kaldi ``segments``): its start and duration in seconds and the recording's
    # id; None/0 for a whole-file utterance, whose recording id is the utterance id.
    start: float = 0.0
    duration: Optional[float] = None
    recording_id: Optional[str] = None
    command: Optional[str] = None  # Kaldi wav.scp pipe without its "|" ("sph2pipe -f wav x.sph") instead of a file


@dataclass
class BadItem:
    item: str  # utterance id or file path
    problem: str

    def __str__(self) -> str:
        return f"{self.item}: {self.problem}"


def set_soundfile_backend() -> None:
    """Make Lhotse read audio (.sph included) with libsndfile: the default needs the ``sph2pipe`` binary."""
    from lhotse.audio import set_current_audio_backend
    from lhotse.audio.backend import LibsndfileBackend

    set_current_audio_backend(LibsndfileBackend())


def _sphere_sample_count(path: Path) -> Optional[int]:
    """``sample_count`` from a NIST SPHERE header, to detect truncated files that libsndfile would read short."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head.startswith(b"NIST_1A"):
        return None
    m = re.search(rb"sample_count -i (\d+)", head)
    return int(m.group(1)) if m else None


def check_audio(path: Path, expected_rate: Optional[int], command: Optional[str] = None
                ) -> Tuple[Optional[str], int, int]:
    """Decode the whole file (or the output of a Kaldi wav.scp pipe's ``command``); return (problem or None,
    num_samples, sampling_rate).  ``expected_rate=None`` accepts any rate (the cuts get resampled)."""
    import io
    import subprocess

    import soundfile as sf

    try:
        if command is not None:
            proc = subprocess.run(command, shell=True, capture_output=True, timeout=300)
            if proc.returncode != 0:
                return (f"command failed with status {proc.returncode}: "
                        f"{proc.stderr.decode(errors='replace').strip()[:120]}"), 0, 0
            data = io.BytesIO(proc.stdout)
            info = sf.info(data)
            data.seek(0)
            audio, sr = sf.read(data, dtype="int16", always_2d=True)
        else:
            info = sf.info(str(path))
            audio, sr = sf.read(str(path), dtype="int16", always_2d=True)
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/... for corrupt files
        return f"unreadable audio ({type(e).__name__}: {str(e).strip()[:120]})", 0, 0
    n = audio.shape[0]
    if n == 0:
        return "audio has no samples", 0, sr
    if command is None and path.suffix == ".sph":
        declared = _sphere_sample_count(path)
        if declared is not None and declared != n:
            return f"truncated audio: header declares {declared} samples, file holds {n}", n, sr
    elif command is None and info.frames != n:
        return f"truncated audio: header declares {info.frames} samples, decoded {n}", n, sr
    if expected_rate is not None and sr != expected_rate:
        return f"unexpected sample rate {sr} Hz (expected {expected_rate} Hz)", n, sr
    return None, n, sr


_TRANS_RE = re.compile(r"^(?P<text>.*?)\s*\((?P<id>[^()\s]+)\)\s*$")


def _read_transcription(path: Path, bad: List[BadItem]) -> Dict[str, str]:
    texts: Dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _TRANS_RE.match(line)
        if not m:
            bad.append(BadItem(f"{path.name}:{lineno}", f"cannot parse transcription line {line!r}"))
            continue
        uid = m.group("id")
        words = [w for w in m.group("text").split() if w not in ("<s>", "</s>", "<sil>")]
        if uid in texts:
            bad.append(BadItem(uid, f"duplicate utterance id in {path.name}"))
            continue
        texts[uid] = " ".join(words)
    return texts


def _find_audio(wav_dir: Path, fileid: str) -> Optional[Path]:
    for ext in AUDIO_EXTENSIONS:
        p = wav_dir / f"{fileid}{ext}"
        if p.is_file():
            return p
    return None


def read_an4(corpus_dir: Pathlike, part: str, sampling_rate: int = 16000,
             check_audio_files: bool = True) -> Tuple[List[Utterance], List[BadItem]]:
    """Read and validate one AN4 part (``train`` or ``test``); returns the good utterances and the problems."""
    corpus_dir = Path(corpus_dir)
    etc, wav = corpus_dir / "etc", corpus_dir / "wav"
    fileids_path = etc / f"an4_{part}.fileids"
    trans_path = etc / f"an4_{part}.transcription"
    for p in (fileids_path, trans_path):
        if not p.is_file():
            raise CorpusError(f"{p}: missing (is {corpus_dir} an AN4 corpus in CMU's layout?)")
    bad: List[BadItem] = []
    texts = _read_transcription(trans_path, bad)
    seen: set = set()
    utts: List[Utterance] = []
    fileids = [line.strip() for line in fileids_path.read_text().splitlines() if line.strip()]
    for fileid in fileids:
        uid = Path(fileid).name
        if uid in seen:
            bad.append(BadItem(uid, f"duplicate utterance id in {fileids_path.name}"))
            continue
        seen.add(uid)
        audio = _find_audio(wav, fileid)
        if audio is None:
            bad.append(BadItem(str(wav / fileid), f"audio file missing (tried {', '.join(AUDIO_EXTENSIONS)})"))
            continue
        if uid not in texts:
            bad.append(BadItem(uid, f"no transcript in {trans_path.name} for {audio}"))
            continue
        if not texts[uid]:
            bad.append(BadItem(uid, "empty transcript"))
            continue
        n, sr = 0, sampling_rate
        if check_audio_files:
            problem, n, sr = check_audio(audio, sampling_rate)
            if problem:
                bad.append(BadItem(str(audio), problem))
                continue
        # AN4 file ids are <set>/<speaker>/<utt>
        speaker = Path(fileid).parent.name or uid.split("-")[1]
        utts.append(Utterance(uid, speaker, audio, texts[uid], n, sr))
    for uid in sorted(set(texts) - seen):
        bad.append(BadItem(uid, f"transcript in {trans_path.name} has no entry in {fileids_path.name}"))
    return utts, bad


def speaker_disjoint_split(utts: Sequence[Utterance], dev_fraction: float = 0.1,
                           min_dev_speakers: int = 1) -> Tuple[List[Utterance], List[Utterance]]:
    """Carve a dev set of whole speakers out of ``utts``; the choice depends only on speaker names (a stable hash),
    so it is the same on every machine and for every subset of the corpus that keeps those speakers."""
    speakers = sorted({u.speaker for u in utts}, key=lambda s: hashlib.md5(s.encode()).hexdigest())
    n_dev = max(min_dev_speakers, int(round(dev_fraction * len(speakers))))
    if n_dev >= len(speakers):
        raise CorpusError(f"cannot carve {n_dev} dev speakers out of {len(speakers)} training speakers")
    dev_speakers = set(speakers[:n_dev])
    return ([u for u in utts if u.speaker not in dev_speakers], [u for u in utts if u.speaker in dev_speakers])


def make_cutset(utts: Sequence[Utterance], sampling_rate: Optional[int] = None):
    """Lhotse CutSet with one cut per utterance (the cut id being the utterance id); utterances that are segments
    share their recording.  With ``sampling_rate``, cuts at another rate are resampled to it (Lhotse's own
    resampler, no torchaudio), so one feature configuration serves 8 kHz and 16 kHz corpora alike."""
    from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment

    set_soundfile_backend()
    recordings: Dict[str, "Recording"] = {}
    cuts = []
    for u in utts:
        rec_id = u.recording_id or u.utt_id
        rec = recordings.get(rec_id)
        if rec is None:
            if u.command:
                source = AudioSource(type="command", channels=[0], source=u.command)
            else:
                source = AudioSource(type="file", channels=[0], source=str(Path(u.audio_path).resolve()))
            if u.num_samples:  # already decoded by validation: no need to read the audio again
                rec = Recording(id=rec_id, sources=[source], sampling_rate=u.sampling_rate,
                                num_samples=u.num_samples, duration=u.num_samples / u.sampling_rate)
            else:
                rec = Recording.from_file(Path(u.audio_path).resolve(), recording_id=rec_id)
            recordings[rec_id] = rec
        duration = rec.duration - u.start if u.duration is None else u.duration
        sup = SupervisionSegment(id=u.utt_id, recording_id=rec_id, start=0.0, duration=duration,
                                 channel=0, text=u.text, speaker=u.speaker, language="English")
        cut = MonoCut(id=u.utt_id, start=u.start, duration=duration, channel=0, recording=rec, supervisions=[sup])
        if sampling_rate and rec.sampling_rate != sampling_rate:
            cut = cut.resample(sampling_rate)
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def write_manifest(manifest, path: Pathlike) -> None:
    with atomic_path(path) as tmp:
        manifest.to_file(tmp)


def report_bad(bad: Sequence[BadItem], source: Pathlike, output_dir: Path, skip_bad: bool) -> None:
    """Raise :class:`CorpusError` listing every problem, or (``skip_bad``) write them to ``bad_utterances.txt``."""
    if not bad:
        return
    report = "\n".join(f"  {b}" for b in bad)
    if not skip_bad:
        raise CorpusError(f"{len(bad)} problem(s) in {source} (pass --skip-bad to leave them out):\n{report}")
    bad_path = output_dir / "bad_utterances.txt"
    with atomic_path(bad_path) as tmp:
        Path(tmp).write_text("".join(f"{b.item}\t{b.problem}\n" for b in bad))
    log.warning("skipping %d bad item(s), listed in %s:\n%s", len(bad), bad_path, report)


def write_splits(splits: Dict[str, Sequence[Utterance]], output_dir: Pathlike, source: Pathlike = "",
                 sampling_rate: Optional[int] = None) -> Dict[str, "CutSet"]:
    """Write ``cuts_{train,dev,test}.jsonl.gz`` (atomically) after checking that no utterance is in two splits."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ids = {name: {u.utt_id for u in utts} for name, utts in splits.items()}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        shared = ids.get(a, set()) & ids.get(b, set())
        if shared:
            raise CorpusError(f"{source}: {len(shared)} utterance(s) are in both {a} and {b}, e.g. {sorted(shared)[:3]}")
    cutsets = {}
    for name, utts in splits.items():
        if not utts:
            raise CorpusError(f"{source}: the {name} set is empty")
        cuts = make_cutset(utts, sampling_rate)
        write_manifest(cuts, output_dir / f"cuts_{name}.jsonl.gz")
        cutsets[name] = cuts
        log.info("%s: %d utterances, %d speakers, %.1f min", name, len(utts), len({u.speaker for u in utts}),
                 sum(c.duration for c in cuts) / 60)
    return cutsets


def prepare_an4(corpus_dir: Pathlike, output_dir: Pathlike, skip_bad: bool = False, dev_fraction: float = 0.1,
                sampling_rate: int = 16000) -> Dict[str, "CutSet"]:
    """Validate AN4 and write ``{train,dev,test}`` cut manifests (``.jsonl.gz``)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train, bad_train = read_an4(corpus_dir, "train", sampling_rate)
    test, bad_test = read_an4(corpus_dir, "test", sampling_rate)
    bad = bad_train + bad_test
    train_ids, test_ids = {u.utt_id for u in train}, {u.utt_id for u in test}
    overlap = train_ids & test_ids
    for uid in sorted(overlap):
        bad.append(BadItem(uid, "utterance id appears in both train and test"))
    report_bad(bad, corpus_dir, output_dir, skip_bad)
    test = [u for u in test if u.utt_id not in overlap]
    train = [u for u in train if u.utt_id not in overlap]
    train, dev = speaker_disjoint_split(train, dev_fraction)
    return write_splits({"train": train, "dev": dev, "test": test}, output_dir, corpus_dir)


# ----------------------------------------------------------------------------------------------------------------
# Features

FEATURE_CONFIGS = {
    # 40 log-mel filterbanks as in the paper; Lhotse's defaults otherwise (high_freq=-400, no dither), kept identical
    # at export time.
    "fbank": dict(num_filters=40),
    # 13 MFCCs for the GMM; deltas and CMVN are applied when the GMM reads them.
    "mfcc": dict(num_ceps=13, num_filters=23),
}


def feature_extractor(kind: str):
    from lhotse import Fbank, FbankConfig, Mfcc, MfccConfig

    if kind == "fbank":
        return Fbank(FbankConfig(**FEATURE_CONFIGS["fbank"]))
    if kind == "mfcc":
        return Mfcc(MfccConfig(**FEATURE_CONFIGS["mfcc"]))
    raise ValueError(f"unknown feature kind {kind!r}")


def compute_features(cuts, kind: str, storage_dir: Pathlike, manifest_path: Pathlike, num_jobs: int = 1):
    """Extract ``kind`` features (Lilcom-compressed, chunked) and write the cut manifest that points to them.

    Features go to a temporary storage name first and the manifest is written last, atomically: an interrupted run
    leaves no manifest, so the stage is redone rather than trusted half-written.
    """
    from lhotse import LilcomChunkyWriter

    set_soundfile_backend()
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    storage = storage_dir / f"{Path(manifest_path).name.split('.')[0]}"
    for stale in storage_dir.glob(storage.name + ".lca*"):
        stale.unlink()
    # Worker processes would lose the soundfile backend set above, so extraction runs in this process.
    with_feats = cuts.compute_and_store_features(
        extractor=feature_extractor(kind), storage_path=storage, num_jobs=1, storage_type=LilcomChunkyWriter,
        progress_bar=True)
    write_manifest(with_feats, manifest_path)
    return with_feats


@dataclass
class CmvnStats:
    """Per-speaker (and global) mean / standard deviation of a feature kind, for mean-variance normalisation.

    ``mode="speaker"`` normalises each utterance with its speaker's statistics (unseen speakers at test time get
    their own statistics computed from their utterances: like Kaldi's per-speaker CMVN on a test set); ``"global"``
    uses one mean/std from the training set; ``"none"`` leaves features alone.
    """

    mode: str
    global_mean: np.ndarray
    global_std: np.ndarray
    speaker_mean: Dict[str, np.ndarray] = field(default_factory=dict)
    speaker_std: Dict[str, np.ndarray] = field(default_factory=dict)
    norm_vars: bool = True  # False: mean normalisation only (Kaldi's default for GMM features)

    def apply(self, feats: np.ndarray, speaker: str) -> np.ndarray:
        if self.mode == "none":
            return feats
        if self.mode == "speaker" and speaker in self.speaker_mean:
            mean, std = self.speaker_mean[speaker], self.speaker_std[speaker]
        else:
            mean, std = self.global_mean, self.global_std
        return (feats - mean) / std if self.norm_vars else feats - mean

    def save(self, path: Pathlike) -> None:
        arrays = {"global_mean": self.global_mean, "global_std": self.global_std,
                  "mode": np.array(self.mode),
                  "norm_vars": np.array(self.norm_vars)}
        for spk in self.speaker_mean:
            arrays[f"mean/{spk}"] = self.speaker_mean[spk]
            arrays[f"std/{spk}"] = self.speaker_std[spk]
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: Pathlike) -> "CmvnStats":
        z = np.load(path, allow_pickle=False)
        stats = cls(str(z["mode"]), z["global_mean"], z["global_std"], norm_vars=bool(z["norm_vars"]))
        for key in z.files:
            if key.startswith("mean/"):
                spk = key[5:]
                stats.speaker_mean[spk] = z[key]
                stats.speaker_std[spk] = z[f"std/{spk}"]
        return stats


def _moments(mats: Iterable[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    n, s, s2 = 0, 0.0, 0.0
    for m in mats:
        m = m.astype(np.float64)
        n += len(m)
        s = s + m.sum(0)
        s2 = s2 + (m * m).sum(0)
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 1e-10))
    return mean.astype(np.float32), std.astype(np.float32)


def compute_cmvn(cutsets: Sequence, mode: str = "speaker", global_from=None, norm_vars: bool = True) -> CmvnStats:
    """Statistics of the loaded features: global ones from ``global_from`` (the training cuts), per-speaker ones from
    every cut of ``cutsets`` (a speaker's own statistics need no labels, so test speakers get theirs too)."""
    if mode not in ("speaker", "global", "none"):
        raise ValueError(f"CMVN mode must be speaker, global or none, not {mode!r}")
    global_from = global_from if global_from is not None else cutsets[0]
    gmean, gstd = _moments(c.load_features() for c in global_from)
    stats = CmvnStats(mode, gmean, gstd, norm_vars=norm_vars)
    if mode == "speaker":
        by_speaker: Dict[str, List] = {}
        for cuts in cutsets:
            for c in cuts:
                by_speaker.setdefault(c.supervisions[0].speaker, []).append(c)
        for spk, cs in by_speaker.items():
            stats.speaker_mean[spk], stats.speaker_std[spk] = _moments(c.load_features() for c in cs)
    return stats


def load_features(cuts, cmvn: Optional[CmvnStats] = None) -> Tuple[List[str], List[np.ndarray]]:
    """All cuts' features as float32 arrays, CMVN applied; returns (utterance ids, matrices)."""
    ids, mats = [], []
    for c in cuts:
        feats = c.load_features().astype(np.float32)
        if cmvn is not None:
            feats = cmvn.apply(feats, c.supervisions[0].speaker).astype(np.float32)
        ids.append(c.id)
        mats.append(feats)
    return ids, mats
