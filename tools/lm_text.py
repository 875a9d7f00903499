#!/usr/bin/env python3
"""Plain English text (e.g. Project Gutenberg books) -> LM text as LibriSpeech writes its transcripts: one sentence per
line, upper case, letters and apostrophes only.  Gutenberg headers and footers (outside the ``*** START`` /
``*** END`` markers) and sentences with digits (LibriSpeech spells numbers out) are left out.

    python tools/lm_text.py book1.txt book2.txt > lm_text.txt
    asr-distill lang --exp-dir EXP --lm-text lm_text.txt --lm-order 3
"""
from __future__ import annotations

import re
import sys

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n\s*\n")
_KEEP = re.compile(r"[^A-Z' ]+")


def gutenberg_body(text: str) -> str:
    """The text between Gutenberg's START and END markers (all of it when there are none); several books may be
    concatenated."""
    bodies = re.findall(r"\*\*\*\s*START OF[^\n]*\n(.*?)(?:\*\*\*\s*END OF|\Z)", text, flags=re.S | re.I)
    return "\n\n".join(bodies) if bodies else text


def sentences(text: str):
    for chunk in _SENTENCE_END.split(gutenberg_body(text)):
        if re.search(r"\d", chunk):
            continue
        words = _KEEP.sub(" ", chunk.upper().replace("-", " ")).split()
        words = [w.strip("'") for w in words if w.strip("'")]
        if len(words) >= 2:
            yield " ".join(words)


def main(paths) -> None:
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for s in sentences(f.read()):
                print(s)


if __name__ == "__main__":
    main(sys.argv[1:])
