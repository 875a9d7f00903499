"""``EXP/results.json``: one row per system (gmm, teacher, ensemble, baseline, student), printed as a table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .utils import Pathlike, read_json, write_json

__all__ = ["update_results", "update_experiment", "load_results", "format_table", "KINDS"]

KINDS = ("gmm", "teacher", "ensemble", "baseline", "student")


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
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"corpus: {results.get('corpus')}"]
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def update_experiment(exp_dir: Pathlike, key: str, value: Any) -> None:
    """Store an experiment's table (sweep, 3% data, ...) under ``results["experiments"][key]``."""
    res = load_results(exp_dir)
    res.setdefault("experiments", {})[key] = value
    write_json(res, Path(exp_dir) / "results.json")
