"""``EXP/results.json``: one row per system (gmm, teacher, ensemble, baseline, student), printed as a table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .utils import Pathlike, read_json, write_json

__all__ = ["update_results", "update_experiment", "load_results", "format_table", "format_table1", "format_streaming",
           "format_specialists", "format_sequence", "KINDS",
           "choose_deployable", "DEPLOY_MARGIN"]

KINDS = ("gmm", "teacher", "ensemble", "baseline", "student", "specialists")


def load_results(exp_dir: Pathlike) -> Dict[str, Any]:
    path = Path(exp_dir) / "results.json"
    return read_json(path) if path.exists() else {"corpus": None, "systems": []}


def update_results(exp_dir: Pathlike, corpus: str, system: Dict[str, Any]) -> None:
    """Insert or replace (by ``name``) one system row; written atomically."""
    for key in ("name", "kind", "wer", "frame_acc", "params"):
        if key not in system:
            raise ValueError(f"results row lacks {key!r}: {system}")
    if system["kind"] not in KINDS:
        raise ValueError(f"unknown system kind {system['kind']!r} (one of {KINDS})")
    res = load_results(exp_dir)
    res["corpus"] = corpus
    res["systems"] = [s for s in res["systems"] if s["name"] != system["name"]] + [system]
    order = {k: i for i, k in enumerate(KINDS)}
    res["systems"].sort(key=lambda s: (order[s["kind"]], s["name"]))
    write_json(res, Path(exp_dir) / "results.json")


def _fmt(v: Optional[float], nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def format_table(results: Dict[str, Any]) -> str:
    rows: List[List[str]] = [["system", "kind", "params", "test WER %", "95% CI", "test frame acc %", "dev WER %",
                              "ac. scale"]]
    for s in results["systems"]:
        ci = s.get("wer_ci")
        rows.append([s["name"], s["kind"], f"{s['params']:,}" if s.get("params") else "-", _fmt(s["wer"]),
                     f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-", _fmt(s.get("frame_acc")),
                     _fmt(s.get("dev_wer")), _fmt(s.get("acoustic_scale"), 4)])
    lines = [f"corpus: {results.get('corpus')}"]
    oov = next((s for s in results["systems"] if "oov_rate" in s), None)
    if oov is not None:  # the same for every system: one LM
        lines.append(f"OOV rate of the references against the LM's vocabulary: dev {_fmt(oov.get('dev_oov_rate'))}%, "
                     f"test {_fmt(oov['oov_rate'])}%")
    lines += _markdown(rows)
    table1 = results.get("experiments", {}).get("table1")
    if table1 and "baseline" in table1:  # the seeded protocol's table (older files hold one seed's numbers only)
        lines += ["", *format_table1(table1)]
    experiments = results.get("experiments", {})
    if experiments.get("streaming"):
        lines += ["", *format_streaming(experiments["streaming"])]
    if experiments.get("specialists"):
        lines += ["", *format_specialists(experiments["specialists"])]
    if experiments.get("sequence"):
        lines += ["", *format_sequence(experiments["sequence"])]
    return "\n".join(lines)


def format_sequence(table: Dict[str, Any]) -> List[str]:
    """The frame-level student before and after sequence-level distillation."""
    rows = [["system", "test frame acc %", "dev frame acc %", "test WER %", "dev WER %"],
            [table["sequence_from"], *(_fmt(table[f"start_{k}"]) for k in ("frame_acc", "dev_frame_acc", "wer",
                                                                           "dev_wer"))],
            [table["name"], *(_fmt(table[k]) for k in ("frame_acc", "dev_frame_acc", "wer", "dev_wer"))]]
    return [f"Sequence-level distillation ({table['sequence_epochs']} epoch(s), best {table['best_epoch']}, "
            f"frame weight {table['frame_weight']:g})", *_markdown(rows)]


def format_streaming(rows: List[Dict[str, Any]]) -> List[str]:
    """Streaming students against same-context baselines, per look-ahead."""
    table = [["right context", "student test frame acc %", "student test / dev WER %", "baseline test frame acc %",
              "baseline test / dev WER %"]]
    for r in rows:
        table.append([f"{r['right_context']} frames", _fmt(r["student_frame_acc"]),
                      f"{_fmt(r['student_wer'])} / {_fmt(r['student_dev_wer'])}", _fmt(r["baseline_frame_acc"]),
                      f"{_fmt(r['baseline_wer'])} / {_fmt(r['baseline_dev_wer'])}"])
    return ["Streaming students (left context as the teachers')", *_markdown(table)]


def format_specialists(table: Dict[str, Any]) -> List[str]:
    """Generalist alone and with its specialists, by how many specialists cover a frame's class."""
    rows = [["specialists covering", "frames", "generalist frame acc %", "with specialists %"]]
    for lv in table["by_coverage"]:
        rows.append([str(lv["specialists_covering"]), str(lv["frames"]), _fmt(lv["generalist_frame_acc"]),
                     _fmt(lv["combined_frame_acc"])])
    return [f"Specialists: {table['num_specialists']} refining {table['generalist']} (overlap {table['overlap']}, "
            f"{table['active_per_frame']:.2f} active per frame): test frame acc {_fmt(table['generalist_frame_acc'])}"
            f" -> {_fmt(table['frame_acc'])}%, WER {_fmt(table['wer'])}%", *_markdown(rows)]


def _markdown(rows: List[List[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


def _recipe_text(recipe: Optional[Dict[str, Any]]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(recipe.items())) if recipe else "teachers'"


def format_table1(table: Dict[str, Any]) -> List[str]:
    """Stage 6's Table 1: the seeds' mean +- sample standard deviation of baseline and students, and the fraction of
    the ensemble's frame-accuracy gain each student recovers (from the means; the per-seed fractions' spread)."""
    def pm(entry: Dict[str, Any], key: str) -> str:
        return f"{entry[key]:.2f} +- {entry[key + '_std']:.2f}"

    n = len(table["seeds"])
    recipe = table.get("recipe") or {}
    rows = [["system", "recipe", "test frame acc %", "dev frame acc %", "test WER %", "dev WER %", "recovered"],
            ["ensemble", "-", _fmt(table["ensemble_frame_acc"]), _fmt(table.get("ensemble_dev_frame_acc")),
             _fmt(table.get("ensemble_wer")), _fmt(table.get("ensemble_dev_wer")), "-"],
            ["baseline", _recipe_text(table.get("baseline_recipe", recipe)), pm(table["baseline"], "frame_acc"),
             pm(table["baseline"], "dev_frame_acc"), pm(table["baseline"], "wer"), pm(table["baseline"], "dev_wer"),
             "-"]]
    for source in ("live", "cache"):
        if source in table:
            st = table[source]
            rows.append([f"student ({source})", _recipe_text(st.get("recipe", recipe)), pm(st, "frame_acc"),
                         pm(st, "dev_frame_acc"), pm(st, "wer"), pm(st, "dev_wer"),
                         f"{st['recovered_fraction']:.2f} +- {st['recovered_fraction_std']:.2f}"])
    return [f"Table 1: T {table['T']:g}, alpha {table['alpha']:g}, {n} seed(s) each, mean +- sd "
            "(recipe: the overrides of the teachers' training)", *_markdown(rows)]


def update_experiment(exp_dir: Pathlike, key: str, value: Any) -> None:
    """Store an experiment's table (sweep, 3% data, ...) under ``results["experiments"][key]``."""
    res = load_results(exp_dir)
    res.setdefault("experiments", {})[key] = value
    write_json(res, Path(exp_dir) / "results.json")


# stage 8's default: a student may be this many dev WER points above the best ensemble and still be deployed
DEPLOY_MARGIN = 0.5


def choose_deployable(results: Dict[str, Any], margin: float = DEPLOY_MARGIN) -> Dict[str, Any]:
    """The student to ship: the smallest (fewest parameters) whose DEV WER is within ``margin`` points of the best
    ensemble's dev WER (ties: the lower dev WER, then the name); when none is, the student with the lowest dev
    WER.  Test is never looked at.  Returns ``{"system", "params", "dev_wer", "ensemble", "ensemble_params",
    "ensemble_dev_wer", "params_vs_ensemble", "within_margin", "margin"}``."""
    rows = results.get("systems", [])
    students = [r for r in rows if r.get("kind") == "student" and r.get("dev_wer") is not None]
    ensembles = [r for r in rows if r.get("kind") == "ensemble" and r.get("dev_wer") is not None]
    if not students:
        raise ValueError("no scored student in results.json: run stage 6 (distill) first")
    if not ensembles:
        raise ValueError("no scored ensemble in results.json: run stage 5 (evaluate) first")
    ens = min(ensembles, key=lambda r: (r["dev_wer"], r["params"], r["name"]))
    close = [r for r in students if r["dev_wer"] <= ens["dev_wer"] + margin]
    pick = (min(close, key=lambda r: (r["params"], r["dev_wer"], r["name"])) if close
            else min(students, key=lambda r: (r["dev_wer"], r["params"], r["name"])))
    return {"system": pick["name"], "params": pick["params"], "dev_wer": pick["dev_wer"], "ensemble": ens["name"],
            "ensemble_params": ens["params"], "ensemble_dev_wer": ens["dev_wer"],
            "params_vs_ensemble": round(pick["params"] / ens["params"], 4), "within_margin": bool(close),
            "margin": margin}
