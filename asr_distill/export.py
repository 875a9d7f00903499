"""Export a trained acoustic model as a self-contained model directory that needs none of the training code.

The exported graph computes, for ONE utterance::

    waveform (num_samples,) float32, 16 kHz mono, in [-1, 1] (as soundfile/Lhotse read it)
      -> 40 log-mel filterbanks, the same math and constants as training's Lhotse ``Fbank(FbankConfig(num_filters=40))``
         (Kaldi framing with snip_edges=False + reflected edges, DC removal, pre-emphasis 0.97, povey window,
         512-point power spectrum, Lhotse's mel banks with high_freq=-400, log floored at float32 eps)
      -> CMVN (see below)
      -> splicing: frames t-left .. t+right, edges repeated (as ``asr_distill.frames.splice_utterance``)
      -> the network -> log-softmax -> minus the log-priors of the training alignments
    = (num_frames, num_pdfs) float32 pseudo log-likelihoods, ready for the decoder (times the acoustic scale).

The spectrum is a DFT written as two matrix products (in float64) rather than ``torch.fft``: every op then exists in
TorchScript and in ONNX opset 17 alike, and onnxruntime's dynamic int8 quantisation applies to the network only.

CMVN.  Training normalised with per-SPEAKER statistics; a deployed model sees one file and no speaker label, so the
export chooses one of

* ``global`` (default): the training set's global mean / std, stored as constants in the graph,
* ``utterance``: mean and variance of the utterance itself, computed inside the graph.

``global`` is the default because it was better or equal on the slice's DEV set (59 words) for every system tried
(dev WER, global vs per-utterance: teacher0 25.4 vs 30.5, teacher1 28.8 vs 28.8, baseline 30.5 vs 40.7, student
25.4 vs 32.2; per-speaker, as trained: 23.7, 28.8, 27.1, 22.0): AN4 utterances are short (a few seconds, much of it
silence), so one utterance's own moments are a noisy estimate.  On the slice's TEST set (233 words) the student
decodes at 34.8% (global), 42.9% (utterance) and 36.9% (per-speaker, the recipe's number); teacher0 at 39.9%, 42.9%
and 35.2%.  Losing the speaker statistics costs a few points on this tiny slice; measure it on the full corpus.

The front end matches Lhotse's extractor to about 1e-4 (max abs difference of the log-mel energies; float64 DFT here,
float32 FFT there).  The choice is written to ``model_card.json`` (``cmvn``) together with the WER measured for it when available.

Directory layout (``out_dir``)::

    model.pt           TorchScript module   waveform -> pseudo log-likelihoods
    model.onnx         ONNX graph (opset 17), same function
    model.int8.onnx    ONNX with dynamically quantised int8 weights (``quantize_int8``)
    HCLG.fst words.txt tid2pdf.txt           decoding graph, word symbols, transition-id -> pdf map
    model_card.json    features, context, CMVN mode, decoding settings, pdfs, corpus, WER, sizes
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from .utils import Pathlike, read_json, write_json

__all__ = ["FbankFrontend", "ExportedAcousticModel", "build_exported_module", "export_model", "quantize_int8",
           "system_checkpoint", "CMVN_MODES", "update_card", "split_audio", "reference_loglikes", "decode_wer",
           "measure_model_dir"]

log = logging.getLogger(__name__)

CMVN_MODES = ("utterance", "global")
ONNX_OPSET = 17


class FbankFrontend(nn.Module):
    """Lhotse's ``Wav2LogFilterBank`` (snip_edges=False, no dither, no energy) in plain, exportable torch ops.

    Input ``(num_samples,)`` float32; output ``(num_frames, num_filters)`` float32 with
    ``num_frames = (num_samples + shift // 2) // shift``.
    """

    def __init__(self, window: torch.Tensor, mel_banks: torch.Tensor, frame_length: int = 400, frame_shift: int = 160,
                 fft_length: int = 512, preemph_coeff: float = 0.97, remove_dc_offset: bool = True,
                 eps: float = float(torch.finfo(torch.float32).eps)):
        super().__init__()
        self.frame_length = int(frame_length)
        self.frame_shift = int(frame_shift)
        self.pad_left = int((frame_length - frame_shift) // 2)
        self.preemph_coeff = float(preemph_coeff)
        self.remove_dc_offset = bool(remove_dc_offset)
        self.eps = float(eps)
        self.fft_length = int(fft_length)
        self.n_bins = int(fft_length // 2 + 1)
        self.register_buffer("window", window.detach().to(torch.float32).reshape(-1).clone())
        assert mel_banks.shape[0] == self.n_bins, (mel_banks.shape, self.n_bins)
        self.register_buffer("mel_banks", mel_banks.detach().to(torch.float64).clone())  # (n_bins, num_filters)

    @classmethod
    def from_lhotse(cls, **config) -> "FbankFrontend":
        """Constants (window, mel banks) taken from Lhotse's own extractor built with ``config`` (FbankConfig
        fields); raises if ``config`` asks for something this front end does not implement."""
        from lhotse import FbankConfig
        from lhotse.features.kaldi.layers import Wav2LogFilterBank

        cfg = FbankConfig(**config).to_dict()
        cfg.pop("device", None)
        unsupported = {k: cfg[k] for k, ok in (("dither", 0.0), ("snip_edges", False), ("use_energy", False),
                                                ("use_fft_mag", False), ("sampling_rate", 16000),
                                                ("torchaudio_compatible_mel_scale", True))
                       if k in cfg and cfg[k] != ok}
        if unsupported:
            raise ValueError(f"fbank settings not supported by the export front end: {unsupported}")
        ext = Wav2LogFilterBank(**cfg)
        win = ext.wav2win
        return cls(win._window.data, ext._fb.data, frame_length=win._length, frame_shift=win._shift,
                   fft_length=ext.fft_length, preemph_coeff=ext.preemph_coeff,
                   remove_dc_offset=ext.remove_dc_offset, eps=float(ext._eps.data))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n = wave.size(0)
        num_frames = (n + self.frame_shift // 2) // self.frame_shift
        # sample index of every (frame, offset), in the original signal's coordinates; reflection at both edges
        # exactly as Lhotse's _get_strided_batch (flip of the first pad_left samples, flip of the last ones)
        i = (torch.arange(num_frames, dtype=torch.int64)[:, None] * self.frame_shift
             + torch.arange(self.frame_length, dtype=torch.int64)[None, :] - self.pad_left)
        i = torch.where(i < 0, -i - 1, i)
        i = torch.where(i >= n, 2 * n - 1 - i, i)
        i = torch.clamp(i, 0, n - 1)  # only reached by signals shorter than a frame
        x = wave[i]  # (T, N)
        if self.remove_dc_offset:
            x = x - x.mean(dim=1, keepdim=True)
        if self.preemph_coeff != 0.0:
            prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
            x = x - self.preemph_coeff * prev
        x = (x * self.window).to(torch.float64)
        # DFT tables made in the graph (not stored: they would outweigh a small network); exact integer phase
        # (+ n - n: ties the tables to the input, so that exporters compute them at run time instead of folding
        # 1.6 MB of float64 constants into the ONNX file)
        k = torch.arange(self.frame_length, dtype=torch.int64)[:, None] + (n - n)
        f = torch.arange(self.n_bins, dtype=torch.int64)[None, :]
        angle = ((k * f) % self.fft_length).to(torch.float64) * (2.0 * math.pi / self.fft_length)
        re = torch.matmul(x, torch.cos(angle))
        im = torch.matmul(x, torch.sin(angle))
        mel = torch.matmul(re * re + im * im, self.mel_banks)
        return torch.clamp(mel, min=self.eps).log().to(torch.float32)


class ExportedAcousticModel(nn.Module):
    """Front end + CMVN + splicing + network + (log-softmax - log-priors): waveform -> pseudo log-likelihoods."""

    def __init__(self, frontend: FbankFrontend, network: nn.Module, log_priors: np.ndarray, left: int, right: int,
                 cmvn: str = "global", global_mean: Optional[np.ndarray] = None,
                 global_std: Optional[np.ndarray] = None):
        super().__init__()
        if cmvn not in CMVN_MODES:
            raise ValueError(f"cmvn must be one of {CMVN_MODES}, not {cmvn!r}")
        self.frontend = frontend
        self.network = network
        self.left, self.right = int(left), int(right)
        self.per_utterance = cmvn == "utterance"
        dim = frontend.mel_banks.shape[1]
        mean = np.zeros(dim, np.float32) if global_mean is None else np.asarray(global_mean, np.float32)
        std = np.ones(dim, np.float32) if global_std is None else np.asarray(global_std, np.float32)
        self.register_buffer("global_mean", torch.from_numpy(mean.copy()))
        self.register_buffer("global_std", torch.from_numpy(std.copy()))
        self.register_buffer("log_priors", torch.from_numpy(np.asarray(log_priors, np.float32).copy()))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """CMVN-normalised fbank ``(T, D)``."""
        feats = self.frontend(wave)
        if self.per_utterance:
            # as asr_distill.data._moments, over this utterance: float64 moments, variance floored at 1e-10
            f64 = feats.to(torch.float64)
            mean = f64.mean(dim=0)
            var = (f64 * f64).mean(dim=0) - mean * mean
            std = torch.sqrt(torch.clamp(var, min=1e-10))
            return ((f64 - mean) / std).to(torch.float32)
        return (feats - self.global_mean) / self.global_std

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = self.features(wave)
        t = feats.size(0)
        idx = (torch.arange(t, dtype=torch.int64)[:, None]
               + torch.arange(-self.left, self.right + 1, dtype=torch.int64)[None, :])
        windows = feats[torch.clamp(idx, 0, t - 1)]  # (T, context, D)
        logits = self.network(windows)
        return torch.log_softmax(logits, dim=-1) - self.log_priors


# ------------------------------------------------------------------------------------------------------------------

def system_checkpoint(exp_dir: Pathlike, system: str) -> Path:
    """``EXP/teachers/<name>/best.pt`` for ``teacher<k>``, else ``EXP/distill/<name>/best.pt``."""
    exp_dir = Path(exp_dir)
    for cand in (exp_dir / "teachers" / system / "best.pt", exp_dir / "distill" / system / "best.pt"):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"no checkpoint for system {system!r} under {exp_dir}/teachers or {exp_dir}/distill")


def _context(exp_dir: Path, config: dict, left: Optional[int], right: Optional[int]):
    """Left/right splicing context: given, else the experiment's ``teachers.json`` (the students inherit the
    teachers' context) when it fits the model's ``context``, else symmetric."""
    ctx = int(config["context"])
    if left is None and right is None:
        meta = exp_dir / "teachers" / "teachers.json"
        if meta.exists():
            m = read_json(meta)
            if m["left"] + 1 + m["right"] == ctx:
                left, right = m["left"], m["right"]
    if left is None and right is None:
        left = (ctx - 1) // 2
    if left is None:
        left = ctx - 1 - right
    if right is None:
        right = ctx - 1 - left
    if left < 0 or right < 0 or left + 1 + right != ctx:
        raise ValueError(f"left {left} + 1 + right {right} != the model's context {ctx}")
    return int(left), int(right)


def build_exported_module(exp_dir: Pathlike, model_ckpt: Pathlike, cmvn: str = "global",
                          left: Optional[int] = None, right: Optional[int] = None) -> ExportedAcousticModel:
    """The eager end-to-end module for a checkpoint of experiment ``exp_dir`` (priors, CMVN stats, context)."""
    from .data import FEATURE_CONFIGS, CmvnStats
    from .pipeline import Experiment, training_log_priors
    from .train import load_model

    exp_dir = Path(exp_dir)
    net = load_model(model_ckpt, "cpu").eval()
    config = dict(net.config)
    left, right = _context(exp_dir, config, left, right)
    priors = training_log_priors(Experiment(exp_dir))
    stats = CmvnStats.load(exp_dir / "data" / "cmvn_fbank.npz")
    if not stats.norm_vars:
        raise ValueError("fbank CMVN without variance normalisation is not supported by the export")
    if stats.mode == "none":
        raise ValueError("the experiment trained without CMVN: the export assumes mean/variance normalisation")
    frontend = FbankFrontend.from_lhotse(**FEATURE_CONFIGS["fbank"])
    return ExportedAcousticModel(frontend, net, priors, left, right, cmvn, stats.global_mean,
                                 stats.global_std).eval()


def _export_onnx(module: nn.Module, path: Path, example: torch.Tensor) -> None:
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=["waveform"], output_names=["loglikes"],
                          dynamic_axes={"waveform": {0: "num_samples"}, "loglikes": {0: "num_frames"}},
                          opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=False)


def quantize_int8(onnx_path: Pathlike, out_path: Pathlike) -> Path:
    """Dynamic quantisation (int8 weights, one scale per output channel; activations quantised on the fly) of the
    ONNX model's MatMul/Gemm layers; the front end's float64 DFT / mel products stay in float (not network weights).

    Per-channel scales halve the int8-vs-fp32 error of per-tensor ones here (teacher0 on the slice's test set:
    mean |diff| of the pseudo log-likelihoods 0.030 vs 0.049, frame decisions agreeing 98.5% vs 97.0%)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a warning per float64 front-end tensor it (rightly) skips
    try:
        quantize_dynamic(str(onnx_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
    return Path(out_path)


def _size_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 3)


def export_model(exp_dir: Pathlike, model_ckpt: Pathlike, out_dir: Pathlike, system: Optional[str] = None,
                 cmvn: str = "global", int8: bool = True, left: Optional[int] = None,
                 right: Optional[int] = None, decoding: Optional[dict] = None, example_seconds: float = 1.3,
                 extra_card: Optional[dict] = None) -> dict:
    """Write the model directory ``out_dir`` (see the module docstring); returns the model card.

    The decoding settings (acoustic scale, word penalty) come from ``EXP/decode/<system>/wer.json`` (tuned on dev
    by the recipe); ``decoding`` overrides them (keys of :class:`asr_distill.decode.DecodingConfig`)."""
    from .data import FEATURE_CONFIGS

    exp_dir, out_dir = Path(exp_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = build_exported_module(exp_dir, model_ckpt, cmvn, left, right)
    example = torch.from_numpy(
        (0.1 * np.random.default_rng(0).standard_normal(int(example_seconds * 16000))).astype(np.float32))
    t0 = time.time()
    scripted = torch.jit.script(module)
    scripted.save(str(out_dir / "model.pt"))
    _export_onnx(module, out_dir / "model.onnx", example)
    if int8:
        quantize_int8(out_dir / "model.onnx", out_dir / "model.int8.onnx")
    graph = exp_dir / "gmm" / "graph"
    for name in ("HCLG.fst", "words.txt", "tid2pdf.txt"):
        shutil.copyfile(graph / name, out_dir / name)
    system = system or Path(model_ckpt).parent.name
    wer_path = exp_dir / "decode" / system / "wer.json"
    dec = read_json(wer_path) if wer_path.exists() else {}
    ckpt_meta = torch.load(model_ckpt, map_location="cpu", weights_only=True)
    card = {
        "format": "asr-distill hybrid HMM-DNN model directory, version 1",
        "system": system,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "input": {"sample_rate": 16000, "channels": 1, "dtype": "float32", "range": "[-1, 1]",
                  "shape": "(num_samples,)"},
        "output": {"name": "loglikes", "shape": "(num_frames, num_pdfs)",
                   "meaning": "log-softmax minus log-priors (hybrid pseudo log-likelihoods), not yet scaled"},
        "features": {"type": "lhotse Fbank", **FEATURE_CONFIGS["fbank"], "frame_length_ms": 25,
                     "frame_shift_ms": 10, "high_freq": -400.0, "low_freq": 20.0, "dither": 0.0,
                     "snip_edges": False, "window": "povey", "preemph_coeff": 0.97},
        "context": {"left": module.left, "right": module.right, "splicing": "edges repeated"},
        "cmvn": cmvn,
        "cmvn_note": ("per-utterance mean/variance normalisation computed inside the graph (training used "
                      "per-speaker statistics)" if cmvn == "utterance" else
                      "training set's global mean/std stored in the graph (training used per-speaker statistics)"),
        "model": dict(module.network.config),
        "num_pdfs": int(module.network.config["num_pdfs"]),
        "decoding": {"acoustic_scale": float(dec.get("acoustic_scale", 0.1)),
                     "word_penalty": float(dec.get("word_penalty", 0.0)), "beam": 13.0, "max_active": 7000,
                     "min_active": 200, "source": str(wer_path) if dec else "defaults (no wer.json found)"},
        "training": {"corpus": _corpus_name(exp_dir), "exp_dir": str(exp_dir.resolve()),
                     "checkpoint": str(Path(model_ckpt).resolve()), "dev_frame_acc": ckpt_meta.get("dev_acc"),
                     "epoch": ckpt_meta.get("epoch")},
        "wer": {"recipe_test_wer": dec.get("wer"), "recipe_dev_wer": dec.get("dev_wer"),
                "recipe_cmvn": "speaker"},
        "files": {"torchscript": "model.pt", "onnx": "model.onnx",
                  **({"onnx_int8": "model.int8.onnx"} if int8 else {}),
                  "graph": "HCLG.fst", "words": "words.txt", "tid2pdf": "tid2pdf.txt"},
        "onnx_opset": ONNX_OPSET,
        **(extra_card or {}),
    }
    if decoding:
        card["decoding"].update({k: v for k, v in decoding.items() if k != "backend"})
        card["decoding"]["source"] = "given to export_model"
    card["sizes_mb"] = {f: _size_mb(out_dir / f) for f in ("model.pt", "model.onnx", "model.int8.onnx", "HCLG.fst")
                        if (out_dir / f).exists()}
    write_json(card, out_dir / "model_card.json")
    log.info("exported %s to %s in %.1f s (%s)", model_ckpt, out_dir, time.time() - t0, card["sizes_mb"])
    return card


def _corpus_name(exp_dir: Path) -> str:
    from .results import load_results

    return str(load_results(exp_dir).get("corpus") or "an4")


def update_card(model_dir: Pathlike, updates: Dict) -> dict:
    """Merge ``updates`` into ``model_dir/model_card.json`` (e.g. WERs measured after export)."""
    path = Path(model_dir) / "model_card.json"
    card = read_json(path)
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(card.get(k), dict):
            card[k] = {**card[k], **v}
        else:
            card[k] = v
    write_json(card, path)
    return card


# ------------------------------------------------------------------------------------------------------------------
# The training-side reference and measurements (these use the training code; the deployed path does not)

def split_audio(exp_dir: Pathlike, split: str = "test") -> Dict[str, Path]:
    """utt-id -> audio file of one split of the experiment (from its cut manifest)."""
    from .pipeline import Experiment

    out = {}
    for c in Experiment(exp_dir).cuts(split):
        out[c.id] = Path(c.recording.sources[0].source)
    return out


def reference_loglikes(exp_dir: Pathlike, model_ckpt: Pathlike, audio: Dict[str, Pathlike], cmvn: str = "global",
                       left: Optional[int] = None, right: Optional[int] = None,
                       speakers: Optional[Dict[str, str]] = None) -> Dict[str, np.ndarray]:
    """Pseudo log-likelihoods computed the TRAINING way: Lhotse's ``Fbank`` extractor on the audio (uncompressed),
    CMVN in numpy (``utterance``: the utterance's own moments as ``asr_distill.data._moments``; ``global``: the
    training set's; ``speaker``: the experiment's per-speaker statistics, needs ``speakers``), ``splice_utterance``,
    the eager model, log-softmax, minus the priors (``asr_distill.decode.pseudo_loglikes``)."""
    import soundfile as sf

    from .data import CmvnStats, _moments, feature_extractor
    from .decode import pseudo_loglikes
    from .frames import splice_utterance
    from .pipeline import Experiment, training_log_priors
    from .train import load_model

    exp_dir = Path(exp_dir)
    net = load_model(model_ckpt, "cpu").eval()
    left, right = _context(exp_dir, dict(net.config), left, right)
    priors = training_log_priors(Experiment(exp_dir))
    stats = CmvnStats.load(exp_dir / "data" / "cmvn_fbank.npz")
    fbank = feature_extractor("fbank")
    out = {}
    for utt, path in audio.items():
        wave, sr = sf.read(str(path), dtype="float32")
        feats = fbank.extract(wave, sr).astype(np.float32)
        if cmvn == "utterance":
            mean, std = _moments([feats])
            feats = ((feats - mean) / std).astype(np.float32)
        elif cmvn == "global":
            feats = ((feats - stats.global_mean) / stats.global_std).astype(np.float32)
        elif cmvn == "speaker":
            feats = stats.apply(feats, (speakers or {})[utt]).astype(np.float32)
        else:
            raise ValueError(f"cmvn {cmvn!r}")
        with torch.no_grad():
            post = torch.log_softmax(net(splice_utterance(torch.from_numpy(feats), left, right)).float(), -1)
        out[utt] = pseudo_loglikes(post.numpy(), priors)
    return out


def decode_wer(exp_dir: Pathlike, loglikes: Dict[str, np.ndarray], acoustic_scale: float, word_penalty: float,
               split: str = "test", beam: float = 13.0):
    """Recipe-style decode (``asr_distill.decode.decode_loglikes`` over the experiment's HCLG) and WER;
    returns (utt -> words, WerResult)."""
    from .align import StateInventory
    from .decode import DecodingConfig, compute_wer, decode_loglikes, words_of
    from .lang import read_symbols
    from .pipeline import Experiment

    exp_dir = Path(exp_dir)
    inv = StateInventory.load(exp_dir / "gmm" / "inventory")
    id2word = {i: w for w, i in read_symbols(exp_dir / "gmm" / "graph" / "words.txt").items()}
    cfg = DecodingConfig(acoustic_scale=acoustic_scale, word_penalty=word_penalty, beam=beam)
    ids = decode_loglikes(exp_dir / "gmm" / "graph" / "HCLG.fst", inv.tid2pdf, loglikes, cfg)
    hyps = {u: words_of(h, id2word) for u, h in ids.items()}
    refs = {u: t.split() for u, t in Experiment(exp_dir).texts(split).items() if u in hyps}
    return hyps, compute_wer(refs, hyps, bootstrap_replications=0)


def measure_model_dir(exp_dir: Pathlike, model_dir: Pathlike, split: str = "test", update: bool = True) -> dict:
    """WER of the exported directory on the experiment's ``split`` through :func:`asr_distill.transcribe.transcribe`
    (fp32 ONNX and, when present, int8 ONNX); merged into the model card under ``wer`` when ``update``."""
    import io

    from .decode import compute_wer
    from .pipeline import Experiment
    from .transcribe import transcribe

    audio = split_audio(exp_dir, split)
    refs = {u: t.split() for u, t in Experiment(exp_dir).texts(split).items()}
    paths = [audio[u] for u in sorted(audio)]
    result = {}
    for tag, int8 in (("fp32", False), ("int8", True)):
        if int8 and not (Path(model_dir) / "model.int8.onnx").exists():
            continue
        hyps, failed = transcribe(model_dir, paths, use_int8=int8, out=io.StringIO())
        if failed:
            raise RuntimeError(f"{len(failed)} file(s) failed: {failed[:3]}")
        wer = compute_wer(refs, hyps, bootstrap_replications=0)
        result[f"{split}_wer_{tag}"] = round(wer.wer, 2)
        result[f"{split}_errors_{tag}"] = f"{wer.errors}/{wer.ref_words}"
    if update:
        update_card(model_dir, {"wer": result})
    return result
