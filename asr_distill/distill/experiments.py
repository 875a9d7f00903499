"""The paper's experiments on a corpus, as a table ``{name: function}`` that stage 6 runs in order.

* ``select`` (runs first): students for each (T, alpha, student recipe) candidate, plus a hard-label control for
  each recipe the candidates use; the candidate with the best DEV frame accuracy sets T, alpha and the student
  recipe of the call's other experiments, and the control with the best DEV frame accuracy sets table 1's
  baseline recipe (``baseline_choice="own"``: each system gets the same choice of recipes, tuned on its own dev
  accuracy; ``"shared"``: the baseline takes the student's).  Test frame accuracy is recorded for every row and
  never used.
* ``table1``: a hard-label baseline with the student's (= a teacher's) architecture vs the distilled student, each
  trained with several seeds and the same recipe (or each with its own recipe chosen on dev by ``select``); the
  fraction of the ensemble's test-frame-accuracy gain over the baseline that the student recovers (from the means,
  with its spread).  The teachers run live, or their soft targets come from a top-k cache, or ``both`` are
  compared.  The first seed reuses ``select``'s run of the same training instead of repeating it.
* ``table5``: 3% of the training frames, hard targets vs the ensemble's soft targets (test frame accuracy).
* ``sweep``: T in {1, 2, 5, 10} x alpha in {0, 0.5, 0.9}, test and dev frame accuracy, and a plot.
* ``compression``: distilled students with 1, 1/4 and 1/16 of a teacher's parameters, each against a hard-label
  baseline of its size trained with the same recipe; WER against parameters.
* ``small``: the student to deploy, distilled at ``small_fraction`` of a teacher's parameters with table 1's
  settings (no baseline: ``compression`` has those); stage 8's ``--system auto`` ships it when its dev WER is
  within the margin of the ensemble's.
* ``specialists``: the paper's section 5: a generalist (``generalist``, default the student) plus
  ``num_specialists`` specialists on the classes it confuses (:mod:`asr_distill.distill.specialists`), their
  combined posteriors scored like any system (kind ``specialists``), and test frame accuracy by how many
  specialists cover a frame's class, with a plot.
* ``streaming``: students for streaming, with the teachers' left context but only ``stream_right`` frames of right
  context (the teachers label their full windows; the student sees its part of them), each against a hard-label
  baseline of the same context and recipe.  ``asr-distill export --cmvn online`` then gives them causal
  normalisation and ``transcribe --stream`` runs them on audio arriving in chunks.
* ``sequence`` (needs k2): a frame-level student (``sequence_from``, default the student) fine-tuned with the
  sequence-level KL to the ensemble over the decoding graph's paths (:mod:`asr_distill.distill.sequence`), scored
  against the student it started from.

Each function takes the :class:`~asr_distill.distill.runner.DistillRunner` and the call's
:class:`DistillSettings`, writes its table into ``results.json`` (rank 0) and returns it.
"""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..nnet import parallel
from ..fst import read_tid2pdf
from ..nnet.checkpoint import load_model
from ..nnet.frames import FrameSet
from ..nnet.inference import log_posteriors
from ..nnet.models import build_model, count_parameters, fit_windows, model_flops_per_frame
from ..nnet.train import TrainConfig
from ..results import update_experiment
from ..utils import read_json
from .plots import plot_compression, plot_specialists, plot_sweep
from .recipes import SELECT_PAIRS, SELECT_RECIPES, hidden_for_params, student_dir
from .runner import DistillRunner
from .specialist_system import SpecialistSystem

__all__ = ["DistillSettings", "BASELINE_CHOICES", "EXPERIMENTS", "check_experiments", "run_experiments",
           "seed_summary", "recovered"]

log = logging.getLogger(__name__)

# select: table 1's baseline takes the recipe its own hard-label control did best with on dev, or the student's
BASELINE_CHOICES = ("own", "shared")


@dataclass
class DistillSettings:
    """The student's settings for one call of stage 6 (``select`` may replace T, alpha and the recipe)."""

    T: float = 2.0
    alpha: float = 0.5
    mean: str = "arithmetic"
    recipe: dict = field(default_factory=dict)  # student training overrides (epochs, noise_std, freq_mask)
    baseline_recipe: Optional[dict] = None  # table 1's baseline's overrides (None: the student's ``recipe``)
    baseline_choice: str = "own"  # select: the baseline's recipe chosen on its own dev accuracy, or the student's
    teacher_source: str = "live"  # live, cache or both
    topk: int = 16
    select_candidates: Optional[Sequence[Tuple[float, float, dict]]] = None
    seeds: int = 3  # table 1: baseline and student each trained with this many seeds (100, 101, ...)
    stream_right: Sequence[int] = (2,)  # streaming: the students' right contexts (frames)
    small_fraction: float = 0.25  # small: the deployable student's share of a teacher's parameters
    generalist: str = "student"  # specialists: the system they refine
    num_specialists: int = 8
    specialist_overlap: Optional[int] = None  # extra classes per subset (None: half a cluster's mean size)
    specialist_epochs: int = 10
    specialist_top_n: int = 5  # a specialist is active when its subset holds one of the generalist's top n
    specialist_alpha: float = 0.0  # > 0: specialists learn from the teachers' soft targets at T (0: hard labels)
    sequence_from: str = "student"  # sequence: the frame-level system fine-tuned
    sequence_epochs: int = 2
    sequence_lr: float = 1e-4
    sequence_frame_weight: float = 0.1


def run_select(run: DistillRunner, s: DistillSettings) -> dict:
    grid = list(s.select_candidates) if s.select_candidates is not None else \
        [(t, a, dict(r)) for r in SELECT_RECIPES for t, a in SELECT_PAIRS]
    # an override equal to the teachers' own setting is no override: such candidates are one training, run once
    candidates = []
    for t, a, r in grid:
        c = (t, a, {k: v for k, v in r.items() if run.train_config.get(k) != v})
        if c not in candidates:
            candidates.append(c)
    if s.baseline_choice not in BASELINE_CHOICES:
        raise ValueError(f"baseline_choice {s.baseline_choice!r}: choose from {', '.join(BASELINE_CHOICES)}")
    # a hard-label control per recipe: how much of a student's gain is the recipe's rather than the teachers'?  and,
    # with more than one recipe, the baseline's own choice among them (the teachers' recipe needs no control when
    # it is the only one: table 1's baseline is that run)
    controls = {student_dir(1.0, 0.0, r): r for _, _, r in candidates}
    if list(controls.values()) == [{}]:
        controls = {}
    rows = []
    for t, a, r in candidates + [(1.0, 0.0, r) for r in controls.values()]:
        m, summ = run.train(student_dir(t, a, r), run.teacher_config, T=t, alpha=a, **r)
        rows.append({"T": t, "alpha": a, "recipe": r, "candidate": a > 0, "best_epoch": summ["best_epoch"],
                     "dev_frame_acc": run.frame_acc(m, "dev"), "test_frame_acc": run.frame_acc(m)})
        log.info("select %s", rows[-1])
    chosen = max((r for r in rows if r["candidate"]), key=lambda r: r["dev_frame_acc"])
    baseline = max((r for r in rows if not r["candidate"]), key=lambda r: r["dev_frame_acc"], default=None)
    # under torchrun only rank 0 scores: all go on with its choice
    chosen, baseline = parallel.broadcast_object((chosen, baseline))
    s.T, s.alpha, s.recipe = chosen["T"], chosen["alpha"], dict(chosen["recipe"])
    s.baseline_recipe = dict(baseline["recipe"]) if baseline is not None and s.baseline_choice == "own" \
        else dict(s.recipe)
    log.info("chosen on dev: T=%g alpha=%g recipe=%s; the baseline's recipe %s", s.T, s.alpha,
             s.recipe or "the teachers'", s.baseline_recipe or "the teachers'")
    table = {"rows": rows, "chosen": chosen, "baseline_choice": s.baseline_choice,
             "baseline_recipe": s.baseline_recipe}
    if baseline is not None:
        table["chosen_baseline"] = baseline
    if run.main:
        update_experiment(run.exp.dir, "select", table)
    return table


def seed_name(name: str, i: int) -> str:
    """The ``i``-th seed's system name: ``student`` for the first (what ``export`` takes), ``student-s1``, ..."""
    return name if i == 0 else f"{name}-s{i}"


def seed_summary(rows: Sequence[dict]) -> dict:
    """Mean, sample standard deviation and per-seed values of frame accuracy, test WER and dev WER over the seeds'
    decoded rows."""
    out: Dict[str, object] = {}
    for key in ("frame_acc", "dev_frame_acc", "wer", "dev_wer"):
        vals = [float(r[key]) for r in rows]
        out[key] = round(statistics.fmean(vals), 3)
        out[f"{key}_std"] = round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0
    out["per_seed"] = [{"name": r["name"], "seed": r["seed"], **{k: r[k] for k in
                                                                 ("frame_acc", "dev_frame_acc", "wer", "dev_wer")}}
                       for r in rows]
    return out


def recovered(student_acc: float, baseline_acc: float, ensemble_acc: float) -> float:
    """The fraction of the ensemble's frame-accuracy gain over the baseline that the student recovers (NaN when the
    ensemble does not beat the baseline)."""
    gain = ensemble_acc - baseline_acc
    return round((student_acc - baseline_acc) / gain, 3) if gain > 0 else float("nan")


def _student_rows(run: DistillRunner, s: DistillSettings, source: str, seeds: Sequence[int]
                  ) -> Tuple[dict, list, dict]:
    """Table 1's students for one teacher source, one per seed: live teachers, or the top-k cache.  A cached
    student gets the recipe's schedule but no input perturbation (its targets are the clean windows').  Returns
    (what each row records, the rows, the recipe the students were trained with)."""
    cache, extra = None, {"T": s.T, "alpha": s.alpha, "teacher_source": source,
                          **(run.transfer_info() if source == "live" else {})}
    if source == "cache":
        cache, meta = run.topk_cache(s.T, s.topk)
        extra.update(topk=s.topk, cache_kept_mass=round(float(meta.get("mean_kept_mass", float("nan"))), 4))
    use = s.recipe if source == "live" else \
        {**{k: v for k, v in s.recipe.items() if k == "epochs"}, "noise_std": 0.0, "freq_mask": 0}
    extra.update({k: v for k, v in use.items() if v})
    name = "student" if source == "live" else f"student-top{s.topk}"
    rows = []
    for i, seed in enumerate(seeds):
        reuse = student_dir(s.T, s.alpha, use) if i == 0 and source == "live" else None  # select's run of it
        student, _ = run.train(seed_name(name, i), run.teacher_config, T=s.T, alpha=s.alpha, cache=cache, seed=seed,
                               reuse=reuse, **use)
        rows.append(run.decode(seed_name(name, i), "student", student, {**extra, "seed": seed}))
    return extra, rows, use


def run_table1(run: DistillRunner, s: DistillSettings) -> dict:
    """The fair protocol: baseline and student share the recipe (the teachers' unless ``s.recipe`` overrides it for
    both, or ``select`` chose each its own on dev) and the seeds; only the targets differ.  The recovered fraction
    is computed from the seeds' means; its spread is that of the per-seed fractions (seed i's student against seed
    i's baseline)."""
    seeds = [100 + i for i in range(s.seeds)]
    brecipe = s.recipe if s.baseline_recipe is None else s.baseline_recipe
    base_rows = []
    for i, seed in enumerate(seeds):
        baseline, _ = run.train(seed_name("baseline", i), run.teacher_config, seed=seed,
                                reuse=student_dir(1.0, 0.0, brecipe) if i == 0 else None, **brecipe)
        base_rows.append(run.decode(seed_name("baseline", i), "baseline", baseline,
                                    {"seed": seed, **{k: v for k, v in brecipe.items() if v}}))
    base = seed_summary(base_rows)
    table = {"T": s.T, "alpha": s.alpha, "mean": s.mean, "recipe": s.recipe, "baseline_recipe": brecipe,
             **run.transfer_info(),
             "seeds": seeds, "ensemble_frame_acc": run.ensemble_acc, "ensemble_dev_frame_acc": run.ensemble_dev_acc,
             "ensemble_wer": run.ensemble_wer, "ensemble_dev_wer": run.ensemble_dev_wer,
             "baseline_frame_acc": base["frame_acc"], "baseline_wer": base["wer"], "baseline": base}
    for source in (("live", "cache") if s.teacher_source == "both" else (s.teacher_source,)):
        extra, rows, used = _student_rows(run, s, source, seeds)
        stud = seed_summary(rows)
        per_seed = [recovered(r["frame_acc"], b["frame_acc"], run.ensemble_acc) for r, b in zip(rows, base_rows)]
        finite = [f for f in per_seed if f == f]
        table[source] = {**stud, "recovered_fraction": recovered(stud["frame_acc"], base["frame_acc"],
                                                                 run.ensemble_acc),
                         "recovered_fraction_per_seed": per_seed,
                         "recovered_fraction_dev": recovered(stud["dev_frame_acc"], base["dev_frame_acc"],
                                                             run.ensemble_dev_acc),
                         "recovered_fraction_std": round(statistics.stdev(finite), 3) if len(finite) > 1 else 0.0,
                         **extra, "recipe": used}
        if run.main:  # after each row: a failure in the next one keeps this one
            update_experiment(run.exp.dir, "table1", table)
    return table


def run_table5(run: DistillRunner, s: DistillSettings) -> dict:
    rows = {}
    for name, a in (("hard", 0.0), ("soft", 1.0)):
        m, summ = run.train(f"table5-{name}", run.teacher_config, T=s.T, alpha=a, frame_subset=0.03, epochs=40,
                            patience=8)
        rows[name] = {"test_frame_acc": run.frame_acc(m), "dev_frame_acc": run.frame_acc(m, "dev"), "alpha": a,
                      "T": s.T, "best_epoch": summ["best_epoch"], "train_frames": summ["train_frames"]}
    if run.main:
        update_experiment(run.exp.dir, "table5", rows)
    return rows


def run_sweep(run: DistillRunner, s: DistillSettings) -> list:
    rows = []
    for a in (0.0, 0.5, 0.9):
        for t in ((1.0,) if a == 0.0 else (1.0, 2.0, 5.0, 10.0)):  # alpha 0 ignores T: one run
            m, _ = run.train(student_dir(t, a, s.recipe), run.teacher_config, T=t, alpha=a, **s.recipe)
            rows.append({"T": t, "alpha": a, "test_frame_acc": run.frame_acc(m), "dev_frame_acc": run.frame_acc(m, "dev"),
                         "recipe": s.recipe})
    if run.main:
        update_experiment(run.exp.dir, "sweep", rows)
        plot_sweep(rows, run.exp.plot_path("sweep"))
    return rows


def run_compression(run: DistillRunner, s: DistillSettings) -> list:
    rows = []
    cfg = run.teacher_config
    full = count_parameters(build_model(cfg))
    for frac in (1.0, 0.25, 1.0 / 16):
        h = cfg["hidden_dim"] if frac == 1.0 else hidden_for_params(int(full * frac), cfg)
        scfg = {**cfg, "hidden_dim": h}
        m, _ = run.train(f"student-h{h}", scfg, T=s.T, alpha=s.alpha, **s.recipe)
        row = run.decode(f"student-h{h}", "student", m, {"T": s.T, "alpha": s.alpha, **run.transfer_info(),
                                                          "param_fraction": round(frac, 4),
                                                          **s.recipe})
        b, _ = run.train(f"baseline-h{h}", scfg, **s.recipe)  # the student's recipe: only the targets differ
        brow = run.decode(f"baseline-h{h}", "baseline", b, {"param_fraction": round(frac, 4), **s.recipe})
        rows.append({"hidden_dim": h, "params": row["params"], "param_fraction": frac, "student_wer": row["wer"],
                     "student_frame_acc": row["frame_acc"], "baseline_wer": brow["wer"],
                     "baseline_frame_acc": brow["frame_acc"]})
    if run.main:
        update_experiment(run.exp.dir, "compression", rows)
        plot_compression(rows, run.exp.plot_path("compression"))
    return rows


def run_small(run: DistillRunner, s: DistillSettings) -> dict:
    if not 0.0 < s.small_fraction < 1.0:
        raise ValueError(f"small student fraction {s.small_fraction}: must be between 0 and 1")
    cfg = run.teacher_config
    if cfg["arch"] != "mlp":
        raise ValueError(f"small students are MLPs; the teachers are {cfg['arch']}")
    h = hidden_for_params(int(count_parameters(build_model(cfg)) * s.small_fraction), cfg)
    name = f"student-h{h}"  # compression's name for the same student: either reuses the other's finished run
    m, _ = run.train(name, {**cfg, "hidden_dim": h}, T=s.T, alpha=s.alpha, **s.recipe)
    extra = {"T": s.T, "alpha": s.alpha, "param_fraction": round(s.small_fraction, 4), **s.recipe,
             **run.transfer_info()}
    row = run.decode(name, "student", m, extra)
    table = {"name": name, "hidden_dim": h, "params": row["params"], "param_fraction": s.small_fraction,
             **{k: row[k] for k in ("frame_acc", "dev_frame_acc", "wer", "dev_wer")}}
    if run.main:
        update_experiment(run.exp.dir, "small", table)
    return table


def run_streaming(run: DistillRunner, s: DistillSettings) -> list:
    rows = []
    for right in s.stream_right:
        if not 0 <= right <= run.right:
            raise ValueError(f"streaming right context {right}: must be 0 .. the teachers' {run.right}")
        cfg = {**run.teacher_config, "context": run.left + 1 + right, "left": run.left, "right": right}
        if cfg["arch"] != "mlp":
            raise ValueError(f"streaming students are MLPs; the teachers are {cfg['arch']}")
        extra = {"left_context": run.left, "right_context": right, **{k: v for k, v in s.recipe.items() if v}}
        m, _ = run.train(f"student-stream-r{right}", cfg, T=s.T, alpha=s.alpha, **s.recipe)
        row = run.decode(f"student-stream-r{right}", "student", m, {"T": s.T, "alpha": s.alpha, **extra,
                                                                      **run.transfer_info()})
        b, _ = run.train(f"baseline-stream-r{right}", cfg, **s.recipe)
        brow = run.decode(f"baseline-stream-r{right}", "baseline", b, extra)
        rows.append({"right_context": right, "left_context": run.left, "params": row["params"],
                     **{f"student_{k}": row[k] for k in ("frame_acc", "dev_frame_acc", "wer", "dev_wer")},
                     **{f"baseline_{k}": brow[k] for k in ("frame_acc", "dev_frame_acc", "wer", "dev_wer")}})
        if run.main:
            update_experiment(run.exp.dir, "streaming", rows)
    return rows


def run_specialists(run: DistillRunner, s: DistillSettings) -> dict:
    # under torchrun each rank trains its share of the specialists on the whole training set, not a shard
    train = run.whole_train()
    generalist = fit_windows(load_model(run.exp.system_checkpoint(s.generalist), run.device), run.left,
                             run.right).eval()
    k = s.num_specialists
    overlap = s.specialist_overlap if s.specialist_overlap is not None else \
        int(generalist.config["num_pdfs"]) // (2 * k)
    soft = f"-T{s.T:g}a{s.specialist_alpha:g}" if s.specialist_alpha > 0 else ""
    name = f"specialists-{s.generalist}-k{k}-o{overlap}-e{s.specialist_epochs}{soft}"
    cfg = TrainConfig(**{**run.train_config, "seed": 100, "epochs": s.specialist_epochs})
    system = SpecialistSystem.fit(generalist, train, run.frames["dev"], run.exp.system_dir(name),
                                  cfg, k, overlap, run.left, run.right, s.specialist_top_n, teachers=run.teachers,
                                  T=s.T, alpha=s.specialist_alpha)
    if not run.main:  # rank 0 alone combines, decodes and writes
        return {}
    post = {split: system.log_posteriors(run.frames[split]) for split in ("dev", "test")}  # test last
    extra = {"generalist": s.generalist, "num_specialists": len(system.subsets), "overlap": overlap,
             "specialist_epochs": s.specialist_epochs, "specialist_targets":
                 f"teachers' soft targets, T {s.T:g}, alpha {s.specialist_alpha:g}" if soft else "hard labels",
             "active_per_frame": round(system.active_count, 3), "flops_per_frame": system.flops_per_frame(),
             "generalist_flops_per_frame": model_flops_per_frame(generalist)}
    row = run.scorer.evaluate_posteriors(name, "specialists", post, system.params(), extra)
    general = log_posteriors(generalist, run.frames["test"])
    cover = system.coverage()
    by_level: Dict[int, list] = {}
    for utt, labels in run.scorer.labels["test"].items():
        known = labels >= 0
        lab = labels[known]
        for level in np.unique(cover[lab]):
            at = cover[lab] == level
            hits = by_level.setdefault(int(level), [0, 0, 0])
            hits[0] += int((general[utt][known].argmax(1)[at] == lab[at]).sum())
            hits[1] += int((post["test"][utt][known].argmax(1)[at] == lab[at]).sum())
            hits[2] += int(at.sum())
    levels = [{"specialists_covering": lv, "frames": n, "generalist_frame_acc": round(100.0 * g / n, 2),
               "combined_frame_acc": round(100.0 * c / n, 2)} for lv, (g, c, n) in sorted(by_level.items())]
    table = {"name": name, **extra, "subset_sizes": [len(x) for x in system.subsets],
             "frame_acc": row["frame_acc"], "wer": row["wer"], "dev_wer": row["dev_wer"],
             "generalist_frame_acc": round(sum(x[0] for x in by_level.values()) * 100.0 /
                                           max(1, sum(x[2] for x in by_level.values())), 2),
             "by_coverage": levels}
    update_experiment(run.exp.dir, "specialists", table)
    plot_specialists(levels, run.exp.plot_path("specialists"))
    return table


def run_sequence(run: DistillRunner, s: DistillSettings) -> dict:
    from .sequence import SequenceConfig, SequenceDistiller  # needs k2: imported only when asked for
    if parallel.is_distributed():
        raise ValueError("sequence: run stage 6 in one process")
    if not isinstance(run.frames["train"], FrameSet):
        raise ValueError("sequence: needs the training frames resident (--frames resident)")
    start = run.exp.decode_dir(s.sequence_from) / "wer.json"
    if not start.exists():
        raise FileNotFoundError(f"{start}: sequence training starts from {s.sequence_from}, which has not been "
                                f"scored (run table1 first, or name another system with --sequence-from)")
    before = read_json(start)
    model = fit_windows(load_model(run.exp.system_checkpoint(s.sequence_from), run.device), run.left, run.right)
    # the acoustic scale the decoder found best for the starting model on dev: the path posteriors' sharpness
    config = SequenceConfig(epochs=s.sequence_epochs, lr=s.sequence_lr, frame_weight=s.sequence_frame_weight,
                            acoustic_scale=float(before["acoustic_scale"]))
    name = f"{s.sequence_from}-seq-e{s.sequence_epochs}-lr{s.sequence_lr:g}-fw{s.sequence_frame_weight:g}"
    out = run.exp.system_dir(name)
    distiller = SequenceDistiller(run.exp.hclg_path, read_tid2pdf(run.exp.tid2pdf_path),
                                  run.teachers, run.exp.log_priors(), config, run.mean)
    summary = distiller.fit(model, run.frames["train"], run.frames["dev"], out)
    best = fit_windows(load_model(out / "best.pt", run.device), run.left, run.right)
    extra = {"sequence_from": s.sequence_from, "acoustic_scale_trained": config.acoustic_scale,
             "sequence_epochs": config.epochs, "sequence_lr": config.lr, "frame_weight": config.frame_weight,
             "best_epoch": summary["best"]["epoch"]}
    row = run.decode(name, "student", best, extra)
    table = {"name": name, **extra, "history": summary["history"],
             **{k: row[k] for k in ("frame_acc", "dev_frame_acc", "wer", "dev_wer")},
             **{f"start_{k}": before.get(k) for k in ("frame_acc", "dev_frame_acc", "wer", "dev_wer")}}
    update_experiment(run.exp.dir, "sequence", table)
    return table


# In the order they run: select first, so that its choice reaches the others.
EXPERIMENTS: Dict[str, Callable[[DistillRunner, DistillSettings], object]] = {
    "select": run_select, "table1": run_table1, "table5": run_table5, "sweep": run_sweep,
    "compression": run_compression, "small": run_small, "specialists": run_specialists,
    "streaming": run_streaming, "sequence": run_sequence}


def check_experiments(names: Sequence[str]) -> None:
    """Refuse, naming them, experiment names that are not in :data:`EXPERIMENTS` (a typo must not do nothing)."""
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown stage-6 experiment(s) {', '.join(unknown)}: choose from {', '.join(EXPERIMENTS)}")


def run_experiments(run: DistillRunner, names: Sequence[str], settings: DistillSettings) -> Dict[str, object]:
    check_experiments(names)
    return {name: fn(run, settings) for name, fn in EXPERIMENTS.items() if name in names}
