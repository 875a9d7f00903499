"""Kaldi HMM topologies (the text format ``HmmTopology`` reads)."""
from __future__ import annotations

from typing import Sequence

__all__ = ["make_topology"]


def make_topology(silence_ids: Sequence[int], nonsilence_ids: Sequence[int], num_states: int = 3,
                  num_sil_states: int = 5) -> str:
    """Kaldi HMM topology text: left-to-right ``num_states`` states per phone, and Kaldi's silence model whose first
    ``num_sil_states - 1`` states are fully connected (so silence can be short or long)."""
    lines = ["<Topology>", "<TopologyEntry>", "<ForPhones>", " ".join(map(str, nonsilence_ids)), "</ForPhones>"]
    for s in range(num_states):
        lines.append(f"<State> {s} <PdfClass> {s} <Transition> {s} 0.75 <Transition> {s + 1} 0.25 </State>")
    lines += [f"<State> {num_states} </State>", "</TopologyEntry>",
              "<TopologyEntry>", "<ForPhones>", " ".join(map(str, silence_ids)), "</ForPhones>"]
    last = num_sil_states - 1
    p = 1.0 / last
    lines.append("<State> 0 <PdfClass> 0 " + " ".join(f"<Transition> {t} {p:g}" for t in range(last)) + " </State>")
    for s in range(1, last):
        lines.append(f"<State> {s} <PdfClass> {s} "
                     + " ".join(f"<Transition> {t} {p:g}" for t in range(1, num_sil_states)) + " </State>")
    lines.append(f"<State> {last} <PdfClass> {last} <Transition> {last} 0.75 <Transition> {num_sil_states} 0.25 </State>")
    lines += [f"<State> {num_sil_states} </State>", "</TopologyEntry>", "</Topology>"]
    return "\n".join(lines) + "\n"
