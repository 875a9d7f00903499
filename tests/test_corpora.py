"""Corpora beyond AN4: LibriSpeech layout, Kaldi data directories, yesno; splits; the recipes' early stages.

The fixtures are the embedded AN4 slice rearranged (tools/make_layouts.py), so the audio is real; yesno is
synthesised (the real corpus needs a download).
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from asr_distill.data import prepare_corpus, read_kaldi_dir
from asr_distill.data import CorpusError
from asr_distill.distill.recipes import student_dir as _student_dir
from conftest import REPO, SLICE, read_transcription

sys.path.insert(0, str(REPO / "tools"))
import make_layouts  # noqa: E402

N_TRAIN, N_TEST = len(read_transcription("train")), len(read_transcription("test"))


def _cuts(path: Path):
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def libri(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("libri")
    make_layouts.librispeech(SLICE, root)
    return root


@pytest.fixture(scope="module")
def kaldi_dirs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kaldi")
    make_layouts.kaldi(SLICE, root)
    return root


def test_librispeech_layout_mini_style_splits(libri, tmp_path):
    cuts = prepare_corpus("librispeech", tmp_path, corpus_dir=libri)
    sizes = {s: len(c) for s, c in cuts.items()}
    # Mini LibriSpeech style (train-clean-5 + dev-clean-2): dev-clean-2 tests, dev is held-out training speakers
    assert sizes["test"] == N_TEST and sizes["train"] + sizes["dev"] == N_TRAIN
    spk = {s: {c.supervisions[0].speaker for c in cs} for s, cs in cuts.items()}
    assert spk["dev"] and not spk["dev"] & spk["train"] and not spk["test"] & spk["train"]
    texts = set(read_transcription("train").values())
    assert all(c.supervisions[0].text in texts for c in cuts["train"])
    assert {c.sampling_rate for cs in cuts.values() for c in cs} == {16000}


def test_one_directory_split_by_speakers(libri, tmp_path):
    cuts = prepare_corpus("librispeech", tmp_path, corpus_dir=libri, parts={"train": ["train-clean-5"]},
                          dev_speakers=1, test_speakers=2)
    spk = {s: {c.supervisions[0].speaker for c in cs} for s, cs in cuts.items()}
    assert len(spk["dev"]) == 1 and len(spk["test"]) == 2
    assert not (spk["dev"] & spk["train"]) and not (spk["test"] & spk["train"]) and not (spk["dev"] & spk["test"])
    assert sum(len(c) for c in cuts.values()) == N_TRAIN  # nothing dropped


def test_librispeech_problems_are_named_and_never_silently_dropped(libri, tmp_path):
    import shutil

    bad_root = tmp_path / "libri_bad"
    shutil.copytree(libri, bad_root)
    flacs = sorted((bad_root / "train-clean-5").rglob("*.flac"))
    flacs[0].unlink()  # a transcript line whose audio is gone
    flacs[1].write_bytes(b"garbage" * 100)  # unreadable audio
    stray = flacs[2].parent / "999-999-0000.flac"  # audio nobody transcribed
    shutil.copyfile(flacs[3], stray)
    with pytest.raises(CorpusError) as err:
        prepare_corpus("librispeech", tmp_path / "out", corpus_dir=bad_root)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert f"{flacs[0]}: audio file missing" in msg and f"{flacs[1]}: unreadable audio" in msg
    assert f"{stray}: audio file has no transcript" in msg
    cuts = prepare_corpus("librispeech", tmp_path / "out", corpus_dir=bad_root, skip_bad=True)
    assert len(cuts["train"]) + len(cuts["dev"]) == N_TRAIN - 2
    listed = (tmp_path / "out" / "bad_utterances.txt").read_text()
    assert flacs[0].name in listed and flacs[1].name in listed and stray.name in listed


def test_kaldi_dir_with_segments_and_pipes(kaldi_dirs, tmp_path):
    utts, bad = read_kaldi_dir(kaldi_dirs / "train")
    assert not bad and len(utts) == N_TRAIN
    assert sum(u.command is not None for u in utts) == (N_TRAIN + 2) // 3  # every third entry is a pipe
    cuts = prepare_corpus("kaldi", tmp_path, train_dir=kaldi_dirs / "train", test_dir=kaldi_dirs / "test")
    piped = next(c for c in cuts["train"] if c.recording.sources[0].type == "command")
    assert piped.start == pytest.approx(0.05)
    audio = piped.load_audio()
    assert audio.shape[1] == pytest.approx(piped.duration * 16000, abs=2)
    # the segment really starts 50 ms into the file
    import soundfile as sf

    path = piped.recording.sources[0].source.split()[1]
    whole, _ = sf.read(path, dtype="float32")
    assert abs(audio[0, :400] - whole[800:1200]).max() < 1e-4


def test_frame_arrays_of_a_segment_are_its_own_frames(kaldi_dirs, tmp_path):
    """A cut that starts inside its recording (a Kaldi segment) gets back exactly the per-frame array stored for it
    (Lhotse slices a temporal array from the cut's start: once 5 labels of this cut went missing)."""
    import numpy as np

    from asr_distill.data import attach_frame_arrays, compute_features
    from asr_distill.nnet.frame_data import FrameSource

    cuts = prepare_corpus("kaldi", tmp_path, train_dir=kaldi_dirs / "train", test_dir=kaldi_dirs / "test")
    segment = next(c for c in cuts["train"] if c.start > 0)
    with_feats = compute_features(cuts["train"].subset(cut_ids=[segment.id]), "fbank", tmp_path / "feats",
                                  tmp_path / "fbank.jsonl.gz")
    (cut,) = list(with_feats)
    labels = np.arange(cut.num_frames, dtype=np.int32)
    attach_frame_arrays([(cut, {"pdf_ids": labels})], tmp_path / "arrays", tmp_path / "labelled.jsonl.gz")
    utt = next(FrameSource(tmp_path / "labelled.jsonl.gz", None).utterances())
    assert utt.id == segment.id and len(utt.feats) == cut.num_frames
    assert np.array_equal(utt.labels, labels)


def test_kaldi_tables_split_on_any_whitespace(kaldi_dirs, tmp_path):
    """Kaldi's readers split a line at the first run of whitespace: a TAB after the utterance id, or several
    spaces, are read as Kaldi reads them (these once rejected every utterance as "not in utt2spk")."""
    import shutil

    d = tmp_path / "train"
    shutil.copytree(kaldi_dirs / "train", d)
    for name, sep in (("text", "\t"), ("utt2spk", "  \t ")):
        lines = [l.split(" ", 1) for l in (d / name).read_text().splitlines() if l.strip()]
        (d / name).write_text("".join(f"{k}{sep}{v}\n" for k, v in lines))
    utts, bad = read_kaldi_dir(d)
    assert not bad and len(utts) == N_TRAIN
    reference = {u.utt_id: (u.speaker, u.text) for u in read_kaldi_dir(kaldi_dirs / "train")[0]}
    assert {u.utt_id: (u.speaker, u.text) for u in utts} == reference


def test_kaldi_dir_problems_are_named(kaldi_dirs, tmp_path):
    import shutil

    d = tmp_path / "train"
    shutil.copytree(kaldi_dirs / "train", d)
    lines = (d / "utt2spk").read_text().splitlines()
    dropped = lines[0].split()[0]
    (d / "utt2spk").write_text("\n".join(lines[1:]) + "\n")
    seg = (d / "segments").read_text().splitlines()
    late = seg[1].split()[0]
    seg[1] = " ".join(seg[1].split()[:2] + ["0.0", "99.0"])
    (d / "segments").write_text("\n".join(seg) + "\n")
    _, bad = read_kaldi_dir(d)
    problems = {b.item: b.problem for b in bad}
    assert problems[dropped] == "in text but not in utt2spk"
    assert "outside its recording" in problems[late]
    with pytest.raises(CorpusError, match="wav.scp"):
        read_kaldi_dir(tmp_path)  # not a data directory at all


def test_yesno_is_resampled_to_16k(tmp_path):
    make_layouts.yesno(tmp_path / "yesno")
    cuts = prepare_corpus("yesno", tmp_path / "out", corpus_dir=tmp_path / "yesno")
    assert {s: len(c) for s, c in cuts.items()} == {"train": 28, "dev": 3, "test": 29}
    cut = next(iter(cuts["test"]))
    assert cut.sampling_rate == 16000 and cut.recording.transforms  # resampled from 8 kHz
    assert cut.load_audio().shape[1] == pytest.approx(cut.duration * 16000, abs=2)
    assert set(cut.supervisions[0].text.split()) <= {"YES", "NO"} and len(cut.supervisions[0].text.split()) == 8


def _recipe(name, *args, timeout=600):
    import os

    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["bash", str(REPO / "recipes" / name / "run.sh"), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_kaldi_recipe_stages_0_to_2(kaldi_dirs, tmp_path):
    exp = tmp_path / "exp"
    proc = _recipe("kaldi", "--train-dir", kaldi_dirs / "train", "--test-dir", kaldi_dirs / "test",
                   "--exp-dir", exp, "--stop-stage", 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (exp / "lang" / "graph" / "HCLG.fst").is_file()
    assert len(_cuts(exp / "data" / "fbank_test.jsonl.gz")) == N_TEST


def test_long_utterances_align_and_too_many_failures_stop_the_gmm_stage(tmp_path):
    """Utterances of ~18 s (six of the slice's joined): the monophones train on the shortest few and then align
    every one; a transcript that cannot fit its audio fails to align, is listed by name with the reason, and, past
    --max-align-failures, stops stage 3 with the remedy named instead of training on what is left.  A word no
    dictionary has gets a grapheme pronunciation and its utterance is kept."""
    corpus = tmp_path / "libri_long"
    make_layouts.librispeech(SLICE, corpus, join=6)
    cuts = prepare_corpus("librispeech", tmp_path / "probe", corpus_dir=corpus)
    train = sorted(cuts["train"], key=lambda c: c.duration)
    assert train[-1].duration > 15.0 and len(train) > 10
    # the shortest training utterance gets 40 words: more phones than its frames can hold
    bad = train[0].id
    words = " ".join(c.supervisions[0].text for c in train[1:]).split()[:40]
    # and one YES becomes YESS, in no dictionary: its spelling rules give YES's own pronunciation, Y EH S
    oov = next(c.id for c in train[1:] if "YES" in c.supervisions[0].text.split())
    for uid, edit in ((bad, lambda text: " ".join(words)), (oov, lambda text: text.replace("YES", "YESS", 1))):
        trans = next(corpus.rglob(f"{uid.rsplit('-', 1)[0]}.trans.txt"))
        lines = [f"{uid} {edit(line.split(' ', 1)[1])}" if line.startswith(uid + " ") else line
                 for line in trans.read_text().splitlines()]
        trans.write_text("\n".join(lines) + "\n")
    exp = tmp_path / "exp"
    # 21 training utterances: the monophones learn from the 16 shortest (up to ~14 s), then align all of them
    gmm = "--gmm-stages mono --num-iters 20 --total-gauss 300 --mono-subset 16"
    proc = _recipe("librispeech", "--corpus-dir", corpus, "--exp-dir", exp, "--stage", 0, "--stop-stage", 3,
                   "--gmm-args", gmm + " --max-align-failures 0")
    assert proc.returncode != 0
    listed = exp / "gmm" / "mono" / "align_failed_train.txt"
    assert "could not be aligned, more than --max-align-failures 0 allows" in proc.stderr, proc.stderr[-3000:]
    assert str(listed) in proc.stderr and "--mono-subset" in proc.stderr and "Traceback" not in proc.stderr
    assert "trained on the 16 shortest" in proc.stderr
    failed = dict(line.split(" ", 1) for line in listed.read_text().splitlines())
    assert failed[bad] == f"no alignment within the retry beam ({round(train[0].duration * 100)} frames, 40 words)"
    # allowed: stage 3 goes on (through the library, with a small dev grid); utterances longer than any the
    # monophones trained on were aligned and labelled
    from asr_distill.experiment import Experiment
    from asr_distill.recipe import stage_gmm

    stage_gmm(Experiment(exp, "librispeech"), systems=("mono",), num_iters=20, total_gauss=300, mono_subset=16,
              max_align_failures=0.2, scorer_options={"scales": (0.05, 0.0833, 0.125), "penalties": (0.0, 2.0)})
    labelled = {c["id"] for c in _cuts(exp / "gmm" / "cuts_train.jsonl.gz")}
    final_failed = (exp / "gmm" / "align_failed_train.txt").read_text().split()
    assert bad in final_failed and labelled == {c.id for c in train} - set(final_failed)
    assert len(final_failed) <= 0.2 * len(train)
    assert any(c.duration > train[15].duration for c in train if c.id in labelled)
    rows = {r["name"]: r for r in json.loads((exp / "results.json").read_text())["systems"]}
    print("GMM WERs on the joined slice:", {n: r["wer"] for n, r in rows.items()})
    assert rows["gmm-mono"]["wer"] < 75  # 4 minutes of audio, monophones from 16 utterances: far from chance only
    # the OOV word: a grapheme pronunciation, the utterance kept and labelled like every other
    assert (exp / "lang" / "oov_fallback.txt").read_text().split() == ["YESS", "Y", "EH", "S"]
    assert oov in labelled
    report = json.loads((exp / "lang" / "lexicon_report.json").read_text())
    assert report["training_word_sources"] == {"cmudict": report["training_words"] - 1, "grapheme": 1}
    # test-only words can be aligned but never decoded: they are in words.txt, not in the LM
    assert report["lexicon_words"] == report["training_words"] + report["dev_test_only_words"]
    assert report["lm_words"] == report["training_words"]


def test_yesno_recipe_stages_0_to_6_with_dev_selection(tmp_path):
    make_layouts.yesno(tmp_path / "yesno")
    exp = tmp_path / "exp"
    # stage 6 with a small dev selection: 2 candidates (one perturbing) + a hard-label control for each recipe
    distill = ("--experiments select,table1 --teacher-source both --seeds 1 "
               "--select-candidates 2:0.5:2,5:0.9:3:0.3:4")
    proc = _recipe("yesno", "--corpus-dir", tmp_path / "yesno", "--exp-dir", exp, "--stop-stage", 6,
                   "--distill-args", distill)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((exp / "results.json").read_text())
    rows = {r["name"]: r for r in results["systems"]}
    # two tones, eight words per file: the GMM must get nearly all of them
    assert rows["gmm-mono"]["wer"] < 5
    assert {"teacher0", "teacher1", "ensemble-arithmetic", "baseline", "student", "student-top16"} <= set(rows)
    select = results["experiments"]["select"]
    assert [(r["T"], r["alpha"], r["candidate"]) for r in select["rows"]] == [
        (2.0, 0.5, True), (5.0, 0.9, True), (1.0, 0.0, False), (1.0, 0.0, False)]
    assert [r["recipe"] for r in select["rows"][2:]] == [{"epochs": 2}, {"epochs": 3, "noise_std": 0.3, "freq_mask": 4}]
    chosen = max(select["rows"][:2], key=lambda r: r["dev_frame_acc"])
    assert select["chosen"] == chosen
    # the baseline's recipe: the one its own hard-label control did best with on dev (each system tuned alike)
    assert select["chosen_baseline"] == max(select["rows"][2:], key=lambda r: r["dev_frame_acc"])
    # the choice carries into table 1: the live student is trained with it, the cached one without perturbation
    table1 = results["experiments"]["table1"]
    assert (table1["T"], table1["alpha"]) == (chosen["T"], chosen["alpha"])
    assert table1["recipe"] == chosen["recipe"] and table1["baseline_recipe"] == select["chosen_baseline"]["recipe"]
    base_train = json.loads((exp / "distill" / "baseline" / "config.json").read_text())["train"]
    assert base_train["epochs"] == select["chosen_baseline"]["recipe"]["epochs"]
    # table 1's first seeds are select's runs of the same training, taken over rather than trained again
    chosen_dir = exp / "distill" / _student_dir(chosen["T"], chosen["alpha"], chosen["recipe"])
    control_dir = exp / "distill" / _student_dir(1.0, 0.0, select["chosen_baseline"]["recipe"])
    assert (exp / "distill" / "student" / "log.csv").read_bytes() == (chosen_dir / "log.csv").read_bytes()
    assert (exp / "distill" / "baseline" / "log.csv").read_bytes() == (control_dir / "log.csv").read_bytes()
    assert rows["student"]["T"] == chosen["T"] and rows["student-top16"]["teacher_source"] == "cache"
    assert "noise_std" not in rows["student-top16"]
    for name in ("sweep-T2-a0.5-e2", "sweep-T5-a0.9-e3-f4-n0.3", "sweep-T1-a0-e3-f4-n0.3", "student"):
        assert (exp / "distill" / name / "best.pt").is_file(), name

    # The same stage 6 data-parallel (2 gloo ranks): only rank 0 scores, so the others must take its choice rather
    # than their own NaN placeholders (a mismatch would hang or mix configurations).
    import shutil

    ddp = tmp_path / "exp_ddp"
    shutil.copytree(exp, ddp, ignore=shutil.ignore_patterns("distill"))  # EXP/distill and .done/distill
    proc = _recipe("yesno", "--corpus-dir", tmp_path / "yesno", "--exp-dir", ddp, "--stage", 6, "--stop-stage", 6,
                   "--nproc", 2, "--distill-args", distill.replace("both", "live"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((ddp / "results.json").read_text())
    select = results["experiments"]["select"]
    assert all(r["dev_frame_acc"] == r["dev_frame_acc"] for r in select["rows"])  # no NaN reached the file
    assert select["chosen"] == max(select["rows"][:2], key=lambda r: r["dev_frame_acc"])
    config = json.loads((ddp / "distill" / "student" / "config.json").read_text())
    assert config["processes"] == 2 and config["train"]["T"] == select["chosen"]["T"]
