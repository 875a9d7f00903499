#!/usr/bin/env python3
"""Frames/s and model-FLOP utilisation (MFU) of ONE distillation step, three loops compared in the same run.

* ``fp32 loop``: teachers in fp32 run one after another (TF32 matmuls ON on CUDA, as in the reference's first row),
  fp32 student, eager fp32 loss, fused AdamW.
* ``bf16 loop``: teachers in bf16 one by one, student under bf16 autocast, eager loss, fused AdamW (the
  reference's "bf16 autocast loop").
* ``project``: :class:`asr_distill.distill.DistillStep` in one or more configurations (``--project-configs``),
  e.g. ``addmm+compile`` = stacked bf16 teachers with fused GEMM epilogues, compiled soft-target+loss; ``graph``
  adds whole-step CUDA-graph capture; ``bmm`` runs the stacked teachers as batched matmuls.

Scales: ``paper`` (10 teachers 8x2560 ReLU MLP, 26x40 inputs, 14,000 pdfs, same-size student, fixed batch),
``an4`` (the recipe's small models; with the data path: a synthetic FrameSet resident on the device, windows
gathered by ``FrameSet.windows`` from shuffled indices every step) and ``tiny`` (a CPU smoke test, data path too).

FLOPs per frame: every teacher's forward + 3x the student's forward (2 FLOPs per MAC), as in the reference.
MFU = FLOPs/s over ``--peak-tflops`` (dense bf16; 790 for an H100 SXM as in the reference; an H200 has the same).
GPU busy = (kernel+memcpy time per step, from torch.profiler over a few extra steps) / (wall time per step of the
unprofiled timing run).

Example:  python tools/bench_distill.py --scale paper,an4 --out bench.json
Smoke:    python tools/bench_distill.py --device cpu --scale tiny --steps 3 --warmup 1
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from asr_distill.distill import loss as D  # noqa: E402  (the loss module: also its private _targets_and_loss)
from asr_distill.distill import (DistillStep, StackedTeachers, compute_topk_soft_targets,  # noqa: E402
                                 distill_flops_per_frame, distillation_loss)
from asr_distill.distill.teachers import fp8_support  # noqa: E402
from asr_distill.nnet.frames import FrameSet  # noqa: E402
from asr_distill.nnet.models import MLP  # noqa: E402

SCALES: Dict[str, Dict[str, Any]] = {
    "paper": dict(K=10, hidden=2560, layers=8, context=26, feat=40, pdfs=14000, batches=[8192, 16384],
                  data_path=False, frames=0),
    "an4": dict(K=4, hidden=512, layers=4, context=17, feat=40, pdfs=150, batches=[2048, 8192], data_path=True,
                frames=250_000),
    "tiny": dict(K=3, hidden=64, layers=2, context=5, feat=8, pdfs=20, batches=[256], data_path=True, frames=5000),
}
DEFAULT_PROJECT = {
    "paper": "addmm+fused,addmm+fused+graph,fp8+fused+graph,addmm+compile,bmm+compile+fused",
    "an4": "bmm+fused+graph,bmm+fused,bmm+compile+graph,addmm+fused+graph,fp8+fused+graph,cache+compile+graph,cache",
    "tiny": "auto,bmm,addmm,fp8,cache",
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", default="paper,an4", help="comma list of paper, an4, tiny")
    ap.add_argument("--variants", default="fp32,bf16,project")
    ap.add_argument("--project-configs", default=None,
                    help="';'-separated per scale as scale=cfg1,cfg2 (tokens: auto|bmm|addmm, compile, graph, "
                         "autotune); default: " + json.dumps(DEFAULT_PROJECT))
    ap.add_argument("--paper-batches", default=None, help="comma list (default 8192,16384)")
    ap.add_argument("--an4-batches", default=None, help="comma list (default 2048,8192)")
    ap.add_argument("--an4-teachers", type=int, default=SCALES["an4"]["K"])
    ap.add_argument("--an4-hidden", type=int, default=SCALES["an4"]["hidden"])
    ap.add_argument("--an4-layers", type=int, default=SCALES["an4"]["layers"])
    ap.add_argument("--an4-context", type=int, default=SCALES["an4"]["context"])
    ap.add_argument("--an4-pdfs", type=int, default=SCALES["an4"]["pdfs"])
    ap.add_argument("--an4-frames", type=int, default=SCALES["an4"]["frames"])
    ap.add_argument("--topk", type=int, default=20, help="k of the top-k cache ('cache' project configs)")
    ap.add_argument("--T", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats (spread = noise estimate)")
    ap.add_argument("--profile-steps", type=int, default=5, help="0 disables the GPU-busy measurement")
    ap.add_argument("--peak-tflops", type=float, default=790.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--breakdown", action="store_true", help="time the step's parts at the largest paper batch")
    ap.add_argument("--no-check", action="store_true", help="skip the fused-loss kernel check (CUDA)")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--markdown", default=None, help="also write the markdown table here")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------ helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synthetic_frameset(num_frames: int, feat: int, pdfs: int, left: int, right: int, device, seed: int) -> FrameSet:
    rng = np.random.default_rng(seed)
    lens: List[int] = []
    while sum(lens) < num_frames:
        lens.append(int(rng.integers(100, 600)))
    lens[-1] -= sum(lens) - num_frames
    if lens[-1] <= 0:
        lens.pop()
    feats = [rng.standard_normal((n, feat), dtype=np.float32) for n in lens]
    labels = [rng.integers(0, pdfs, size=n) for n in lens]
    return FrameSet.from_arrays(feats, labels, [f"utt{i:06d}" for i in range(len(lens))], left, right, device)


def index_batches(frames: FrameSet, batch: int, seed: int):
    """Shuffled full batches forever (epochs restart with a new permutation), as a training loop draws them."""
    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in frames.shuffled_batches(batch, g):
            if idx.shape[0] == batch:
                yield idx


def kernel_time_per_step(step: Callable[[], Any], n: int, device: torch.device) -> Optional[float]:
    """Seconds of GPU activity (union of kernel/memcpy/memset intervals) per step, from torch.profiler."""
    if device.type != "cuda" or n <= 0:
        return None
    from torch.profiler import ProfilerActivity, profile
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        sync(device)
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
                   for e in trace.get("traceEvents", [])
                   if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    if not spans:
        return None
    busy, cur_s, cur_e = 0.0, spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    return busy * 1e-6 / n


def matmul_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> Optional[float]:
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    sync(device)
    return 2 * n ** 3 * iters / (start.elapsed_time(end) * 1e-3) / 1e12


def cuda_ms(fn: Callable[[], Any], reps: int = 10, warm: int = 3) -> float:
    """Median milliseconds of fn() by CUDA events."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


def check_fused_loss(device: torch.device) -> Dict[str, Any]:
    """The Triton loss kernel against the eager fp32 reference, on fresh random inputs."""
    out: Dict[str, Any] = {}
    g = torch.Generator(device="cpu").manual_seed(123)
    for C in (150, 14000):
        for mean in ("arithmetic", "geometric"):
            for alpha in (0.5, 1.0):
                t = (torch.randn(3, 37, C, generator=g) * 3).to(device, torch.bfloat16)
                z = (torch.randn(37, C, generator=g) * 3).to(device, torch.bfloat16).requires_grad_()
                y = torch.randint(0, C, (37,), generator=g).to(device)
                ref = D._targets_and_loss(z.float(), y, t, None, None, 2.0, alpha, mean)
                gr, = torch.autograd.grad(ref, z)
                got = D.fused_ensemble_distillation_loss(z, t, y if alpha < 1 else None, 2.0, alpha, mean)
                gg, = torch.autograd.grad(got * 2.0, z)  # a non-unit upstream gradient too
                out[f"C{C}_{mean}_a{alpha}"] = dict(
                    loss_rel=abs(got.item() - ref.item()) / abs(ref.item()),
                    grad_rel=((gg.float() - 2 * gr.float()).norm() / (2 * gr.float()).norm()).item())
    out["ok"] = all(v["loss_rel"] < 1e-4 and v["grad_rel"] < 1e-2 for v in out.values())
    print(json.dumps(dict(fused_loss_check=out)), flush=True)
    return out


def breakdown(sc: Dict[str, Any], batch: int, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Milliseconds of each part of one paper-scale step, timed alone (CUDA events, median of 10)."""
    K, ctx, feat, pdfs, H, L = sc["K"], sc["context"], sc["feat"], sc["pdfs"], sc["hidden"], sc["layers"]
    torch.manual_seed(args.seed)
    with torch.device(device):
        teachers = [MLP(feat, ctx, pdfs, H, L).eval().requires_grad_(False) for _ in range(K)]
        student = MLP(feat, ctx, pdfs, H, L)
    x = torch.randn(batch, ctx, feat, device=device)
    y = torch.randint(0, pdfs, (batch,), device=device)
    res: Dict[str, Any] = dict(batch=batch)
    tf = K * D.model_flops_per_frame(teachers[0]) * batch
    sf = 3 * D.model_flops_per_frame(student) * batch
    modes = ("addmm", "bmm") + (("fp8",) if fp8_support(device) is None else ())
    for mode in modes:
        st = StackedTeachers(teachers, mode=mode)
        ms = cuda_ms(lambda: st(x))
        res[f"teachers_{mode}_ms"] = ms
        res[f"teachers_{mode}_tflops"] = tf / ms / 1e9
        if mode == "addmm":
            logits = st(x)
        del st
        free(device)
    h = torch.randn(batch, H, device=device, dtype=torch.bfloat16)
    w = torch.randn(H, H, device=device, dtype=torch.bfloat16) * 0.02
    b = torch.zeros(H, device=device, dtype=torch.bfloat16)
    ms = cuda_ms(lambda: torch._addmm_activation(b, h, w.t()))
    res["gemm_hidden_addmm_relu_tflops"] = 2 * batch * H * H / ms / 1e9
    wo = torch.randn(pdfs, H, device=device, dtype=torch.bfloat16) * 0.02
    ms = cuda_ms(lambda: torch.mm(h, wo.t()))
    res["gemm_output_tflops"] = 2 * batch * H * pdfs / ms / 1e9
    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        z0 = student(x).detach()
    z = z0.clone().requires_grad_()
    compiled = torch.compile(D._targets_and_loss, dynamic=False)

    def loss_eager():
        D._targets_and_loss(z, y, logits, None, None, args.T, args.alpha, "arithmetic").backward()

    def loss_compiled():
        compiled(z, y, logits, None, None, args.T, args.alpha, "arithmetic").backward()

    res["loss_eager_ms"] = cuda_ms(loss_eager, reps=5)
    res["loss_compiled_ms"] = cuda_ms(loss_compiled, reps=10)
    for nw in (8, 16, 32):
        res[f"loss_fused_w{nw}_ms"] = cuda_ms(lambda: D.fused_ensemble_distillation_loss(
            z, logits, y, args.T, args.alpha, "arithmetic", num_warps=nw).backward())
    res["loss_min_bytes_ms"] = (logits.numel() * 2 + z.numel() * 4) / 3.0e12 * 1e3  # read K+1 rows, write grad
    del logits
    free(device)
    gz = torch.randn_like(z0) * 1e-4
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True)

    def student_fb():
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            out = student(x)
        out.backward(gz)

    res["student_fwd_bwd_ms"] = cuda_ms(student_fb)
    res["student_tflops"] = sf / res["student_fwd_bwd_ms"] / 1e9
    res["adamw_fused_ms"] = cuda_ms(opt.step)
    print(json.dumps(dict(breakdown={k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()})),
          flush=True)
    del teachers, student, opt
    free(device)
    return res


# ------------------------------------------------------------------------------------------------ loops

def make_loop_step(teachers: List[torch.nn.Module], student: torch.nn.Module, bf16: bool, T: float, alpha: float,
                   device: torch.device) -> Callable:
    """The plain loops: teachers one after another, the ensemble mean accumulated in fp32, eager loss."""
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=device.type == "cuda")
    tdtype = torch.bfloat16 if bf16 else torch.float32
    K = len(teachers)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            xt = x.to(tdtype)
            acc = None
            for t in teachers:
                p = torch.softmax(t(xt).float() / T, dim=-1)
                acc = p if acc is None else acc.add_(p)
            probs = acc.div_(K)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            z = student(x)
        loss = distillation_loss(z, y, T, alpha, teacher_probs=probs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def parse_config(cfg: str) -> Dict[str, Any]:
    toks = set(cfg.split("+"))
    mode = next((t for t in ("auto", "bmm", "addmm", "fp8") if t in toks), "auto")
    unknown = toks - {"auto", "bmm", "addmm", "fp8", "compile", "graph", "autotune", "fused", "cache"}
    if unknown:
        raise ValueError(f"unknown project-config tokens {sorted(unknown)} in {cfg!r}")
    return dict(teacher_mode=mode, compile="compile" in toks or "autotune" in toks, cuda_graph="graph" in toks,
                compile_mode="max-autotune-no-cudagraphs" if "autotune" in toks else None,
                fused_loss="fused" in toks, cache="cache" in toks)


# ------------------------------------------------------------------------------------------------ one scale

def run_scale(name: str, sc: Dict[str, Any], args: argparse.Namespace, device: torch.device,
              project_cfgs: List[str], results: List[Dict[str, Any]], save: Callable[[], None]) -> None:
    K, ctx, feat, pdfs = sc["K"], sc["context"], sc["feat"], sc["pdfs"]
    left = (ctx - 1) // 2
    right = ctx - 1 - left
    torch.manual_seed(args.seed)
    with torch.device(device):  # initialise directly on the device (the paper's teachers are 0.8 G parameters)
        teachers = [MLP(feat, ctx, pdfs, sc["hidden"], sc["layers"]).eval().requires_grad_(False) for _ in range(K)]
        student0 = MLP(feat, ctx, pdfs, sc["hidden"], sc["layers"])
    flops_frame = distill_flops_per_frame(student0, teachers)
    frames = None
    if sc["data_path"]:
        frames = synthetic_frameset(sc["frames"], feat, pdfs, left, right, device, args.seed)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    print(f"\n## scale {name}: K={K} teachers {sc['layers']}x{sc['hidden']} MLP, input {ctx}x{feat}, {pdfs} pdfs, "
          f"{flops_frame / 1e6:.2f} MFLOP/frame/step, data path {'FrameSet on ' + str(device) if frames else 'off'}",
          flush=True)

    for batch in sc["batches"]:
        g = torch.Generator(device="cpu").manual_seed(args.seed + batch)
        x_fixed = y_fixed = None
        if frames is None:
            x_fixed = torch.randn(batch, ctx, feat, generator=g).to(device)
            y_fixed = torch.randint(0, pdfs, (batch,), generator=g).to(device)
        jobs: List[tuple] = []
        if "fp32" in variants:
            jobs.append(("fp32 loop" + (" (TF32 on)" if device.type == "cuda" else ""), None))
        if "bf16" in variants:
            jobs.append(("bf16 autocast loop", None))
        if "project" in variants:
            jobs += [("project " + c, c) for c in project_cfgs]
        for label, cfg in jobs:
            rec: Dict[str, Any] = dict(scale=name, batch=batch, variant=label, K=K, hidden=sc["hidden"],
                                       layers=sc["layers"], context=ctx, feat=feat, pdfs=pdfs,
                                       flops_per_frame=flops_frame, data_path=frames is not None)
            free(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            prev_prec = torch.get_float32_matmul_precision()
            try:
                student = copy.deepcopy(student0)
                t_build = time.perf_counter()
                if cfg is None:
                    bf16 = label.startswith("bf16")
                    if not bf16 and device.type == "cuda":
                        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 loop, as in the reference
                    tlist = [copy.deepcopy(t).to(torch.bfloat16) for t in teachers] if bf16 else teachers
                    loop = make_loop_step(tlist, student, bf16, args.T, args.alpha, device)
                    if frames is None:
                        def step_fn(idx, loop=loop):
                            return loop(x_fixed, y_fixed)
                    else:
                        def step_fn(idx, loop=loop):
                            x, y = frames.batch(idx)
                            return loop(x, y)
                else:
                    opts = parse_config(cfg)
                    rec["config"] = dict(opts)
                    if opts["teacher_mode"] == "fp8" and fp8_support(device) is not None:
                        rec["skipped"] = fp8_support(device)  # said in the table, not an error
                        print(json.dumps(rec), flush=True)
                        results.append(rec)
                        continue
                    stack = StackedTeachers(teachers, mode=opts.pop("teacher_mode"))
                    rec["teacher_path"] = stack.resolved_mode(batch, device)
                    if opts.pop("cache"):  # soft targets precomputed as a top-k cache: no teacher in the step
                        if frames is None:
                            raise ValueError("the cached mode needs the data path (frame indices)")
                        t0 = time.perf_counter()
                        cache = compute_topk_soft_targets(stack, frames, args.T, args.topk, batch_size=8192)
                        rec.update(cache_s=time.perf_counter() - t0, cache_k=cache.meta["k"],
                                   cache_kept_mass=cache.meta["mean_kept_mass"], teacher_path="cache",
                                   flops_per_frame=distill_flops_per_frame(student0, []))
                        t_build = time.perf_counter()
                        stepper = DistillStep(student, cache=cache, frames=frames, T=args.T, alpha=args.alpha,
                                              lr=1e-4, **opts)
                    else:
                        stepper = DistillStep(student, stack, frames=frames, T=args.T, alpha=args.alpha, lr=1e-4,
                                              **opts)
                    if frames is None:
                        def step_fn(idx, s=stepper):
                            return s.step(None, x_fixed, y_fixed)
                    else:
                        def step_fn(idx, s=stepper):
                            return s.step(idx)
                it = index_batches(frames, batch, args.seed) if frames is not None else None
                nxt = (lambda: next(it)) if it is not None else (lambda: None)
                rec["first_loss"] = float(step_fn(nxt()))  # same first batch and weights for every variant
                rec["first_step_s"] = round(time.perf_counter() - t_build, 2)  # includes compile/capture
                for _ in range(max(0, args.warmup - 1)):
                    step_fn(nxt())
                sync(device)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        step_fn(nxt())
                    sync(device)
                    times.append((time.perf_counter() - t0) / args.steps)
                last = float(step_fn(nxt()))
                dt = float(np.mean(times))
                rec.update(step_ms=dt * 1e3, step_ms_repeats=[t * 1e3 for t in times],
                           spread=(max(times) - min(times)) / dt, frames_per_s=batch / dt,
                           tflops=rec["flops_per_frame"] * batch / dt / 1e12, last_loss=last)
                rec["mfu"] = rec["tflops"] / args.peak_tflops
                kt = kernel_time_per_step(lambda: step_fn(nxt()), args.profile_steps, device)
                rec["gpu_busy"] = None if kt is None else kt / dt
                if device.type == "cuda":
                    rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            except Exception as e:  # one failing variant must not lose the others' numbers
                rec["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            finally:
                torch.set_float32_matmul_precision(prev_prec)
                student = stepper = stack = loop = tlist = step_fn = it = cache = None  # noqa: F841
                free(device)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)
            results.append(rec)
            save()  # partial results survive a time limit


def markdown(results: List[Dict[str, Any]], header: Dict[str, Any]) -> str:
    lines = [f"device: {header['device_name']}; torch {header['torch']}; {header['date']}; peak "
             f"{header['peak_tflops']} TFLOP/s dense bf16; measured bf16 8192^3 matmul: "
             f"{header['matmul_tflops'] if header['matmul_tflops'] is None else round(header['matmul_tflops'])} "
             f"TFLOP/s", "",
             f"command: `{header['command']}`", "",
             "| scale | batch | variant | frames/s | step ms (spread) | TFLOP/s | MFU | GPU busy | vs bf16 loop | "
             "first loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["scale"], r["batch"]): r["frames_per_s"] for r in results
            if r["variant"] == "bf16 autocast loop" and "frames_per_s" in r}
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['scale']} | {r['batch']} | {r['variant']} | skipped: {r['skipped'][:120]} "
                         f"| | | | | | |")
            continue
        if "error" in r:
            lines.append(f"| {r['scale']} | {r['batch']} | {r['variant']} | error: {r['error'][:120]} "
                         f"| | | | | | |")
            continue
        b = base.get((r["scale"], r["batch"]))
        rel = f"{r['frames_per_s'] / b:.2f}x" if b else "-"
        busy = "-" if r.get("gpu_busy") is None else f"{100 * r['gpu_busy']:.0f}%"
        lines.append(f"| {r['scale']} | {r['batch']} | {r['variant']} | {r['frames_per_s'] / 1e3:.1f}k | "
                     f"{r['step_ms']:.2f} ({100 * r['spread']:.1f}%) | {r['tflops']:.1f} | {100 * r['mfu']:.1f}% | "
                     f"{busy} | {rel} | {r['first_loss']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True  # torch's default, made explicit
        import torch._dynamo as dynamo
        for knob in ("cache_size_limit", "recompile_limit"):  # several scales/batches compile the same functions
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, 64)
    scales = dict((k, dict(v)) for k, v in SCALES.items())
    if args.paper_batches:
        scales["paper"]["batches"] = [int(b) for b in args.paper_batches.split(",")]
    if args.an4_batches:
        scales["an4"]["batches"] = [int(b) for b in args.an4_batches.split(",")]
    scales["an4"].update(K=args.an4_teachers, hidden=args.an4_hidden, layers=args.an4_layers,
                         context=args.an4_context, pdfs=args.an4_pdfs, frames=args.an4_frames)
    configs = dict((k, v.split(",")) for k, v in DEFAULT_PROJECT.items())
    if args.project_configs:
        for part in args.project_configs.split(";"):
            k, v = part.split("=", 1)
            configs[k.strip()] = [c.strip() for c in v.split(",") if c.strip()]
    header: Dict[str, Any] = dict(
        command="python " + " ".join([os.path.relpath(__file__, os.getcwd())] + (argv if argv is not None
                                                                                  else sys.argv[1:])),
        device=str(device), torch=torch.__version__, python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        peak_tflops=args.peak_tflops, T=args.T, alpha=args.alpha,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu")
    header["matmul_tflops"] = matmul_tflops(device)
    print(json.dumps(header), flush=True)
    if device.type == "cuda" and not args.no_check and D.triton is not None:
        try:
            header["fused_loss_check"] = check_fused_loss(device)
        except Exception as e:
            header["fused_loss_check"] = dict(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
            print(json.dumps(header["fused_loss_check"]), flush=True)
    if device.type == "cuda" and args.breakdown:
        try:
            header["breakdown"] = breakdown(scales["paper"], max(scales["paper"]["batches"]), args, device)
        except Exception as e:
            header["breakdown"] = dict(error=f"{type(e).__name__}: {str(e)[:400]}")
            print(json.dumps(header["breakdown"]), flush=True)
            free(device)
    results: List[Dict[str, Any]] = []

    def save() -> None:
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump(dict(header=header, results=results), f, indent=1)
            os.replace(args.out + ".tmp", args.out)

    save()
    for name in [s.strip() for s in args.scale.split(",") if s.strip()]:
        run_scale(name, scales[name], args, device, configs.get(name, ["auto"]), results, save)
    table = markdown(results, header)
    print("\n" + table, flush=True)
    save()
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
