"""Streaming: a student of narrow right context trained on wider windows, exported with causal (online) CMVN, and
``transcribe --stream`` on the slice's real audio fed in chunks and through standard input.

The streaming path must compute the very pseudo log-likelihoods of the end-to-end graph on the whole recording: the
stream changes when words appear, not which words.
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import wave as wavelib

import numpy as np
import pytest
import torch

from conftest import REPO, load_frames

DATA_LEFT, DATA_RIGHT = 4, 3  # the frame sets' windows (the experiment's, the teachers')
OWN_LEFT, OWN_RIGHT = 4, 1  # the streaming model's own context: 1 frame (10 ms) of look-ahead
SYSTEM = "stream-test-mlp"


@pytest.fixture(scope="module")
def trained(exp):
    """A 3-epoch MLP of context (4, 1) trained on (4, 3) windows, at EXP/distill/<SYSTEM>/best.pt."""
    from asr_distill.nnet.models import build_model, fit_windows
    from asr_distill.nnet.train import TrainConfig, train_model
    from asr_distill.recipe import model_config

    torch.manual_seed(0)
    frames = {s: load_frames(exp, s, DATA_LEFT, DATA_RIGHT) for s in ("train", "dev")}
    cfg = {**model_config("mlp", exp, OWN_LEFT, OWN_RIGHT, hidden_dim=128, num_layers=2, dropout=0.0),
           "left": OWN_LEFT, "right": OWN_RIGHT}
    model = fit_windows(build_model(cfg), DATA_LEFT, DATA_RIGHT)
    out = exp / "distill" / SYSTEM
    summary = train_model(model, frames["train"], frames["dev"], TrainConfig(epochs=3, batch_size=128, lr=2e-3,
                                                                             seed=3), out, progress=False,
                          resume=False)
    assert summary["best_dev_acc"] > 5.0  # it learned from the cropped windows (chance is ~5 %)
    return out / "best.pt"


@pytest.fixture(scope="module")
def model_dir(exp, trained, tmp_path_factory):
    from asr_distill.deploy.export import export_model

    out = tmp_path_factory.mktemp("exported") / "stream"
    export_model(exp.dir, trained, out, system=SYSTEM, cmvn="online", decoding=dict(acoustic_scale=0.2))
    return out


@pytest.fixture(scope="module")
def waves(exp):
    from asr_distill.deploy.audio import load_audio
    from asr_distill.deploy.measure import split_audio

    return {u: load_audio(p) for u, p in sorted(split_audio(exp.dir, "test").items())}


def _stream_loglikes(rec, wave, chunk):
    from asr_distill.deploy.streaming import recognize_stream

    got = []
    advance = rec.decoder.advance
    rec.decoder.advance = lambda ll: (got.append(ll.copy()), advance(ll))
    try:
        words = recognize_stream(rec, (wave[a:a + chunk] for a in range(0, len(wave), chunk)))
    finally:
        rec.decoder.advance = advance
    return np.concatenate(got), words


# ------------------------------------------------------------------------------------------------------------------

def test_fit_windows_crops_to_the_models_own_context():
    from asr_distill.nnet.models import build_model, fit_windows

    own = build_model(dict(arch="mlp", input_dim=3, context=4, num_pdfs=5, hidden_dim=8, num_layers=1, left=2,
                           right=1))
    x = torch.randn(6, 2 + 1 + 3, 3)  # windows (2, 3): frames t-2 .. t+3
    expected = own(x[:, :4])  # t-2 .. t+1
    assert torch.equal(fit_windows(own, 2, 3)(x), expected)
    with pytest.raises(ValueError, match="wider than the windows"):
        fit_windows(build_model(dict(own.config)), 1, 3)
    with pytest.raises(ValueError, match="must be the context"):
        build_model(dict(own.config, right=2))


def test_online_normaliser_matches_the_graphs_causal_mean():
    """numpy chunk by chunk == the exported graph's tensor formula, whatever the chunking, window and prior."""
    from asr_distill.deploy.export import online_mean
    from asr_distill.deploy.streaming import OnlineNormaliser

    rng = np.random.default_rng(0)
    feats = rng.normal(3.0, 2.0, size=(53, 4)).astype(np.float32)
    mean, std = rng.normal(size=4), rng.uniform(0.5, 2.0, size=4)
    for window, prior in ((7, 5), (5, 9), (600, 200), (1, 0)):
        ref = ((feats.astype(np.float64) - online_mean(torch.from_numpy(feats), window, torch.from_numpy(mean),
                                                       prior).numpy()) / std).astype(np.float32)
        for sizes in ((53,), (1,) * 53, (3, 10, 1, 39)):
            norm = OnlineNormaliser("online", mean, std, window, prior)
            pieces, a = [], 0
            for n in sizes:
                pieces.append(norm(feats[a:a + n]))
                a += n
            np.testing.assert_allclose(np.concatenate(pieces), ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="cannot stream"):
        OnlineNormaliser("sliding", mean, std)


def test_streaming_loglikes_are_the_whole_graphs(model_dir, waves):
    """Every chunking (a frame, odd sample counts, a second) and a recording longer than the CMVN window give
    model.onnx's loglikes on the whole recording, and the offline transcriber's words."""
    from asr_distill.deploy.streaming import StreamingRecognizer
    from asr_distill.deploy.transcribe import AcousticModel, Transcriber

    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["context"] == {"left": OWN_LEFT, "right": OWN_RIGHT, "splicing": "edges repeated"}
    assert card["cmvn"] == "online" and card["files"]["network"] == "network.onnx"
    rec, whole, offline = StreamingRecognizer(model_dir), AcousticModel(model_dir), Transcriber(model_dir)
    utts = list(waves)[:3]
    for utt in utts:
        ref = whole(waves[utt])
        ref_words = offline.decoder.decode(ref)
        for chunk in (160, 1133, 16000):
            got, words = _stream_loglikes(rec, waves[utt], chunk)
            np.testing.assert_allclose(got, ref, atol=1e-4)
            assert words == [offline.id2word[i] for i in ref_words if offline.id2word[i] not in ("<eps>", "#0")]
    long = np.concatenate([waves[u] for u in list(waves)[:8]] * 2)  # past the 600-frame CMVN window
    assert len(long) > 700 * 160
    got, _ = _stream_loglikes(rec, long, 4000)
    np.testing.assert_allclose(got, whole(long), atol=1e-4)
    # causal: a prefix's frames are the whole's, but for the last ones (look-ahead and the last fbank window)
    prefix = whole(long[:160 * 650])
    np.testing.assert_allclose(prefix[:-(OWN_RIGHT + 3)], whole(long)[:len(prefix) - OWN_RIGHT - 3], atol=1e-4)


def _wav_bytes(x: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wavelib.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def test_transcribe_stream_files_stdin_and_partials(model_dir, waves, exp, tmp_path):
    from asr_distill.deploy.measure import split_audio
    from asr_distill.deploy.transcribe import transcribe

    paths = [split_audio(exp.dir, "test")[u] for u in list(waves)[:3]]
    offline, failed = transcribe(model_dir, paths, out=io.StringIO())
    assert not failed
    err = io.StringIO()
    streamed, failed = transcribe(model_dir, paths, out=io.StringIO(), err=err, stream=True, chunk_ms=50,
                                  partial=True)
    assert not failed and streamed == offline
    partials = [line.split("\t") for line in err.getvalue().splitlines()]
    assert partials and all(p[1] == "partial" for p in partials)
    assert {p[0] for p in partials} <= set(offline)

    utt = list(waves)[0]
    wav = _wav_bytes(waves[utt])
    as_file = tmp_path / "rounded.wav"  # the same 16-bit samples as a file: the offline reference
    as_file.write_bytes(wav)
    expected = " ".join(transcribe(model_dir, [as_file], out=io.StringIO())[0]["rounded"])
    pcm16 = (np.clip(waves[utt], -1, 1) * 32767).astype("<i2")
    cmd = [sys.executable, "-m", "asr_distill.deploy.transcribe", "--model-dir", str(model_dir), "--stream", "-"]
    for payload in (wav, pcm16.tobytes()):  # a WAV stream, then raw PCM
        run = subprocess.run(cmd, input=payload, capture_output=True, cwd=REPO, timeout=120)
        assert run.returncode == 0, run.stderr.decode()
        assert run.stdout.decode().rstrip("\n") == f"stdin\t{expected}"
    run = subprocess.run(cmd, input=_wav_bytes(waves[utt][::2], 8000), capture_output=True, cwd=REPO, timeout=120)
    assert run.returncode == 1 and "8000 Hz" in run.stderr.decode() and "resample" in run.stderr.decode()


def test_stream_refuses_a_model_that_cannot_stream(exp, trained, tmp_path):
    from asr_distill.deploy.export import export_model
    from asr_distill.deploy.transcribe import main

    out = tmp_path / "sliding"
    export_model(exp.dir, trained, out, system=SYSTEM, cmvn="sliding", int8=False)
    err = io.StringIO()
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):  # --partial without --stream
        main(["--model-dir", str(out), "--partial", "x.wav"])
    with contextlib.redirect_stderr(err):
        assert main(["--model-dir", str(out), "--stream", "x.wav"]) == 2
    assert "cannot stream" in err.getvalue() and "--cmvn online" in err.getvalue()
