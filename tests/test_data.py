"""Corpus validation and manifests (asr_distill.data): the embedded slice's manifests and features, CMVN, and every
kind of bad corpus input on a small copy of the slice."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_distill.data import CmvnStats, CorpusError, prepare_an4, read_an4, speaker_disjoint_split
from conftest import read_fileids, read_transcription

SPLITS = ("train", "dev", "test")


# ----------------------------------------------------------------------------------------------------------------
# Manifests of the embedded slice (built once by the session fixture)

def test_manifest_counts_ids_and_texts(exp):
    cuts = {s: exp.cuts(s) for s in SPLITS}
    train_fids, test_fids = read_fileids("train"), read_fileids("test")
    # dev is carved from train, test is untouched
    assert len(cuts["train"]) + len(cuts["dev"]) == len(train_fids)
    assert len(cuts["test"]) == len(test_fids)
    assert len(cuts["dev"]) > 0 and len(cuts["train"]) > len(cuts["dev"])
    # cut ids are the utterance ids (the file ids' basenames), split between train and dev without overlap
    train_dev_ids = [c.id for c in cuts["train"]] + [c.id for c in cuts["dev"]]
    assert sorted(train_dev_ids) == sorted(Path(f).name for f in train_fids)
    assert sorted(c.id for c in cuts["test"]) == sorted(Path(f).name for f in test_fids)
    texts = {**read_transcription("train"), **read_transcription("test")}
    for s in SPLITS:
        for c in cuts[s]:
            sup = c.supervisions[0]
            assert sup.id == c.id and sup.recording_id == c.recording.id
            assert sup.text == texts[c.id]
            assert "<s>" not in sup.text.split() and "</s>" not in sup.text.split()
            assert sup.text.strip()


def test_dev_speakers_are_disjoint_from_train(exp):
    spk = {s: set(exp.speakers(s).values()) for s in SPLITS}
    assert spk["dev"] and spk["train"]
    assert not spk["dev"] & spk["train"]
    # the speaker recorded in the cut is the one of the AN4 path <set>/<speaker>/<utt>
    by_fid = {Path(f).name: f.split("/")[1] for f in read_fileids("train") + read_fileids("test")}
    for s in SPLITS:
        for utt, speaker in exp.speakers(s).items():
            assert by_fid[utt] == speaker


def test_speaker_split_is_stable_under_reordering(exp):
    from asr_distill.data import Utterance

    utts = [Utterance(c.id, c.supervisions[0].speaker, Path("x"), "A") for s in ("train", "dev") for c in exp.cuts(s)]
    tr1, dev1 = speaker_disjoint_split(utts)
    tr2, dev2 = speaker_disjoint_split(list(reversed(utts)))
    assert {u.utt_id for u in dev1} == {u.utt_id for u in dev2} == {c.id for c in exp.cuts("dev")}
    assert {u.utt_id for u in tr1} == {u.utt_id for u in tr2}


def test_durations_match_the_audio(exp):
    for s in SPLITS:
        for c in exp.cuts(s):
            assert c.duration > 0
            info = sf.info(c.recording.sources[0].source)
            assert c.recording.sampling_rate == info.samplerate == 16000
            assert c.recording.num_samples == info.frames
            assert c.duration == pytest.approx(info.frames / info.samplerate, abs=1e-6)


@pytest.mark.parametrize("kind,dim", [("fbank", 40), ("mfcc", 13)])
def test_features_dims_and_frame_counts(exp, kind, dim):
    for s in SPLITS:
        cuts = exp.cuts(s, kind)
        assert len(cuts) == len(exp.cuts(s))
        for i, c in enumerate(cuts):
            assert c.num_features == dim
            assert c.frame_shift == pytest.approx(0.01)
            # 25 ms windows every 10 ms, not snipped at the edges: one frame per 10 ms, rounded
            assert abs(c.num_frames - c.duration / 0.01) <= 1.0
            if i < 5:
                feats = c.load_features()
                assert feats.shape == (c.num_frames, dim)
                assert np.isfinite(feats).all()


def test_cmvn_save_load_round_trip(exp, tmp_path):
    stats = CmvnStats.load(exp / "data" / "cmvn_fbank.npz")
    assert stats.mode == "speaker" and stats.norm_vars
    assert set(stats.speaker_mean) == {sp for s in SPLITS for sp in exp.speakers(s).values()}
    stats.save(tmp_path / "c.npz")
    back = CmvnStats.load(tmp_path / "c.npz")
    assert (back.mode, back.norm_vars) == (stats.mode, stats.norm_vars)
    np.testing.assert_array_equal(back.global_mean, stats.global_mean)
    np.testing.assert_array_equal(back.global_std, stats.global_std)
    assert set(back.speaker_mean) == set(stats.speaker_mean)
    for spk in stats.speaker_mean:
        np.testing.assert_array_equal(back.speaker_mean[spk], stats.speaker_mean[spk])
        np.testing.assert_array_equal(back.speaker_std[spk], stats.speaker_std[spk])
    # the GMM's MFCC statistics: mean normalisation only
    mfcc = CmvnStats.load(exp / "data" / "cmvn_mfcc.npz")
    assert not mfcc.norm_vars
    mfcc.save(tmp_path / "m.npz")
    assert not CmvnStats.load(tmp_path / "m.npz").norm_vars


def test_per_speaker_cmvn_gives_zero_mean_per_speaker(exp):
    for kind in ("fbank", "mfcc"):
        by_spk = {}
        for s in SPLITS:
            feats, speakers = exp.features(kind, s), exp.speakers(s)
            for u, f in feats.items():
                by_spk.setdefault(speakers[u], []).append(f)
        assert len(by_spk) >= 3
        for spk, mats in by_spk.items():
            allf = np.concatenate(mats).astype(np.float64)
            np.testing.assert_allclose(allf.mean(0), 0.0, atol=1e-3, err_msg=f"{kind} speaker {spk}")
            if kind == "fbank":  # mean AND variance normalised
                np.testing.assert_allclose(allf.std(0), 1.0, atol=1e-2, err_msg=f"speaker {spk}")


def test_cmvn_global_and_unseen_speaker():
    rng = np.random.RandomState(0)
    x = rng.randn(50, 3).astype(np.float32) * 4 + 7
    stats = CmvnStats("speaker", np.full(3, 7, np.float32), np.full(3, 4, np.float32),
                      {"a": np.zeros(3, np.float32)}, {"a": np.ones(3, np.float32)})
    np.testing.assert_array_equal(stats.apply(x, "a"), x)  # its own statistics
    np.testing.assert_allclose(stats.apply(x, "unseen"), (x - 7) / 4, rtol=1e-6)  # falls back to global
    none = CmvnStats("none", np.zeros(3), np.ones(3))
    assert none.apply(x, "a") is x


# ----------------------------------------------------------------------------------------------------------------
# Bad corpus input: each case on a small real copy (2 train speakers x 2 utterances + 1 test utterance)

def _write_truncated_sph(corpus, fid):
    audio, sr = sf.read(corpus.audio(fid), dtype="int16")
    sph = corpus.audio(fid).with_suffix(".sph")
    sf.write(sph, audio, sr, format="NIST", subtype="PCM_16")
    assert b"sample_count -i %d" % len(audio) in sph.read_bytes()[:1024]
    size = os.path.getsize(sph)
    with open(sph, "r+b") as f:
        f.truncate(size - 4000)  # header still declares all samples; 2000 of them are gone
    corpus.audio(fid).unlink()


def _corrupt(case: str, corpus):
    """Apply ``case``; return (item named in the report, problem phrase, utterance ids that must be left out)."""
    tr = corpus.train
    uid = corpus.uid
    if case == "unreadable_audio":
        corpus.audio(tr[0][0]).write_bytes(b"\x13\x37garbage, not FLAC" * 64)
        return uid(tr[0][0]), "unreadable audio", {uid(tr[0][0])}
    if case == "truncated_audio":
        _write_truncated_sph(corpus, tr[1][0])
        return uid(tr[1][0]), "truncated audio", {uid(tr[1][0])}
    if case == "missing_audio":
        corpus.audio(tr[2][0]).unlink()
        return uid(tr[2][0]), "audio file missing", {uid(tr[2][0])}
    if case == "missing_transcript":
        lines = [f"<s> {t} </s> ({uid(f)})" for f, t in tr[1:]]
        corpus.write_lists(transcripts={"train": lines})
        return uid(tr[0][0]), "no transcript", {uid(tr[0][0])}
    if case == "extra_transcript":
        lines = [f"<s> {t} </s> ({uid(f)})" for f, t in tr] + ["<s> YES </s> (an999-xtra-b)"]
        corpus.write_lists(transcripts={"train": lines})
        return "an999-xtra-b", "has no entry in an4_train.fileids", set()
    if case == "empty_text":
        lines = [f"<s> {t} </s> ({uid(f)})" for f, t in tr]
        lines[3] = f"<s> </s> ({uid(tr[3][0])})"
        corpus.write_lists(transcripts={"train": lines})
        return uid(tr[3][0]), "empty transcript", {uid(tr[3][0])}
    if case == "duplicate_fileid":
        corpus.write_lists(fileids={"train": [f for f, _ in tr] + [tr[0][0]]})
        return uid(tr[0][0]), "duplicate utterance id in an4_train.fileids", set()  # the first one is kept
    if case == "duplicate_transcript":
        lines = [f"<s> {t} </s> ({uid(f)})" for f, t in tr] + [f"<s> {tr[2][1]} </s> ({uid(tr[2][0])})"]
        corpus.write_lists(transcripts={"train": lines})
        return uid(tr[2][0]), "duplicate utterance id in an4_train.transcription", set()
    if case == "non_utf8_transcript":
        path = corpus.root / "etc" / "an4_train.transcription"
        lines = path.read_bytes().splitlines()
        lines[1] = lines[1].replace(b"<s> ", b"<s> \xff", 1)  # a Latin-1 byte where UTF-8 is expected
        path.write_bytes(b"\n".join(lines) + b"\n")
        return uid(tr[1][0]), "not UTF-8 text (byte 0xff at an4_train.transcription line 2", {uid(tr[1][0])}
    if case == "train_test_overlap":
        # the same utterance id in the test list (a copy of the audio under the test directory)
        fid = tr[0][0]
        test_fid = corpus.test[0][0].rsplit("/", 2)[0] + "/" + fid.split("/", 1)[1]
        dst = corpus.audio(test_fid)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(corpus.audio(fid).read_bytes())
        te = corpus.test + [(test_fid, tr[0][1])]
        corpus.write_lists(fileids={"test": [f for f, _ in te]},
                           transcripts={"test": [f"{t} ({uid(f)})" for f, t in te]})
        return uid(fid), "appears in both train and test", {uid(fid)}
    raise AssertionError(case)


BAD_CASES = ["unreadable_audio", "truncated_audio", "missing_audio", "missing_transcript", "extra_transcript",
             "empty_text", "duplicate_fileid", "duplicate_transcript", "non_utf8_transcript", "train_test_overlap"]


def test_small_corpus_is_clean(small_corpus, tmp_path):
    """The copy itself is good: prepares without a report, texts stripped of <s> / </s>."""
    cutsets = prepare_an4(small_corpus.root, tmp_path / "out")
    assert not (tmp_path / "out" / "bad_utterances.txt").exists()
    texts = dict((small_corpus.uid(f), t) for f, t in small_corpus.train + small_corpus.test)
    got = {c.id: c.supervisions[0].text for s in SPLITS for c in cutsets[s]}
    assert got == texts
    assert "<s>" in (small_corpus.root / "etc" / "an4_train.transcription").read_text()  # the input had them
    assert all(len(cutsets[s]) > 0 for s in SPLITS)
    for s in SPLITS:
        assert (tmp_path / "out" / f"cuts_{s}.jsonl.gz").is_file()


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_reported_and_skippable(case, small_corpus, tmp_path):
    item, problem, left_out = _corrupt(case, small_corpus)
    # 1) strict: CorpusError, naming the utterance / file on the same line as the problem
    with pytest.raises(CorpusError) as ei:
        prepare_an4(small_corpus.root, tmp_path / "strict")
    msg = str(ei.value)
    lines = [l for l in msg.splitlines() if item in l]
    assert lines, f"{item!r} not named in:\n{msg}"
    assert any(problem in l for l in lines), f"{problem!r} not on the line naming {item!r}:\n{msg}"
    assert "1 problem(s)" in msg  # exactly this one problem, nothing else flagged
    assert not (tmp_path / "strict" / "cuts_train.jsonl.gz").exists()
    # read_an4 reports it too (overlap between parts is only visible to prepare_an4)
    reported = [b for part in ("train", "test") for b in read_an4(small_corpus.root, part)[1]]
    assert len(reported) == (0 if case == "train_test_overlap" else 1)
    # 2) skip_bad: succeeds, lists the item in bad_utterances.txt, keeps every good utterance
    cutsets = prepare_an4(small_corpus.root, tmp_path / "skip", skip_bad=True)
    report = (tmp_path / "skip" / "bad_utterances.txt").read_text().splitlines()
    assert len(report) == 1
    assert item in report[0] and problem in report[0]
    kept = [c.id for s in SPLITS for c in cutsets[s]]
    assert len(kept) == len(set(kept))
    assert set(kept) == set(small_corpus.all_ids()) - left_out
    # the written manifests hold the same cuts
    from lhotse import CutSet

    on_disk = [c.id for s in SPLITS for c in CutSet.from_file(tmp_path / "skip" / f"cuts_{s}.jsonl.gz")]
    assert sorted(on_disk) == sorted(kept)


def test_missing_list_file_names_it(small_corpus, tmp_path):
    (small_corpus.root / "etc" / "an4_test.transcription").unlink()
    with pytest.raises(CorpusError, match="an4_test.transcription"):
        prepare_an4(small_corpus.root, tmp_path / "out", skip_bad=True)


def test_several_problems_are_all_listed(small_corpus, tmp_path):
    _corrupt("unreadable_audio", small_corpus)
    _corrupt("missing_audio", small_corpus)
    with pytest.raises(CorpusError) as ei:
        prepare_an4(small_corpus.root, tmp_path / "out")
    msg = str(ei.value)
    assert "2 problem(s)" in msg and "unreadable audio" in msg and "audio file missing" in msg


def test_audio_at_another_rate_is_resampled_not_refused(small_corpus, tmp_path):
    """An 8 kHz file in the AN4 layout: accepted, and its cut resampled to 16 kHz like every other corpus's."""
    fid = small_corpus.train[1][0]
    audio, _ = sf.read(small_corpus.audio(fid), dtype="int16")
    sf.write(small_corpus.audio(fid), audio[::2], 8000)
    cutsets = prepare_an4(small_corpus.root, tmp_path / "out")
    cut = next(c for s in SPLITS for c in cutsets[s] if c.id == small_corpus.uid(fid))
    assert cut.sampling_rate == 16000 and cut.recording.sampling_rate == 16000
    assert abs(cut.load_audio().shape[1] - len(audio)) <= 16  # the duration kept
    assert not (tmp_path / "out" / "bad_utterances.txt").exists()


def test_transfer_set_from_a_directory_of_untranscribed_audio(exp, tmp_path):
    """Any audio directory -> windows of the corpus rate, fbank, CMVN per directory, every frame labelled -1."""
    import shutil

    from lhotse import CutSet

    from asr_distill.data import prepare_transfer
    from asr_distill.data.transfer import NO_LABEL, transfer_paths
    from conftest import SLICE

    audio = tmp_path / "audio"
    nested = audio / "spk1" / "ch1"
    nested.mkdir(parents=True)
    flacs = [f for f in sorted((SLICE / "wav").rglob("*.flac")) if sf.info(str(f)).duration > 2.5][:3]
    for name, src in zip(("a.flac", "b.flac"), flacs):
        shutil.copyfile(src, nested / name)
    samples, rate = sf.read(flacs[2], dtype="int16")
    sf.write(audio / "c.wav", samples[::2], rate // 2)  # 8 kHz: resampled, not refused
    (audio / "notes.txt").write_text("not audio")  # other files are no business of the reader
    meta = prepare_transfer(tmp_path / "transfer", audio, exp.cuts("train", "fbank"), max_duration=1.0)
    paths = transfer_paths(tmp_path / "transfer")
    cuts = list(CutSet.from_file(paths["labelled"]))
    assert meta["files"] == 3 and meta["cuts"] == len(cuts) >= 9  # recordings of over 2.5 s in windows of 1 s
    assert meta["frames"] == sum(c.num_frames for c in cuts) > 0
    assert all(c.duration <= 1.0 + 1e-6 and c.sampling_rate == 16000 for c in cuts)
    assert {c.supervisions[0].speaker for c in cuts} == {"transfer-spk1_ch1", "transfer-all"}
    for c in cuts:
        labels = c.load_custom("pdf_ids")
        assert len(labels) == c.num_frames and (labels == NO_LABEL).all()
    stats = CmvnStats.load(paths["cmvn"])
    assert set(stats.speaker_mean) == {"transfer-spk1_ch1", "transfer-all"}
    # a second call with the same directory reuses what is there
    stamp = paths["labelled"].stat().st_mtime_ns
    assert prepare_transfer(tmp_path / "transfer", audio, exp.cuts("train", "fbank"), max_duration=1.0) == meta
    assert paths["labelled"].stat().st_mtime_ns == stamp
    # a damaged file is named (never silently dropped) unless skipped; an empty directory is refused
    (nested / "broken.flac").write_bytes(b"not audio at all" * 40)
    with pytest.raises(CorpusError, match="broken.flac"):
        prepare_transfer(tmp_path / "transfer2", audio, exp.cuts("train", "fbank"), max_duration=1.0)
    assert prepare_transfer(tmp_path / "transfer2", audio, exp.cuts("train", "fbank"), max_duration=1.0,
                            skip_bad=True)["files"] == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no audio files"):
        prepare_transfer(tmp_path / "transfer3", tmp_path / "empty", exp.cuts("train", "fbank"))
