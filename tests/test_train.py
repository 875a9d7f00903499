"""Frame-level training (asr_distill.nnet.train), spliced frames, models, and the ensemble means, on the slice's real
frames and GMM alignment labels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asr_distill.nnet.frames import FrameSet, splice_utterance
from asr_distill.nnet.models import MLP, TDNN, build_model, count_parameters
from asr_distill.nnet import ensemble_log_posteriors
from asr_distill.recipe import model_config
from conftest import load_frames, pdf_alignments
from asr_distill.nnet import TrainConfig, frame_accuracy, load_model, log_posteriors, save_model, train_model

LEFT = RIGHT = 3


@pytest.fixture(scope="module")
def frames(exp):
    return {s: load_frames(exp, s, LEFT, RIGHT) for s in ("train", "dev")}


def _small_mlp(exp, seed=0):
    torch.manual_seed(seed)
    return build_model(model_config("mlp", exp, LEFT, RIGHT, hidden_dim=128, num_layers=2, dropout=0.1))


def _train(exp, frames, out_dir, **kw):
    cfg = TrainConfig(epochs=3, batch_size=256, lr=2e-3, seed=7, patience=10)
    return train_model(_small_mlp(exp), frames["train"], frames["dev"], cfg, out_dir, progress=False, **kw)


def test_frames_match_the_alignments(exp, frames):
    for s, fs in frames.items():
        alis = pdf_alignments(exp, s)
        assert fs.utt_ids == list(alis)
        assert fs.num_frames == sum(len(a) for a in alis.values())
        assert fs.feats.shape == (fs.num_frames, 40) and fs.context == LEFT + 1 + RIGHT
        expected = np.concatenate(list(alis.values()))
        np.testing.assert_array_equal(fs.labels.numpy(), expected)


@pytest.fixture(scope="module")
def trained(exp, frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp")
    summary = _train(exp, frames, out)
    return out, summary


def test_small_mlp_beats_chance_by_far(frames, trained):
    out, summary = trained
    dev_labels = frames["dev"].labels.numpy()
    chance = 100.0 * np.bincount(dev_labels).max() / len(dev_labels)  # always answer the majority class
    # Observed on the slice (3 epochs, 2x128 MLP, 7-frame context, ~24.7k training frames): with 104 monophone
    # classes dev frame accuracy 61.4-63.3 % against a majority-class rate of 25.3-27.9 % (three GMM builds); with
    # the tri1 senones (~200 classes) 24.0 % against 5.0 %.
    assert summary["epochs_run"] == 3 and summary["finished"]
    assert summary["best_dev_acc"] > 3.0 * chance, (summary["best_dev_acc"], chance)
    # the reported best accuracy is what best.pt scores
    model = load_model(out / "best.pt")
    acc, ce = frame_accuracy(model, frames["dev"])
    assert acc == pytest.approx(summary["best_dev_acc"], abs=1e-6)
    assert ce < math.log(model.config["num_pdfs"])  # better than a uniform guess
    # log-posteriors per utterance, normalised, of the right shapes
    post = log_posteriors(model, frames["dev"])
    assert list(post) == frames["dev"].utt_ids
    for u, p in list(post.items())[:3]:
        assert p.shape[1] == model.config["num_pdfs"]
        np.testing.assert_allclose(np.exp(p).sum(1), 1.0, atol=1e-4)
    history = (out / "log.csv").read_text().splitlines()
    assert len(history) == 1 + 3


def test_resume_gives_identical_weights(exp, frames, trained, tmp_path):
    straight, _ = trained
    part = _train(exp, frames, tmp_path, stop_after_epochs=1)
    assert part["epochs_run"] == 1 and not part["finished"]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 0
    done = _train(exp, frames, tmp_path, resume=True)  # a fresh model object: everything comes from the checkpoint
    assert done["epochs_run"] == 3 and done["finished"]
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["dev_acc"] for h in a["history"]] == [h["dev_acc"] for h in b["history"]]
    assert a["best"] == b["best"]
    # the optimizer state resumed too
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # resuming with other options is refused rather than silently mixing runs
    with pytest.raises(RuntimeError, match="different training config"):
        train_model(_small_mlp(exp), frames["train"], frames["dev"], TrainConfig(epochs=4, seed=7), tmp_path,
                    progress=False)


def test_a_truncated_checkpoint_is_moved_aside_and_training_starts_over(exp, frames, trained, tmp_path, caplog):
    straight, _ = trained
    _train(exp, frames, tmp_path, stop_after_epochs=1)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # cut short, as by a full disk
    with caplog.at_level("WARNING"):
        done = _train(exp, frames, tmp_path)
    assert done["epochs_run"] == 3 and done["finished"]
    assert (tmp_path / "checkpoint.pt.unreadable").is_file()
    assert any(str(ckpt) in r.getMessage() and "moved aside" in r.getMessage() for r in caplog.records)
    # started over from epoch 1, so it ends where an uninterrupted run of the same seed does
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_checkpoints_load_with_weights_only(trained):
    out, _ = trained
    for name in ("checkpoint.pt", "best.pt"):
        obj = torch.load(out / name, weights_only=True)  # no pickled code needed
        assert isinstance(obj, dict)
    best = torch.load(out / "best.pt", weights_only=True)
    model = load_model(out / "best.pt")
    assert model.config == best["config"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["state_dict"][k])


def test_corrupt_checkpoints_give_clear_errors(trained, tmp_path):
    out, _ = trained
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(RuntimeError, match=r"garbage\.pt: not a readable asr-distill model checkpoint"):
        load_model(garbage)
    truncated = tmp_path / "truncated.pt"
    data = (out / "best.pt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"truncated\.pt: not a readable"):
        load_model(truncated)
    no_config = tmp_path / "no_config.pt"
    torch.save({"state_dict": {}}, no_config)
    with pytest.raises(RuntimeError, match="lacks 'config'/'state_dict'"):
        load_model(no_config)
    bad_arch = tmp_path / "bad_arch.pt"
    torch.save({"config": {"arch": "lstm"}, "state_dict": {}}, bad_arch)
    with pytest.raises(ValueError, match="lstm"):
        load_model(bad_arch)


def test_save_load_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = TDNN(40, 7, 11, hidden_dim=16, num_layers=3)
    model.eval()
    save_model(model, tmp_path / "m.pt", {"note": "x"})
    back = load_model(tmp_path / "m.pt").eval()
    x = torch.randn(5, 7, 40)
    assert torch.equal(model(x), back(x))
    assert torch.load(tmp_path / "m.pt", weights_only=True)["note"] == "x"


# ----------------------------------------------------------------------------------------------------------------
# Ensemble means

def test_ensemble_means_by_hand():
    rng = np.random.RandomState(0)
    members = []
    for _ in range(3):
        z = rng.randn(4, 5)
        members.append({"u": (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float32)})
    ari = ensemble_log_posteriors(members, "arithmetic")["u"]
    geo = ensemble_log_posteriors(members, "geometric")["u"]
    for t in range(4):
        probs = [[math.exp(float(m["u"][t, c])) for c in range(5)] for m in members]
        mean = [sum(p[c] for p in probs) / 3 for c in range(5)]
        for c in range(5):
            assert ari[t, c] == pytest.approx(math.log(mean[c]), abs=1e-5)
        g = [math.exp(sum(math.log(p[c]) for p in probs) / 3) for c in range(5)]
        for c in range(5):
            assert geo[t, c] == pytest.approx(math.log(g[c] / sum(g)), abs=1e-5)
    assert ari.dtype == geo.dtype == np.float32
    # one member: both means are that member
    np.testing.assert_allclose(ensemble_log_posteriors(members[:1], "arithmetic")["u"], members[0]["u"], atol=1e-6)
    np.testing.assert_allclose(ensemble_log_posteriors(members[:1], "geometric")["u"], members[0]["u"], atol=1e-6)
    with pytest.raises(ValueError, match="harmonic"):
        ensemble_log_posteriors(members, "harmonic")


# ----------------------------------------------------------------------------------------------------------------
# Spliced frames

def test_windows_replicate_edges_like_splice_utterance():
    torch.manual_seed(0)
    lengths = [5, 1, 9, 2]
    feats = [torch.randn(n, 3).numpy() for n in lengths]
    left, right = 3, 2
    fs = FrameSet.from_arrays(feats, [np.arange(n) for n in lengths], ["a", "b", "c", "d"], left, right)
    win = fs.windows(torch.arange(fs.num_frames))
    assert win.shape == (sum(lengths), left + 1 + right, 3)
    expected = torch.cat([splice_utterance(torch.from_numpy(f), left, right) for f in feats])
    assert torch.equal(win, expected)
    # by hand: frame 0 of utterance "a" sees frames [0, 0, 0, 0, 1, 2]; the single frame of "b" only itself
    a = torch.from_numpy(feats[0])
    assert torch.equal(win[0], a[[0, 0, 0, 0, 1, 2]])
    assert torch.equal(win[4], a[[1, 2, 3, 4, 4, 4]])
    assert torch.equal(win[5], torch.from_numpy(feats[1])[[0] * 6])
    # windows never cross utterance boundaries; per-utterance access and labels agree
    uid, x, y = fs.utterance(2)
    assert uid == "c" and torch.equal(x, splice_utterance(torch.from_numpy(feats[2]), left, right))
    assert torch.equal(y, torch.arange(9))
    with pytest.raises(ValueError, match="utterance b"):
        FrameSet.from_arrays(feats, [np.arange(n + (k == 1)) for k, n in enumerate(lengths)], list("abcd"), 1, 1)


def test_concatenated_sets_are_the_sets_one_after_the_other():
    """Training frames + a transfer set: one FrameSet whose windows, labels and utterances are each set's own."""
    torch.manual_seed(1)
    a_feats, b_feats = [torch.randn(n, 3).numpy() for n in (4, 6)], [torch.randn(n, 3).numpy() for n in (2, 5, 3)]
    a = FrameSet.from_arrays(a_feats, [np.arange(n) for n in (4, 6)], ["a1", "a2"], 2, 1, utt_index=[3, 8])
    b = FrameSet.from_arrays(b_feats, [np.full(n, -1) for n in (2, 5, 3)], ["t1", "t2", "t3"], 2, 1)
    both = FrameSet.concat([a, b])
    assert both.num_frames == 20 and both.utt_ids == ["a1", "a2", "t1", "t2", "t3"]
    assert both.offsets.tolist() == [0, 4, 10, 12, 17, 20] and both.utt_index == [3, 8, 9, 10, 11]
    all_windows = both.windows(torch.arange(20))
    assert torch.equal(all_windows[:10], a.windows(torch.arange(10)))
    assert torch.equal(all_windows[10:], b.windows(torch.arange(10)))  # no window reaches across the join
    assert both.labels[:10].tolist() == a.labels.tolist() and (both.labels[10:] == -1).all()
    uid, x, _ = both.utterance(3)
    assert uid == "t2" and torch.equal(x, splice_utterance(torch.from_numpy(b_feats[1]), 2, 1))
    with pytest.raises(ValueError, match="context"):
        FrameSet.concat([a, FrameSet.from_arrays(b_feats, None, ["t1", "t2", "t3"], 1, 1)])


def test_shuffled_batches_cover_every_frame_once():
    fs = FrameSet.from_arrays([np.zeros((7, 2), np.float32), np.zeros((6, 2), np.float32)], None, ["a", "b"], 1, 1)
    batches = list(fs.shuffled_batches(4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 4, 1]
    assert sorted(torch.cat(batches).tolist()) == list(range(13))
    again = list(fs.shuffled_batches(4, torch.Generator().manual_seed(0)))
    assert all(torch.equal(x, y) for x, y in zip(batches, again))


# ----------------------------------------------------------------------------------------------------------------
# Models

@pytest.mark.parametrize("context", [1, 3, 7, 17])
@pytest.mark.parametrize("arch", ["mlp", "tdnn"])
def test_model_shapes_and_rebuild(arch, context):
    torch.manual_seed(0)
    cfg = dict(arch=arch, input_dim=40, context=context, num_pdfs=13, hidden_dim=24, num_layers=3, dropout=0.0)
    model = build_model(cfg).eval()
    x = torch.randn(6, context, 40)
    assert model(x).shape == (6, 13)
    assert {k: model.config[k] for k in cfg} == cfg
    twin = build_model(model.config).eval()
    assert [(k, v.shape) for k, v in twin.state_dict().items()] == \
        [(k, v.shape) for k, v in model.state_dict().items()]
    assert count_parameters(twin) == count_parameters(model) == sum(p.numel() for p in model.parameters())
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin(x), model(x))
    assert type(twin) is (MLP if arch == "mlp" else TDNN)


def test_mlp_parameter_count_by_hand():
    d, c, h, layers, p = 40, 17, 64, 4, 104
    model = MLP(d, c, p, hidden_dim=h, num_layers=layers)
    expected = (d * c * h + h) + (layers - 1) * (h * h + h) + (h * p + p)
    assert count_parameters(model) == expected


def test_tdnn_receptive_field_covers_the_context():
    # a TDNN sees exactly the window: changing any input frame changes the output, for several contexts
    for context in (3, 7, 17):
        torch.manual_seed(0)
        model = TDNN(8, context, 5, hidden_dim=16, num_layers=4).eval()
        x = torch.randn(1, context, 8)
        base = model(x)
        for t in range(context):
            y = x.clone()
            y[0, t] += 1.0
            assert not torch.allclose(model(y), base), (context, t)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown model architecture"):
        build_model({"arch": "rnn", "input_dim": 1, "context": 1, "num_pdfs": 1})
