"""Per-frame arrays carried by the cuts (Lhotse custom fields holding a ``TemporalArray``), so that one manifest
holds features, frame labels and soft targets, and any Lhotse pipeline can read them with
``cut.load_custom(name)`` (or ``cut.load_pdf_ids()``).

* ``pdf_ids`` ``(frames,)`` int32: the GMM alignment's pdf-id of every frame (stage 3);
* ``topk_values`` ``(frames, k)`` float16 and ``topk_indices`` ``(frames, k)`` int16/int32: the ensemble's k most
  probable pdfs of every frame at temperature T (stage 6's top-k cache).

Arrays are stored one ``.npy`` per cut and field (Lhotse's ``NumpyFilesWriter``) under a storage directory that
belongs to the manifest; the manifest is written last, under a temporary name, so it never points to a missing
array.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Tuple

import numpy as np
from lhotse import CutSet
from lhotse.features.io import NumpyFilesWriter

from ..utils import Pathlike, atomic_path, read_json, write_json

__all__ = ["attach_frame_arrays", "FrameArrayError", "check_frames", "write_arrays_meta", "read_arrays_meta"]


class FrameArrayError(ValueError):
    """A per-frame array that does not fit its cut (wrong number of frames)."""


def check_frames(utt_id: str, name: str, array_frames: int, feature_frames: int) -> None:
    """Raise :class:`FrameArrayError` naming the utterance when a per-frame array does not match its features."""
    if array_frames != feature_frames:
        raise FrameArrayError(f"utterance {utt_id}: {name} has {array_frames} frames, the features {feature_frames}")


def attach_frame_arrays(items: Iterable[Tuple[object, Mapping[str, np.ndarray]]], storage_dir: Pathlike,
                        manifest_path: Pathlike) -> int:
    """Store each ``(cut, {field: array})`` pair's arrays (first axis = frames) with the cut and write the cuts to
    ``manifest_path``, one at a time (memory does not grow with the corpus); returns the number of cuts written.

    Every array must have exactly the cut's number of feature frames (checked, naming the cut).  The manifest is
    written under a temporary name and renamed at the end."""
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    writer = NumpyFilesWriter(storage_dir)
    count = 0
    with atomic_path(manifest_path) as tmp, CutSet.open_writer(tmp) as out:
        for cut, fields in items:
            for name, value in fields.items():
                check_frames(cut.id, name, len(value), cut.num_frames)
                # start: where the cut starts in its recording, as its features do (a Kaldi segment, a window of
                # a long file): Lhotse's load_custom() slices a temporal array from the cut's start
                stored = writer.store_array(f"{cut.id}.{name}", np.ascontiguousarray(value),
                                            frame_shift=cut.frame_shift, temporal_dim=0, start=cut.start)
                cut = cut.with_custom(name, stored)
            out.write(cut)
            count += 1
    return count


def _meta_path(manifest_path: Pathlike) -> Path:
    return Path(str(manifest_path).replace(".jsonl.gz", "") + ".json")


def write_arrays_meta(meta: dict, manifest_path: Pathlike) -> None:
    """Settings of a manifest's arrays (e.g. the temperature of soft targets) in a JSON beside it."""
    write_json(meta, _meta_path(manifest_path))


def read_arrays_meta(manifest_path: Pathlike) -> dict:
    return read_json(_meta_path(manifest_path))
