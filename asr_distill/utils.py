"""Small shared helpers: atomic writes, logging set-up, JSON I/O."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["Pathlike", "atomic_path", "write_json", "read_json", "setup_logging", "atomic_torch_save"]

Pathlike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: Pathlike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path in the same directory as ``path``; rename it onto ``path`` only if the block succeeds,
    so readers see the old file or the complete new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix(es): Lhotse and numpy pick the format from the file name.
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(obj: Any, path: Pathlike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def read_json(path: Pathlike) -> Any:
    with open(path) as f:
        return json.load(f)


def atomic_torch_save(obj: Any, path: Pathlike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s [%(name)s] %(message)s", datefmt="%H:%M:%S")
