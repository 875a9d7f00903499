"""Export a trained acoustic model as a self-contained model directory that needs none of the training code.

The exported graph computes, for ONE utterance::

    waveform (num_samples,) float32, 16 kHz mono, in [-1, 1] (as soundfile/Lhotse read it)
      -> 40 log-mel filterbanks, the same math and constants as training's Lhotse ``Fbank(FbankConfig(num_filters=40))``
         (:class:`~asr_distill.deploy.frontend.FbankFrontend`)
      -> CMVN (see below)
      -> splicing: frames t-left .. t+right, edges repeated (as ``asr_distill.nnet.frames.splice_utterance``)
      -> the network -> log-softmax -> minus the log-priors of the training alignments
    = (num_frames, num_pdfs) float32 pseudo log-likelihoods, ready for the decoder (times the acoustic scale).

CMVN.  Training normalised with per-SPEAKER statistics; a deployed model sees one file and no speaker label, so the
export chooses one of ``sliding`` (default: Kaldi's ``apply-cmvn-sliding --center``, the mean of a centred window of
``SLIDING_WINDOW`` frames, divided by the training set's std), ``online`` (causal, for streaming: the mean of the
last ``SLIDING_WINDOW`` frames up to and including this one, completed to ``ONLINE_PRIOR_FRAMES`` frames by the
training set's global mean while fewer have been seen, as Kaldi's ``OnlineCmvn`` smooths with global statistics),
``global`` (the training set's global mean / std, stored as constants in the graph) or ``utterance`` (mean and
variance of the utterance itself, computed inside the graph).  A change of input level adds a constant to every log-mel energy (except where the front end's floor holds
it): ``sliding`` and ``utterance`` remove it, ``global`` does not.  ``sliding`` was chosen on AN4's dev WER over
input levels 0.25x-2x (docs/RESULTS.md, section 8d).  ``global`` was better or
equal on the slice's DEV set for every system tried (docs/RESULTS.md, section 5).  The choice is written to
``model_card.json`` (``cmvn``) together with the WER measured for it when available.

Directory layout (``out_dir``)::

    model.pt           TorchScript module   waveform -> pseudo log-likelihoods
    model.onnx         ONNX graph (opset 17), same function
    model.int8.onnx    ONNX with dynamically quantised int8 weights (``quantize_int8``)
    frontend.onnx      the front end alone: waveform -> log-mel fbank (un-normalised)        } the streaming path
    network.onnx       spliced, normalised windows (T, context, 40) -> pseudo log-likelihoods } (transcribe --stream)
    network.int8.onnx  the same with int8 weights                                           } keeps CMVN state
    HCLG.fst words.txt tid2pdf.txt           decoding graph, word symbols, transition-id -> pdf map
    tree                                     the context-dependency tree (Kaldi binary) that defines the pdfs
    model_card.json    features, context, CMVN mode, decoding settings, pdfs, corpus, WER, sizes
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from ..data.features import FEATURE_CONFIGS
from ..experiment import Experiment
from ..nnet.checkpoint import load_checkpoint, load_model
from ..results import load_results
from ..utils import Pathlike, read_json, write_json
from .frontend import FbankFrontend

__all__ = ["ExportedAcousticModel", "build_exported_module", "export_model", "quantize_int8", "update_card",
           "model_context", "sliding_mean", "online_mean", "CMVN_MODES", "SLIDING_WINDOW", "ONLINE_PRIOR_FRAMES",
           "NetworkOutput"]

log = logging.getLogger(__name__)

CMVN_MODES = ("utterance", "global", "sliding", "online")
SLIDING_WINDOW = 600  # frames: apply-cmvn-sliding's default --cmn-window
ONLINE_PRIOR_FRAMES = 200  # frames of global mean that complete a short history (OnlineCmvnOptions' global_frames)
ONNX_OPSET = 17


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
        self.cmvn = cmvn
        self.cmvn_window = SLIDING_WINDOW
        self.cmvn_prior_frames = ONLINE_PRIOR_FRAMES
        dim = frontend.mel_banks.shape[1]
        mean = np.zeros(dim, np.float32) if global_mean is None else np.asarray(global_mean, np.float32)
        std = np.ones(dim, np.float32) if global_std is None else np.asarray(global_std, np.float32)
        self.register_buffer("global_mean", torch.from_numpy(mean.copy()))
        self.register_buffer("global_std", torch.from_numpy(std.copy()))
        self.register_buffer("log_priors", torch.from_numpy(np.asarray(log_priors, np.float32).copy()))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """CMVN-normalised fbank ``(T, D)``."""
        feats = self.frontend(wave)
        if self.cmvn == "sliding":
            return ((feats.to(torch.float64) - sliding_mean(feats, self.cmvn_window)) / self.global_std).to(torch.float32)
        if self.cmvn == "online":
            mean = online_mean(feats, self.cmvn_window, self.global_mean, self.cmvn_prior_frames)
            return ((feats.to(torch.float64) - mean) / self.global_std).to(torch.float32)
        if self.cmvn == "utterance":
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


class NetworkOutput(nn.Module):
    """The network part of :class:`ExportedAcousticModel`: normalised windows ``(T, context, D)`` -> pseudo
    log-likelihoods; what the streaming transcriber runs after its own CMVN and splicing."""

    def __init__(self, network: nn.Module, log_priors: torch.Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("log_priors", log_priors.detach().clone())

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.network(windows), dim=-1) - self.log_priors


def sliding_mean(feats: torch.Tensor, window: int) -> torch.Tensor:
    """Per frame, the float64 mean of the ``window`` frames centred on it, the window shifted inward at the edges
    (all frames when fewer): Kaldi's sliding CMN with ``--center=true``.  Tensor ops only, so the bounds follow
    the input's length in TorchScript and in ONNX alike."""
    f64 = feats.to(torch.float64)
    cums = torch.cat([torch.zeros_like(f64[:1]), torch.cumsum(f64, dim=0)], dim=0)
    idx = torch.arange(f64.size(0), dtype=torch.int64)
    length = idx[-1:] + 1
    start = torch.minimum(torch.clamp(idx - window // 2, min=0), torch.clamp(length - window, min=0))
    end = torch.minimum(start + window, length)
    return (cums[end] - cums[start]) / (end - start).to(torch.float64)[:, None]


def online_mean(feats: torch.Tensor, window: int, global_mean: torch.Tensor, prior_frames: int) -> torch.Tensor:
    """Per frame, the float64 mean of the last ``window`` frames up to and including it, completed by
    ``prior_frames - n`` frames of ``global_mean`` while only ``n < prior_frames`` frames have been seen: causal
    (a frame's mean never depends on later frames), so a stream computes it chunk by chunk."""
    f64 = feats.to(torch.float64)
    cums = torch.cat([torch.zeros_like(f64[:1]), torch.cumsum(f64, dim=0)], dim=0)
    end = torch.arange(f64.size(0), dtype=torch.int64) + 1
    start = torch.clamp(end - window, min=0)
    count = (end - start).to(torch.float64)[:, None]
    prior = torch.clamp(prior_frames - count, min=0.0)
    return (cums[end] - cums[start] + prior * global_mean.to(torch.float64)) / (count + prior)


def model_context(exp: Experiment, config: dict, left: Optional[int], right: Optional[int]) -> Tuple[int, int]:
    """Left/right splicing context: given, else the model's own split (a streaming student's), else the experiment's
    stage-4 ``teachers.json`` (the students inherit the teachers' context) when it fits the model's ``context``,
    else symmetric."""
    ctx = int(config["context"])
    if left is None and right is None and "left" in config:
        left, right = int(config["left"]), int(config["right"])
    if left is None and right is None and exp.teachers_meta_path.exists():
        m = exp.teachers_meta()
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


def build_exported_module(exp_dir: Pathlike, model_ckpt: Pathlike, cmvn: str = "sliding",
                          left: Optional[int] = None, right: Optional[int] = None) -> ExportedAcousticModel:
    """The eager end-to-end module for a checkpoint of experiment ``exp_dir`` (priors, CMVN stats, context)."""
    exp = Experiment(exp_dir)
    net = load_model(model_ckpt, "cpu").eval()
    left, right = model_context(exp, dict(net.config), left, right)
    stats = exp.cmvn("fbank")
    if not stats.norm_vars:
        raise ValueError("fbank CMVN without variance normalisation is not supported by the export")
    if stats.mode == "none":
        raise ValueError("the experiment trained without CMVN: the export assumes mean/variance normalisation")
    frontend = FbankFrontend.from_lhotse(**FEATURE_CONFIGS["fbank"])
    return ExportedAcousticModel(frontend, net, exp.log_priors(), left, right, cmvn, stats.global_mean,
                                 stats.global_std).eval()


def _export_onnx(module: nn.Module, path: Path, example: torch.Tensor, input_name: str = "waveform",
                 output_name: str = "loglikes") -> None:
    axes = {input_name: {0: "num_samples" if input_name == "waveform" else "num_frames"},
            output_name: {0: "num_frames"}}
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=False)


def _export_streaming_parts(module: ExportedAcousticModel, out_dir: Path, example: torch.Tensor, int8: bool) -> None:
    """frontend.onnx and network.onnx (+ int8): the pieces ``transcribe --stream`` runs around its own CMVN state."""
    _export_onnx(module.frontend, out_dir / "frontend.onnx", example, output_name="fbank")
    net = NetworkOutput(module.network, module.log_priors).eval()
    dim = module.frontend.mel_banks.shape[1]
    windows = torch.zeros(7, module.left + 1 + module.right, dim)
    _export_onnx(net, out_dir / "network.onnx", windows, input_name="windows")
    if int8:
        quantize_int8(out_dir / "network.onnx", out_dir / "network.int8.onnx")


def quantize_int8(onnx_path: Pathlike, out_path: Pathlike) -> Path:
    """Dynamic quantisation (int8 weights, one scale per output channel; activations quantised on the fly) of the
    ONNX model's MatMul/Gemm layers; the front end's float64 DFT / mel products stay in float (not network weights).

    Per-channel scales halve the int8-vs-fp32 error of per-tensor ones here (teacher0 on the slice's test set:
    mean |diff| of the pseudo log-likelihoods 0.030 vs 0.049, frame decisions agreeing 98.5% vs 97.0%)."""
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


CMVN_NOTES = {
    "utterance": "per-utterance mean/variance normalisation computed inside the graph (training used per-speaker "
                 "statistics)",
    "global": "training set's global mean/std stored in the graph (training used per-speaker statistics)",
    "sliding": f"mean of a centred {SLIDING_WINDOW}-frame window (Kaldi's apply-cmvn-sliding) and the training set's "
               "std (training used per-speaker statistics); independent of the input level",
    "online": f"causal: mean of the last {SLIDING_WINDOW} frames, completed to {ONLINE_PRIOR_FRAMES} frames by the "
              "training set's global mean at the start (Kaldi's OnlineCmvn), and the training set's std (training "
              "used per-speaker statistics); streamable",
}


def _targets_info(exp: Experiment) -> dict:
    """What the network's outputs are: the GMM system whose tree defines them and that tree's shape."""
    info = read_json(exp.inventory_dir / "inventory.json")
    targets = exp.gmm_dir / "targets.json"
    return {"gmm_system": read_json(targets)["system"] if targets.exists() else "mono",
            "kind": info["kind"], "context_width": info.get("context_width", 1), "num_pdfs": info["num_pdfs"],
            "tree": "tree"}


def _model_card(exp: Experiment, module: ExportedAcousticModel, model_ckpt: Path, system: str, cmvn: str,
                int8: bool) -> dict:
    wer_path = exp.decode_dir(system) / "wer.json"
    dec = read_json(wer_path) if wer_path.exists() else {}
    ckpt_meta = load_checkpoint(model_ckpt, "cpu", "model checkpoint")
    return {
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
        "cmvn_note": CMVN_NOTES[cmvn],
        **({"cmvn_window": SLIDING_WINDOW} if cmvn in ("sliding", "online") else {}),
        **({"cmvn_prior_frames": ONLINE_PRIOR_FRAMES} if cmvn == "online" else {}),
        "model": dict(module.network.config),
        "num_pdfs": int(module.network.config["num_pdfs"]),
        "targets": _targets_info(exp),
        "decoding": {"acoustic_scale": float(dec.get("acoustic_scale", 0.1)),
                     "word_penalty": float(dec.get("word_penalty", 0.0)), "beam": 13.0, "max_active": 7000,
                     "min_active": 200, "source": str(wer_path) if dec else "defaults (no wer.json found)"},
        "training": {"corpus": str(load_results(exp.dir).get("corpus") or exp.corpus),
                     "exp_dir": str(exp.dir.resolve()), "checkpoint": str(Path(model_ckpt).resolve()),
                     "dev_frame_acc": ckpt_meta.get("dev_acc"), "epoch": ckpt_meta.get("epoch")},
        "wer": {"recipe_test_wer": dec.get("wer"), "recipe_dev_wer": dec.get("dev_wer"), "recipe_cmvn": "speaker"},
        "files": {"torchscript": "model.pt", "onnx": "model.onnx", **({"onnx_int8": "model.int8.onnx"} if int8 else {}),
                  "frontend": "frontend.onnx", "network": "network.onnx",
                  **({"network_int8": "network.int8.onnx"} if int8 else {}),
                  "graph": "HCLG.fst", "words": "words.txt", "tid2pdf": "tid2pdf.txt", "tree": "tree"},
        # what transcribe --stream needs besides the two ONNX parts: the CMVN constants
        "cmvn_stats": {"global_mean": [float(v) for v in module.global_mean],
                       "global_std": [float(v) for v in module.global_std]},
        "onnx_opset": ONNX_OPSET,
    }


def export_model(exp_dir: Pathlike, model_ckpt: Pathlike, out_dir: Pathlike, system: Optional[str] = None,
                 cmvn: str = "sliding", int8: bool = True, left: Optional[int] = None,
                 right: Optional[int] = None, decoding: Optional[dict] = None, example_seconds: float = 1.3,
                 extra_card: Optional[dict] = None) -> dict:
    """Write the model directory ``out_dir`` (see the module docstring); returns the model card.

    The decoding settings (acoustic scale, word penalty) come from ``EXP/decode/<system>/wer.json`` (tuned on dev
    by the recipe); ``decoding`` overrides them (keys of :class:`asr_distill.decode.DecodingConfig`)."""
    exp, out_dir = Experiment(exp_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = build_exported_module(exp_dir, model_ckpt, cmvn, left, right)
    example = torch.from_numpy(
        (0.1 * np.random.default_rng(0).standard_normal(int(example_seconds * 16000))).astype(np.float32))
    t0 = time.time()
    torch.jit.script(module).save(str(out_dir / "model.pt"))
    _export_onnx(module, out_dir / "model.onnx", example)
    if int8:
        quantize_int8(out_dir / "model.onnx", out_dir / "model.int8.onnx")
    _export_streaming_parts(module, out_dir, example, int8)
    for src in (exp.hclg_path, exp.words_path, exp.tid2pdf_path, exp.inventory_dir / "tree"):
        shutil.copyfile(src, out_dir / src.name)
    card = {**_model_card(exp, module, Path(model_ckpt), system or Path(model_ckpt).parent.name, cmvn, int8),
            **(extra_card or {})}
    if decoding:
        card["decoding"].update({k: v for k, v in decoding.items() if k != "backend"})
        card["decoding"]["source"] = "given to export_model"
    card["sizes_mb"] = {f: _size_mb(out_dir / f) for f in ("model.pt", "model.onnx", "model.int8.onnx", "network.onnx",
                                                           "network.int8.onnx", "HCLG.fst")
                        if (out_dir / f).exists()}
    write_json(card, out_dir / "model_card.json")
    log.info("exported %s to %s in %.1f s (%s)", model_ckpt, out_dir, time.time() - t0, card["sizes_mb"])
    return card


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
