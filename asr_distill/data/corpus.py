"""What every corpus reader shares: the utterance record, problem reports, audio validation, speaker-disjoint
splits and the train / dev / test cut manifests.

Every problem found (unreadable or truncated audio, missing or extra transcripts, empty text, duplicate ids,
segments outside their recording) is a :class:`BadItem` naming the file or utterance; :func:`report_bad` raises
:class:`CorpusError` listing them all unless ``skip_bad``, in which case they are written to
``bad_utterances.txt`` next to the manifests and left out.  Manifests are written atomically.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import soundfile as sf
from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import set_current_audio_backend
from lhotse.audio.backend import LibsndfileBackend

from ..utils import Pathlike, atomic_path, atomic_write_text

__all__ = ["CorpusError", "Utterance", "BadItem", "set_soundfile_backend", "check_audio", "validate_audio",
           "report_bad", "speaker_disjoint_split", "split_speakers", "make_cutset", "write_manifest", "write_splits",
           "normalise_text", "read_lines", "SPLITS", "TARGET_RATE"]

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
TARGET_RATE = 16000  # every corpus is resampled to this: one fbank configuration, one exported front-end
MIN_RATE, MAX_RATE = 8000, 192000  # telephone speech to studio audio; anything else is a damaged header


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


def normalise_text(text: str) -> str:
    """Upper case, whitespace collapsed (LibriSpeech and most Kaldi ``text`` files are upper case already)."""
    return " ".join(text.upper().split())


def read_lines(path: Path) -> Iterator[Tuple[int, str, Optional[str]]]:
    """(line number, text, problem) for each line of a transcript or list file.  A line that is not UTF-8 (a
    Latin-1 byte, a damaged file) is decoded with replacement characters and its problem named, so that the caller
    reports it instead of letting the replacement characters into a transcript, a speaker or an id."""
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line, problem = raw.decode("utf-8"), None
        except UnicodeDecodeError as e:
            line = raw.decode("utf-8", errors="replace")
            problem = f"not UTF-8 text (byte {raw[e.start]:#04x} at {path.name} line {lineno}, column {e.start + 1})"
        yield lineno, line, problem


def set_soundfile_backend() -> None:
    """Make Lhotse read audio (.sph included) with libsndfile: the default needs the ``sph2pipe`` binary."""
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


    try:
        if command is not None:
            # no stdin: a damaged command ("cat|x.flac") must fail, not wait for a terminal until the timeout
            proc = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
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
    if not MIN_RATE <= sr <= MAX_RATE:  # a damaged header (SPHERE "sample_rate -i 16 00": 16 Hz) still decodes
        return f"implausible sample rate {sr} Hz (speech audio is {MIN_RATE}-{MAX_RATE} Hz)", n, sr
    if expected_rate is not None and sr != expected_rate:
        return f"unexpected sample rate {sr} Hz (expected {expected_rate} Hz)", n, sr
    return None, n, sr



def validate_audio(utts: List[Utterance], bad: List[BadItem]) -> List[Utterance]:
    """Decode every recording once; keep the utterances whose audio is sound and whose segment lies inside it."""
    good = []
    checked: Dict[str, Tuple[Optional[str], int, int]] = {}
    for u in utts:
        key = u.command or str(u.audio_path)
        if key not in checked:
            checked[key] = check_audio(Path(u.audio_path), None, u.command)
        problem, n, sr = checked[key]
        if problem:
            # a Kaldi entry names its recording and utterance, as a missing file does: a damaged pipe command
            # ("cat x.fla |") names neither, nor the wav.scp it came from
            where = f" (recording {u.recording_id}, utterance {u.utt_id})" if u.recording_id else ""
            bad.append(BadItem(u.command or str(u.audio_path), problem + where))
            continue
        u.num_samples, u.sampling_rate = n, sr
        if u.duration is not None:
            end = u.start + u.duration
            if u.duration <= 0 or end > n / sr + 0.02:  # 20 ms: segment ends are often rounded up
                bad.append(BadItem(u.utt_id, f"segment {u.start:.2f}-{end:.2f} s lies outside its recording "
                                             f"({n / sr:.2f} s)"))
                continue
            u.duration = min(u.duration, n / sr - u.start)
        good.append(u)
    return good



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



def split_speakers(utts: Sequence[Utterance], num_speakers: int, what: str) -> Tuple[List[Utterance], List[Utterance]]:
    """(rest, held out): ``num_speakers`` whole speakers held out, chosen by a stable hash of their names."""
    speakers = sorted({u.speaker for u in utts}, key=lambda s: hashlib.md5(f"{what}:{s}".encode()).hexdigest())
    if num_speakers >= len(speakers):
        raise CorpusError(f"cannot hold out {num_speakers} {what} speaker(s): the corpus has {len(speakers)}")
    held = set(speakers[:num_speakers])
    return [u for u in utts if u.speaker not in held], [u for u in utts if u.speaker in held]



def make_cutset(utts: Sequence[Utterance], sampling_rate: Optional[int] = None):
    """Lhotse CutSet with one cut per utterance (the cut id being the utterance id); utterances that are segments
    share their recording.  With ``sampling_rate``, cuts at another rate are resampled to it (Lhotse's own
    resampler, no torchaudio), so one feature configuration serves 8 kHz and 16 kHz corpora alike."""
    set_soundfile_backend()
    recordings: Dict[str, Recording] = {}
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
    atomic_write_text(bad_path, "".join(f"{b.item}\t{b.problem}\n" for b in bad))
    log.warning("skipping %d bad item(s), listed in %s:\n%s", len(bad), bad_path, report)


def write_splits(splits: Dict[str, Sequence[Utterance]], output_dir: Pathlike, source: Pathlike = "",
                 sampling_rate: Optional[int] = None) -> Dict[str, CutSet]:
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
