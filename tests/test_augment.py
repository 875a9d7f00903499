"""Input perturbation of the training windows (asr_distill.nnet.augment) and its use in distillation: live teachers label
the perturbed window the student sees, a top-k cache refuses it, and resumed training stays bit-identical."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from asr_distill.nnet.augment import WindowAugment
from asr_distill.distill import DistillStep, TopKCache
from asr_distill.nnet.frames import FrameSet
from asr_distill.nnet.models import MLP, build_model
from asr_distill.distill.recipes import parse_select_candidates, recipe_overrides, student_dir as _student_dir
from asr_distill.recipe import model_config
from conftest import load_frames
from asr_distill.nnet.train import TrainConfig, train_model


def test_inactive_augment_returns_the_input_itself():
    x = torch.randn(4, 3, 5)
    assert WindowAugment()(x) is x
    with pytest.raises(ValueError):
        WindowAugment(noise_std=-0.1)


def test_frequency_mask_is_one_band_shared_by_all_frames_of_a_window():
    torch.manual_seed(0)
    x = torch.randn(2000, 7, 40) + 10.0  # no zeros of its own
    y = WindowAugment(freq_mask=8)(x)
    zero = y == 0
    # the same bins in every frame of a window
    assert torch.equal(zero, zero[:, :1, :].expand_as(zero))
    bins = zero[:, 0, :]
    widths = bins.sum(1)
    assert int(widths.max()) <= 8 and int(widths.min()) == 0
    assert set(widths.tolist()) == set(range(9))  # every width 0..8 occurs in 2000 draws
    for row in bins[widths > 0][:200]:  # contiguous: one run of zeros
        idx = torch.nonzero(row).flatten()
        assert int(idx[-1] - idx[0] + 1) == len(idx)
    starts = torch.stack([torch.nonzero(r).flatten()[0] for r in bins[widths > 0]])
    assert int(starts.min()) == 0 and int(starts.max()) >= 35  # the band reaches both edges
    untouched = ~zero
    assert torch.equal(y[untouched], x[untouched])


def test_noise_has_the_requested_spread():
    torch.manual_seed(1)
    x = torch.zeros(500, 11, 40)
    y = WindowAugment(noise_std=0.2)(x)
    assert abs(float(y.std()) - 0.2) < 0.005 and abs(float(y.mean())) < 0.005


class _Recorder(nn.Module):
    """Wraps a model and keeps the last input it saw."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.seen = model, model.config, None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.model(x)


def _frameset(feat=6, pdfs=8):
    rng = np.random.default_rng(0)
    lens = [40, 55, 30]
    return FrameSet.from_arrays([rng.standard_normal((n, feat)).astype(np.float32) for n in lens],
                                [rng.integers(0, pdfs, n) for n in lens], ["a", "b", "c"], 1, 1)


def test_live_teachers_label_the_perturbed_window_the_student_sees():
    torch.manual_seed(0)
    frames = _frameset()
    teacher = _Recorder(MLP(6, 3, 8, 16, 1).eval())
    student = _Recorder(MLP(6, 3, 8, 16, 1))
    # teacher_mode="loop": the recorder is then called on the window itself
    step = DistillStep(student, [teacher], frames=frames, T=2.0, alpha=0.5, teacher_mode="loop",
                       augment=WindowAugment(noise_std=0.5, freq_mask=3))
    idx = torch.arange(32)
    step.step(idx)
    clean = frames.windows(idx)
    assert torch.equal(teacher.seen, student.seen)
    assert not torch.allclose(student.seen, clean)  # perturbed, not the clean window
    step.step(idx)
    first = student.seen
    step.step(idx)
    assert not torch.equal(first, student.seen)  # a fresh perturbation every step


def test_a_topk_cache_refuses_perturbed_inputs():
    frames = _frameset()
    cache = TopKCache(torch.rand(frames.num_frames, 3).half(), torch.zeros(frames.num_frames, 3, dtype=torch.int16),
                      {"T": 2.0})
    with pytest.raises(ValueError, match="live teachers"):
        DistillStep(MLP(6, 3, 8, 16, 1), cache=cache, frames=frames, T=2.0, alpha=0.5,
                    augment=WindowAugment(noise_std=0.1))
    # alpha = 0 (hard labels) may perturb: the cache is not used then
    DistillStep(MLP(6, 3, 8, 16, 1), cache=cache, frames=frames, T=2.0, alpha=0.0,
                augment=WindowAugment(noise_std=0.1))


def test_perturbed_training_resumes_bit_identically_and_learns(exp, tmp_path):
    """The perturbations draw from the global RNG, which training re-seeds every epoch: a run stopped after epoch 1
    and resumed ends with the very weights of an uninterrupted one."""
    frames = {s: load_frames(exp, s, 3, 3) for s in ("train", "dev")}
    cfg = TrainConfig(epochs=3, batch_size=256, lr=2e-3, seed=5, noise_std=0.2, freq_mask=8)

    def model():
        torch.manual_seed(0)
        return build_model(model_config("mlp", exp, 3, 3, hidden_dim=64, num_layers=2, dropout=0.0))

    whole = train_model(model(), frames["train"], frames["dev"], cfg, tmp_path / "a", progress=False)
    train_model(model(), frames["train"], frames["dev"], cfg, tmp_path / "b", progress=False, stop_after_epochs=1)
    train_model(model(), frames["train"], frames["dev"], cfg, tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["train_config"]["noise_std"] == 0.2 and a["train_config"]["freq_mask"] == 8
    labels = frames["dev"].labels.numpy()
    labels = labels[labels >= 0]  # -1: an utterance the GMM could not align
    chance = 100.0 * np.bincount(labels).max() / len(labels)
    # it learns through the perturbation: on the slice's ~200 senones this small MLP reached 19.9% after 3
    # epochs against a majority-class rate of 8.1%
    assert whole["best_dev_acc"] > 2.0 * chance
    # a run without perturbation records no augmentation keys, so checkpoints from before they existed resume
    plain = train_model(model(), frames["train"], frames["dev"], TrainConfig(epochs=1, batch_size=256, seed=5),
                        tmp_path / "c", progress=False)
    assert plain["finished"]
    c = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert "noise_std" not in c["train_config"] and "freq_mask" not in c["train_config"]


def test_student_recipes_and_select_candidates_parse():
    assert recipe_overrides() == {}
    assert recipe_overrides(30, 0.2, 8) == {"epochs": 30, "noise_std": 0.2, "freq_mask": 8}
    assert parse_select_candidates("2:0.5, 5:0.9:30:0.2:8,1:0.5:20") == [
        (2.0, 0.5, {}), (5.0, 0.9, {"epochs": 30, "noise_std": 0.2, "freq_mask": 8}), (1.0, 0.5, {"epochs": 20})]
    for bad in ("2", "2:0", "x:0.5", "2:0.5:1:2:3:4", ""):
        with pytest.raises(ValueError):
            parse_select_candidates(bad)
    assert _student_dir(2.0, 0.5, {}) == "sweep-T2-a0.5"
    assert _student_dir(5.0, 0.9, {"epochs": 30, "noise_std": 0.2, "freq_mask": 8}) == "sweep-T5-a0.9-e30-f8-n0.2"


class _SelectRun:
    """What ``run_select`` uses of a DistillRunner: trainings recorded, dev accuracies looked up by system name."""

    main = False  # nothing written
    teacher_config = {"arch": "mlp"}
    train_config = {"epochs": 10, "noise_std": 0.2, "freq_mask": 8}

    def __init__(self, dev_acc):
        self.dev_acc, self.trained = dev_acc, []

    def train(self, name, config, T=1.0, alpha=0.0, **recipe):
        self.trained.append(name)
        return name, {"best_epoch": 1}

    def frame_acc(self, model, split="test"):
        return self.dev_acc[model] if split == "dev" else 0.0


@pytest.mark.parametrize("choice", ["own", "shared"])
def test_select_tunes_the_baseline_recipe_on_its_own_dev_accuracy(choice):
    from asr_distill.distill.experiments import DistillSettings, run_select

    # the student does best with 20 epochs, the hard-label control with the teachers' 10
    run = _SelectRun({"sweep-T5-a0.5": 43.3, "sweep-T5-a0.5-e20": 44.3, "sweep-T1-a0": 43.2, "sweep-T1-a0-e20": 42.5})
    # "epochs 10" and "noise 0.2" are the teachers' own settings: no override, so no second training
    s = DistillSettings(select_candidates=[(5.0, 0.5, {}), (5.0, 0.5, {"epochs": 10}),
                                           (5.0, 0.5, {"epochs": 20, "noise_std": 0.2})], baseline_choice=choice)
    table = run_select(run, s)
    assert run.trained == ["sweep-T5-a0.5", "sweep-T5-a0.5-e20", "sweep-T1-a0", "sweep-T1-a0-e20"]
    assert (s.T, s.alpha, s.recipe) == (5.0, 0.5, {"epochs": 20})
    assert s.baseline_recipe == ({} if choice == "own" else {"epochs": 20}) == table["baseline_recipe"]
    assert table["chosen_baseline"]["recipe"] == {} and table["chosen"]["dev_frame_acc"] == 44.3

    # one recipe only, the teachers': no control to train (table 1's baseline is that run)
    run = _SelectRun({"sweep-T2-a0.5": 43.0, "sweep-T5-a0.5": 43.3})
    s = DistillSettings(select_candidates=[(2.0, 0.5, {}), (5.0, 0.5, {})], baseline_choice=choice)
    table = run_select(run, s)
    assert run.trained == ["sweep-T2-a0.5", "sweep-T5-a0.5"] and "chosen_baseline" not in table
    assert s.T == 5.0 and s.recipe == s.baseline_recipe == {}
    with pytest.raises(ValueError, match="baseline_choice"):
        run_select(run, DistillSettings(select_candidates=[(2.0, 0.5, {})], baseline_choice="mine"))
