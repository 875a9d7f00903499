"""OpenFst helpers over kaldifst shared by graph building, decoding and the stand-alone transcriber, and the plain
text tables that travel with a graph (``words.txt``, ``phones.txt``, ``tid2pdf.txt``).

Light on purpose (kaldifst, numpy and the standard library only): :mod:`asr_distill.deploy.transcribe` imports it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable, Sequence

import kaldifst
import numpy as np

from .utils import atomic_write_text

__all__ = ["map_arcs", "map_ilabels_to_epsilon", "add_word_penalty", "read_symbols", "write_symbols",
           "invert_symbols", "read_tid2pdf", "write_tid2pdf"]


def map_arcs(fst, fn: Callable):
    """Copy of ``fst`` with every arc replaced by ``fn(arc)`` (kaldifst has no mutable arc iterator in Python)."""
    out = kaldifst.StdVectorFst()
    for _ in range(fst.num_states):
        out.add_state()
    out.start = fst.start
    for s in range(fst.num_states):
        out.set_final(s, fst.final(s))
        it = kaldifst.ArcIterator(fst, s)
        while not it.done:
            out.add_arc(s, fn(it.value))
            it.next()
    return out


def map_ilabels_to_epsilon(fst, labels: Iterable[int]):
    """Copy of ``fst`` with the given input labels replaced by epsilon (Kaldi's ``fstrmsymbols``)."""
    drop = set(labels)
    return map_arcs(fst, lambda a: kaldifst.StdArc(0 if a.ilabel in drop else a.ilabel, a.olabel, a.weight,
                                                   a.nextstate))


def add_word_penalty(fst, penalty: float):
    """Copy of ``fst`` with ``penalty`` added to the weight of every arc that outputs a word (Kaldi scoring's word
    insertion penalty, in graph-cost units)."""
    return map_arcs(fst, lambda a: a if not a.olabel else kaldifst.StdArc(
        a.ilabel, a.olabel, kaldifst.TropicalWeight(a.weight.value + penalty), a.nextstate))


def read_symbols(path) -> Dict[str, int]:
    """An OpenFst symbol table (``symbol id`` per line, any whitespace): symbol -> id."""
    table: Dict[str, int] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<symbol> <id>', got {line!r}")
        table[fields[0]] = int(fields[1])
    return table


def invert_symbols(table: Dict[str, int]) -> Dict[int, str]:
    return {i: s for s, i in table.items()}


def write_symbols(symbols: Sequence[str], path) -> None:
    atomic_write_text(path, "".join(f"{s} {i}\n" for i, s in enumerate(symbols)))


def read_tid2pdf(path) -> np.ndarray:
    """``tid2pdf[t]`` = pdf of transition-id ``t``; index 0 (no transition-id) maps to pdf 0."""
    pairs = [tuple(int(v) for v in line.split()) for line in Path(path).read_text().splitlines() if line.strip()]
    table = np.zeros(max(t for t, _ in pairs) + 1, dtype=np.int64)
    for t, p in pairs:
        table[t] = p
    return table


def write_tid2pdf(tid2pdf: np.ndarray, path) -> None:
    atomic_write_text(path, "".join(f"{t} {p}\n" for t, p in enumerate(tid2pdf) if t > 0))
