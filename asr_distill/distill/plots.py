"""Plots of stage 6's experiments (files: no display is needed)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import matplotlib

matplotlib.use("Agg")  # before pyplot: plots are files
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_sweep", "plot_compression", "plot_specialists"]


def _axes():
    return plt.subplots(figsize=(5, 3.5))


def _save(fig, ax, path: Path, **legend) -> None:
    ax.legend(**{"fontsize": 8, **legend})
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(rows: List[dict], path: Path) -> None:
    """Test (solid) and dev (dotted) frame accuracy against T per alpha: dev is what choices are made on, and the
    gap between the two lines shows how much of a difference is noise."""
    fig, ax = _axes()
    for i, a in enumerate(sorted({r["alpha"] for r in rows})):
        pts = sorted((r["T"], r["test_frame_acc"], r["dev_frame_acc"]) for r in rows if r["alpha"] == a)
        color = f"C{i}"
        if a == 0.0:
            ax.axhline(pts[0][1], color="gray", ls="--", label="alpha=0 (hard labels), test")
            ax.axhline(pts[0][2], color="gray", ls=":", label="alpha=0, dev")
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"alpha={a:g}, test")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "s:", color=color, alpha=0.6, label=f"alpha={a:g}, dev")
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 10], ["1", "2", "5", "10"])
    ax.set_xlabel("temperature T")
    ax.set_ylabel("frame accuracy (%)")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 0.45 * (hi - lo), hi)  # room for the legend below the curves
    _save(fig, ax, path, fontsize=7, ncol=2, loc="lower center")


def plot_compression(rows: List[dict], path: Path) -> None:
    rows = sorted(rows, key=lambda r: r["params"])
    fig, ax = _axes()
    ax.plot([r["params"] for r in rows], [r["student_wer"] for r in rows], "o-", label="distilled student")
    ax.plot([r["params"] for r in rows], [r["baseline_wer"] for r in rows], "s--", label="hard-label baseline")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test WER (%)")
    _save(fig, ax, path)


def plot_specialists(levels: List[dict], path: Path) -> None:
    """Test frame accuracy of the generalist alone and with its specialists, by how many specialists cover the
    frame's class (0: none; the paper's gain grows with the coverage)."""
    fig, ax = _axes()
    x = [r["specialists_covering"] for r in levels]
    ax.plot(x, [r["generalist_frame_acc"] for r in levels], "o--", label="generalist")
    ax.plot(x, [r["combined_frame_acc"] for r in levels], "o-", label="generalist + specialists")
    for r in levels:
        ax.annotate(f"{r['frames']}", (r["specialists_covering"], r["combined_frame_acc"]), fontsize=6,
                    textcoords="offset points", xytext=(0, 4), ha="center")
    ax.set_xlabel("specialists covering the frame's class (frames annotated)")
    ax.set_ylabel("test frame accuracy %")
    ax.set_xticks(x)
    _save(fig, ax, path)
