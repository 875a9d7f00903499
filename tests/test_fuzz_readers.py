"""Fuzz test of the corpus readers (stage 0 only): seeded random damage to small AN4 (CMU layout), LibriSpeech
(``*.trans.txt`` + flac) and Kaldi data-directory (``wav.scp`` with paths and ``cmd |`` pipes, ``text``,
``utt2spk``, ``segments``) corpora, each then prepared with :func:`prepare_corpus`, strictly and with ``skip_bad``.

Mutations (each seed picks the file, the position and the new byte; the same seed always does the same thing):

* ``truncate``: a transcript / list / table file cut at a random byte (every line after the cut is gone, the line
  at the cut is kept partially and has no final newline);
* ``flip_text``: one random byte of such a file replaced by another (any value: a newline, a space, a byte that is
  not UTF-8, a digit in a segment time, a character of an id or a path or a pipe command);
* ``flip_audio``: one byte of an audio file (flac, and NIST SPHERE in the AN4 corpus) replaced, half of the seeds
  inside the header (a flac's STREAMINFO, the fields of a SPHERE header: rate, sample count, ...), half anywhere;
* ``truncate_audio``: an audio file cut at a random byte;
* ``delete_line`` / ``duplicate_line``: one random line of a transcript / list / table file removed, or repeated.

What every outcome must satisfy (a failure names the seed so that it can be replayed):

* Never a traceback: anything raised other than :class:`CorpusError` fails the test.
* A strict :class:`CorpusError` is named: its message names the damaged file, or an utterance / recording id or an
  audio file of a damaged line.
* Strict success is only acceptable when the damage left a valid corpus (a byte flip inside audio that still
  decodes, a byte flip or a truncation that changes a word of a transcript, a speaker name or a segment time into
  another well-formed one; a truncation inside the last line of a LibriSpeech or Kaldi ``text`` file leaves a
  shorter transcript that no reader can tell from a real one): then every utterance of the clean corpus is in the
  manifests, no other, and at most one of them (the one on the damaged line) has another text or speaker.  Damage
  that went unreported all the same: a replacement character (a byte that is not UTF-8) in any id, text or speaker,
  and a recording rate outside 8-192 kHz (a damaged header that still decodes, e.g. as 16 Hz audio).
* After a strict :class:`CorpusError`, ``skip_bad`` either raises a :class:`CorpusError` too (the damage left no
  usable split, e.g. no test set, one training speaker) or succeeds with every utterance of the clean corpus either
  in the manifests or named (its id, its recording or its audio file) in ``bad_utterances.txt``: nothing vanishes
  silently, nothing new appears, and at most one kept utterance changed text or speaker (a duplicated id keeps its
  first line, which a flipped id can make the wrong one).

Deleted and duplicated lines are never acceptable silently: none of these formats allows a repeated id, and every
line carries an utterance that the other files (audio, fileids, utt2spk, wav.scp, segments) then lack or list.
Pipe commands run in a scratch working directory (a flipped byte can turn ``cat x |`` into ``cat x>y |``).

:func:`test_targeted_damage_is_one_named_problem` adds damage that the seeds reach rarely or not at all (a negative
or NaN segment time, a Latin-1 byte in each kind of file, a pipe that reads stdin or no longer names its audio, a
SPHERE header declaring 16 Hz), each of which must be exactly one named problem.
"""
from __future__ import annotations

import gzip
import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest
import soundfile as sf

from asr_distill.data import CorpusError, prepare_corpus
from conftest import REPO, SLICE, read_fileids, read_transcription

sys.path.insert(0, str(REPO / "tools"))
import make_layouts  # noqa: E402

LAYOUTS = ("an4", "librispeech", "kaldi")
KINDS = ("truncate", "flip_text", "flip_audio", "truncate_audio", "delete_line", "duplicate_line")
SEEDS = range(12)
SPLITS = ("train", "dev", "test")


# ----------------------------------------------------------------------------------------------------------------
# Clean corpora: 3 training speakers x 2 utterances + 2 test speakers x 1, real audio from the embedded slice

def _pick(part: str, speakers: int, per_speaker: int) -> List[str]:
    by_spk: Dict[str, List[str]] = {}
    for fid in read_fileids(part):
        by_spk.setdefault(fid.split("/")[1], []).append(fid)
    return [f for spk in sorted(by_spk)[:speakers] for f in by_spk[spk][:per_speaker]]


def _small_an4(root: Path) -> Path:
    """CMU layout; one training and one test utterance as NIST SPHERE (AN4's own format), the rest flac."""
    texts = {**read_transcription("train"), **read_transcription("test")}
    (root / "etc").mkdir(parents=True)
    for part, fids in (("train", _pick("train", 3, 2)), ("test", _pick("test", 2, 1))):
        for i, fid in enumerate(fids):
            dst = root / "wav" / f"{fid}.flac"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if i == 1:
                audio, sr = sf.read(SLICE / "wav" / f"{fid}.flac", dtype="int16")
                sf.write(dst.with_suffix(".sph"), audio, sr, format="NIST", subtype="PCM_16")
            else:
                shutil.copyfile(SLICE / "wav" / f"{fid}.flac", dst)
        (root / "etc" / f"an4_{part}.fileids").write_text("".join(f"{f}\n" for f in fids))
        (root / "etc" / f"an4_{part}.transcription").write_text(
            "".join(f"<s> {texts[Path(f).name]} </s> ({Path(f).name})\n" for f in fids))
    return root


@dataclass
class Layout:
    name: str
    root: Path
    reference: Dict[str, Tuple[str, str]]  # utt id -> (text, speaker) of the clean corpus
    names: Dict[str, Set[str]]  # utt id -> what may name it in a report: the id, its recording, its audio file

    def prepare(self, root: Path, out: Path, skip_bad: bool):
        if self.name == "kaldi":
            return prepare_corpus("kaldi", out, train_dir=root / "train", test_dir=root / "test", skip_bad=skip_bad)
        return prepare_corpus(self.name, out, corpus_dir=root, skip_bad=skip_bad)

    def text_files(self, root: Path) -> List[Path]:
        if self.name == "an4":
            return [root / "etc" / f"an4_{p}.{e}" for p in ("train", "test") for e in ("fileids", "transcription")]
        if self.name == "librispeech":
            return sorted(root.rglob("*.trans.txt"))
        return sorted(p for d in ("train", "test") for p in (root / d).iterdir() if p.is_file())

    def audio_files(self, root: Path) -> List[Path]:
        return sorted(p for p in root.rglob("*") if p.suffix in (".flac", ".sph"))

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.root, dest)
        if self.name == "kaldi":  # wav.scp holds absolute paths: point them at the copy
            for scp in dest.glob("*/wav.scp"):
                scp.write_text(scp.read_text().replace(str(self.root.resolve()), str(dest.resolve())))
        return dest


def _manifest(out: Path) -> Dict[str, Tuple[str, str]]:
    got = {}
    for s in SPLITS:
        with gzip.open(out / f"cuts_{s}.jsonl.gz", "rt") as f:
            for line in f:
                cut = json.loads(line)
                sup = cut["supervisions"][0]
                assert cut["id"] not in got, f"{cut['id']} in two manifests"
                got[cut["id"]] = (sup["text"], sup["speaker"])
                rate = cut["recording"]["sampling_rate"]
                assert 8000 <= rate <= 192000, f"{cut['id']}: a {rate} Hz recording reached the manifests"
    return got


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Dict[str, Layout]:
    base = tmp_path_factory.mktemp("fuzz_base")
    an4 = _small_an4(base / "an4")
    make_layouts.librispeech(an4, base / "librispeech")
    make_layouts.kaldi(an4, base / "kaldi")
    out = {}
    for name in LAYOUTS:
        lay = Layout(name, base / name, {}, {})
        cuts = lay.prepare(lay.root, base / f"out_{name}", skip_bad=False)
        assert not (base / f"out_{name}" / "bad_utterances.txt").exists()
        lay.reference = _manifest(base / f"out_{name}")
        assert len(lay.reference) == 8
        for s in SPLITS:
            for c in cuts[s]:
                source = c.recording.sources[0].source
                audio = Path(source.split()[1] if c.recording.sources[0].type == "command" else source).name
                lay.names[c.id] = {c.id, c.recording.id, audio}
        out[name] = lay
    return out


# ----------------------------------------------------------------------------------------------------------------
# Mutations

def _line_ids(layout: str, path: Path, line: str) -> Set[str]:
    """The utterance / recording ids and audio names a line of ``path`` carries."""
    fields = line.split()
    if not fields:
        return set()
    if path.name.endswith(".fileids"):
        return {Path(line.strip()).name}
    if path.name.endswith(".transcription"):
        return {fields[-1].strip("()")}
    ids = {fields[0]}
    if path.name == "segments" and len(fields) > 1:
        ids.add(fields[1])
    if path.name == "wav.scp":
        ids |= {Path(f).name for f in fields[1:] if "/" in f}
    return ids


def _lines_touched(data: bytes, start: int, end: int) -> List[str]:
    """The original lines that overlap bytes [start, end)."""
    out, pos = [], 0
    for raw in data.splitlines(keepends=True):
        if pos < end and pos + len(raw) > start:
            out.append(raw.decode("utf-8", errors="replace"))
        pos += len(raw)
    return out


def _mutate(layout: Layout, root: Path, kind: str, seed: int) -> Tuple[str, Set[str]]:
    """Apply the mutation; return (what was done, names any report of it may use: file name, ids, audio)."""
    rng = random.Random(f"{layout.name}-{kind}-{seed}")
    if kind in ("flip_audio", "truncate_audio"):
        audio = layout.audio_files(root)
        sph = [a for a in audio if a.suffix == ".sph"]
        path = rng.choice(sph if sph and seed % 3 == 0 else audio)  # the AN4 corpus: SPHERE every third seed
        data = bytearray(path.read_bytes())
        if kind == "truncate_audio":
            k = rng.randrange(len(data))
            path.write_bytes(bytes(data[:k]))
            what = f"truncated {path.relative_to(root)} to {k} of {len(data)} bytes"
        else:
            # SPHERE: the header's fields (then zero padding to 1024 bytes); flac: "fLaC" + STREAMINFO
            header = data.find(b"end_head") if path.suffix == ".sph" else 42
            pos = rng.randrange(header if seed % 2 == 0 else len(data))
            old = data[pos]
            data[pos] ^= rng.randrange(1, 256)
            path.write_bytes(bytes(data))
            what = f"byte {pos} of {path.relative_to(root)}: {old:#04x} -> {data[pos]:#04x}"
        return what, {path.name, path.stem}
    path = rng.choice(layout.text_files(root))
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    names = {path.name, str(path)}
    if kind == "truncate":
        k = rng.randrange(len(data))
        path.write_bytes(data[:k])
        touched = _lines_touched(data, k, len(data))
        what = f"truncated {path.relative_to(root)} to {k} of {len(data)} bytes"
    elif kind == "flip_text":
        pos = rng.randrange(len(data))
        new = bytearray(data)
        new[pos] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(new))
        touched = _lines_touched(data, pos, pos + 2)  # a flipped newline joins this line and the next
        what = f"byte {pos} of {path.relative_to(root)}: {data[pos]:#04x} -> {new[pos]:#04x}"
    else:
        i = rng.randrange(len(lines))
        touched = [lines[i].decode()]
        if kind == "delete_line":
            path.write_bytes(b"".join(lines[:i] + lines[i + 1:]))
        else:
            path.write_bytes(b"".join(lines[:i + 1] + lines[i:]))
        what = f"{kind} {i + 1} of {path.relative_to(root)}: {lines[i]!r}"
    for line in touched:
        names |= _line_ids(layout.name, path, line)
    return what, names


# ----------------------------------------------------------------------------------------------------------------

def _changed(got: Dict[str, Tuple[str, str]], reference: Dict[str, Tuple[str, str]]) -> List[str]:
    return [u for u in got if got[u] != reference.get(u)]


def _no_replacement_chars(got: Dict[str, Tuple[str, str]], what: str) -> None:
    bad = {u: v for u, v in got.items() if "\ufffd" in "".join(v) or "\ufffd" in u}
    assert not bad, f"{what}: bytes that are not UTF-8 reached the manifests unreported: {bad}"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_damaged_corpus_fails_by_name_or_loses_nothing(layouts, layout, kind, seed, tmp_path, monkeypatch):
    lay = layouts[layout]
    monkeypatch.chdir(tmp_path)  # a damaged pipe command can write to its working directory
    root = lay.copy(tmp_path / "corpus")
    what, names = _mutate(lay, root, kind, seed)
    what = f"{layout} seed {seed}: {what}"

    # 1) strict
    try:
        lay.prepare(root, tmp_path / "strict", skip_bad=False)
    except CorpusError as e:
        msg = str(e)
        assert any(n in msg for n in names), f"{what}: the error names none of {sorted(names)}:\n{msg}"
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{what}: raw {type(e).__name__} instead of a CorpusError: {e}")
    else:
        got = _manifest(tmp_path / "strict")
        assert set(got) == set(lay.reference), (f"{what}: accepted, but utterances vanished "
                                                f"{sorted(set(lay.reference) - set(got))} or appeared "
                                                f"{sorted(set(got) - set(lay.reference))}")
        changed = _changed(got, lay.reference)
        assert len(changed) <= 1, f"{what}: accepted, but {changed} changed text or speaker"
        _no_replacement_chars(got, what)
        assert not (tmp_path / "strict" / "bad_utterances.txt").exists()
        return

    # 2) skip_bad: a CorpusError (no usable split left) or every utterance kept or named in the report
    out = tmp_path / "skip"
    try:
        lay.prepare(root, out, skip_bad=True)
    except CorpusError:
        return
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{what}: raw {type(e).__name__} with skip_bad instead of a CorpusError: {e}")
    got = _manifest(out)
    report = (out / "bad_utterances.txt").read_text() if (out / "bad_utterances.txt").exists() else ""
    assert report, f"{what}: the strict run failed, but skip_bad reported nothing"
    assert set(got) <= set(lay.reference), f"{what}: new utterances {sorted(set(got) - set(lay.reference))}"
    silent = [u for u in lay.reference if u not in got and not any(n in report for n in lay.names[u])]
    assert not silent, f"{what}: {silent} left out without being named in bad_utterances.txt:\n{report}"
    changed = _changed(got, lay.reference)
    assert len(changed) <= 1, f"{what}: {changed} changed text or speaker"
    _no_replacement_chars(got, what)


# ----------------------------------------------------------------------------------------------------------------
# Damage the random seeds above reach rarely or never

def _first_line(damage, containing: bytes = b""):
    """Apply ``damage`` to the first line that holds ``containing``."""
    def apply(data: bytes) -> bytes:
        lines = data.splitlines()
        i = next(i for i, line in enumerate(lines) if containing in line)
        lines[i] = damage(lines[i])
        return b"".join(line + b"\n" for line in lines)
    return apply


TARGETED = {
    "segment_negative_start": ("kaldi", "train/segments", _first_line(lambda l: l.replace(b" 0.05 ", b" -.05 ")),
                               "segment start -0.05 is not a time in its recording"),
    "segment_nan_end": ("kaldi", "train/segments", _first_line(lambda l: l.rsplit(b" ", 1)[0] + b" nan"),
                        "segment end nan is not after its start"),
    "utt2spk_latin1": ("kaldi", "train/utt2spk", _first_line(lambda l: l + b"\xe4"),
                       "not UTF-8 text (byte 0xe4 at utt2spk line 1"),
    "text_latin1": ("kaldi", "test/text", _first_line(lambda l: l + b" \xff"), "not UTF-8 text (byte 0xff at text line 1"),
    "wav_scp_latin1": ("kaldi", "train/wav.scp", _first_line(lambda l: l.replace(b".flac", b"\xe9.flac")),
                       "not UTF-8 text (byte 0xe9 at wav.scp line 1"),
    "pipe_reads_stdin": ("kaldi", "train/wav.scp", _first_line(lambda l: l.replace(b"cat ", b"cat|"), b"|"),
                         "command failed"),
    "pipe_damaged_path": ("kaldi", "train/wav.scp", _first_line(lambda l: l.replace(b".flac |", b".fla |"), b"|"),
                          "command failed"),  # the command no longer names the audio: the recording id must
    "trans_latin1": ("librispeech", "train-clean-5/100/1100/100-1100.trans.txt",
                     _first_line(lambda l: l + b" CAF\xc9"), "not UTF-8 text (byte 0xc9 at 100-1100.trans.txt line 1"),
    "sphere_rate_16_hz": ("an4", "wav/an4_clstk/fash/an253-fash-b.sph",  # decodes, as 16 Hz audio
                          lambda d: d.replace(b"sample_rate -i 16000", b"sample_rate -i 16 00", 1),
                          "implausible sample rate 16 Hz"),
}


@pytest.mark.parametrize("case", sorted(TARGETED))
def test_targeted_damage_is_one_named_problem(layouts, case, tmp_path, monkeypatch):
    """Strictly one problem, naming the damaged line's utterance or recording (or the audio file) with the problem;
    with ``skip_bad`` that utterance alone is left out and listed."""
    layout, rel, damage, phrase = TARGETED[case]
    lay = layouts[layout]
    monkeypatch.chdir(tmp_path)
    root = lay.copy(tmp_path / "corpus")
    path = root / rel
    old = path.read_bytes()
    path.write_bytes(damage(old))
    if path.suffix in (".flac", ".sph"):
        ids = {path.stem}
    else:
        ids = {n for a, b in zip(old.splitlines(), path.read_bytes().splitlines()) if a != b
               for n in _line_ids(layout, path, a.decode())}
    assert ids, "the damage changed nothing"
    with pytest.raises(CorpusError) as err:
        lay.prepare(root, tmp_path / "strict", skip_bad=False)
    msg = str(err.value)
    assert "1 problem(s)" in msg, msg
    assert any(phrase in l and any(n in l for n in ids) for l in msg.splitlines()), f"{phrase!r} / {ids}:\n{msg}"
    lay.prepare(root, tmp_path / "skip", skip_bad=True)
    assert len((tmp_path / "skip" / "bad_utterances.txt").read_text().splitlines()) == 1
    lost = {u for u, names in lay.names.items() if any(n in name for n in ids for name in names)}
    assert len(lost) == 1 and set(_manifest(tmp_path / "skip")) == set(lay.reference) - lost


def test_pipe_command_gets_no_stdin():
    """A wav.scp pipe never reads stdin: a damaged one that would ("cat|x.flac |") fails at once rather than wait
    for input until the 300 s timeout (here stdin is a pipe that never ends)."""
    import os

    from asr_distill.data import check_audio

    r, w = os.pipe()
    saved = os.dup(0)
    os.dup2(r, 0)
    try:
        problem, _, _ = check_audio(Path("unused"), None, "cat")
    finally:
        os.dup2(saved, 0)
        for fd in (saved, r, w):
            os.close(fd)
    assert problem.startswith("unreadable audio") and "Timeout" not in problem, problem
