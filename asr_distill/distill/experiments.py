"""The paper's experiments on a corpus, as a table ``{name: function}`` that stage 6 runs in order.

* ``select`` (runs first): students for each (T, alpha, student recipe) candidate, plus hard-label controls trained
  with each non-default recipe; the candidate with the best DEV frame accuracy sets T, alpha and the student recipe
  of the call's other experiments.  Test frame accuracy is recorded for every row and never used.
* ``table1``: a hard-label baseline with the student's (= a teacher's) architecture vs the distilled student; the
  fraction of the ensemble's test-frame-accuracy gain over the baseline that the student recovers.  The teachers
  run live, or their soft targets come from a top-k cache, or ``both`` are compared.
* ``table5``: 3% of the training frames, hard targets vs the ensemble's soft targets (test frame accuracy).
* ``sweep``: T in {1, 2, 5, 10} x alpha in {0, 0.5, 0.9}, test and dev frame accuracy, and a plot.
* ``compression``: distilled students with 1, 1/4 and 1/16 of a teacher's parameters, WER against parameters.

Each function takes the :class:`~asr_distill.distill.runner.DistillRunner` and the call's
:class:`DistillSettings`, writes its table into ``results.json`` (rank 0) and returns it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

from ..nnet import parallel
from ..nnet.models import build_model, count_parameters
from ..results import update_experiment
from .plots import plot_compression, plot_sweep
from .recipes import SELECT_PAIRS, SELECT_RECIPES, hidden_for_params, student_dir
from .runner import DistillRunner

__all__ = ["DistillSettings", "EXPERIMENTS", "check_experiments", "run_experiments"]

log = logging.getLogger(__name__)


@dataclass
class DistillSettings:
    """The student's settings for one call of stage 6 (``select`` may replace T, alpha and the recipe)."""

    T: float = 2.0
    alpha: float = 0.5
    mean: str = "arithmetic"
    recipe: dict = field(default_factory=dict)  # student training overrides (epochs, noise_std, freq_mask)
    teacher_source: str = "live"  # live, cache or both
    topk: int = 16
    select_candidates: Optional[Sequence[Tuple[float, float, dict]]] = None


def run_select(run: DistillRunner, s: DistillSettings) -> dict:
    candidates = list(s.select_candidates) if s.select_candidates is not None else \
        [(t, a, dict(r)) for r in SELECT_RECIPES for t, a in SELECT_PAIRS]
    # hard labels + each recipe: how much of a student's gain is the recipe's rather than the teachers'?
    controls = {student_dir(1.0, 0.0, r): r for _, _, r in candidates if r}
    rows = []
    for t, a, r in candidates + [(1.0, 0.0, r) for r in controls.values()]:
        m, summ = run.train(student_dir(t, a, r), run.teacher_config, T=t, alpha=a, **r)
        rows.append({"T": t, "alpha": a, "recipe": r, "candidate": a > 0, "best_epoch": summ["best_epoch"],
                     "dev_frame_acc": run.frame_acc(m, "dev"), "test_frame_acc": run.frame_acc(m)})
        log.info("select %s", rows[-1])
    chosen = max((r for r in rows if r["candidate"]), key=lambda r: r["dev_frame_acc"])
    chosen = parallel.broadcast_object(chosen)  # under torchrun only rank 0 scores: all go on with its choice
    s.T, s.alpha, s.recipe = chosen["T"], chosen["alpha"], dict(chosen["recipe"])
    log.info("chosen on dev: T=%g alpha=%g recipe=%s", s.T, s.alpha, s.recipe or "the teachers'")
    table = {"rows": rows, "chosen": chosen}
    if run.main:
        update_experiment(run.exp.dir, "select", table)
    return table


def _student_row(run: DistillRunner, s: DistillSettings, source: str, base_row: dict) -> dict:
    """One Table 1 student: live teachers, or the top-k cache.  A cached student gets the recipe's schedule but no
    input perturbation (its targets are the clean windows'); with a perturbing recipe the live-vs-cache difference
    is then the cache's *and* the perturbation's, which the sweep's unperturbed rows separate."""
    cache, extra = None, {"T": s.T, "alpha": s.alpha, "teacher_source": source}
    if source == "cache":
        cache, meta = run.topk_cache(s.T, s.topk)
        extra.update(topk=s.topk, cache_kept_mass=round(float(meta.get("mean_kept_mass", float("nan"))), 4))
    use = s.recipe if source == "live" else \
        {**{k: v for k, v in s.recipe.items() if k == "epochs"}, "noise_std": 0.0, "freq_mask": 0}
    extra.update({k: v for k, v in use.items() if v})
    name = "student" if source == "live" else f"student-top{s.topk}"
    student, _ = run.train(name, run.teacher_config, T=s.T, alpha=s.alpha, cache=cache, **use)
    row = run.decode(name, "student", student, extra)
    gain = run.ensemble_acc - base_row["frame_acc"]
    recovered = (row["frame_acc"] - base_row["frame_acc"]) / gain if gain > 0 else float("nan")
    return {"frame_acc": row["frame_acc"], "wer": row["wer"], "recovered_fraction": round(recovered, 3), **extra}


def run_table1(run: DistillRunner, s: DistillSettings) -> dict:
    baseline, _ = run.train("baseline", run.teacher_config)
    base_row = run.decode("baseline", "baseline", baseline)
    table = {"ensemble_frame_acc": run.ensemble_acc, "baseline_frame_acc": base_row["frame_acc"],
             "baseline_wer": base_row["wer"], "T": s.T, "alpha": s.alpha, "mean": s.mean}
    for source in (("live", "cache") if s.teacher_source == "both" else (s.teacher_source,)):
        table[source] = _student_row(run, s, source, base_row)
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
        row = run.decode(f"student-h{h}", "student", m, {"T": s.T, "alpha": s.alpha, "param_fraction": round(frac, 4),
                                                          **s.recipe})
        b, _ = run.train(f"baseline-h{h}", scfg)
        brow = run.decode(f"baseline-h{h}", "baseline", b, {"param_fraction": round(frac, 4)})
        rows.append({"hidden_dim": h, "params": row["params"], "param_fraction": frac, "student_wer": row["wer"],
                     "student_frame_acc": row["frame_acc"], "baseline_wer": brow["wer"],
                     "baseline_frame_acc": brow["frame_acc"]})
    if run.main:
        update_experiment(run.exp.dir, "compression", rows)
        plot_compression(rows, run.exp.plot_path("compression"))
    return rows


# In the order they run: select first, so that its choice reaches the others.
EXPERIMENTS: Dict[str, Callable[[DistillRunner, DistillSettings], object]] = {
    "select": run_select, "table1": run_table1, "table5": run_table5, "sweep": run_sweep,
    "compression": run_compression}


def check_experiments(names: Sequence[str]) -> None:
    """Refuse, naming them, experiment names that are not in :data:`EXPERIMENTS` (a typo must not do nothing)."""
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown stage-6 experiment(s) {', '.join(unknown)}: choose from {', '.join(EXPERIMENTS)}")


def run_experiments(run: DistillRunner, names: Sequence[str], settings: DistillSettings) -> Dict[str, object]:
    check_experiments(names)
    return {name: fn(run, settings) for name, fn in EXPERIMENTS.items() if name in names}
