"""Small shared helpers: atomic writes, logging set-up, JSON I/O (standard library only: the stand-alone
transcriber imports this too)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["Pathlike", "atomic_path", "atomic_write_text", "write_json", "read_json", "setup_logging"]

Pathlike = Union[str, os.PathLike]


def _fsync(path: str) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a read-only descriptor; nothing to do
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Pathlike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path in the same directory as ``path``; if the block succeeds, flush it to disk (fsync)
    and rename it onto ``path``, so that readers, and a machine that loses power, see the old file or the complete
    new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix(es): Lhotse and numpy pick the format from the file name.
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Pathlike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(obj: Any, path: Pathlike) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Pathlike) -> Any:
    with open(path) as f:
        return json.load(f)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s [%(name)s] %(message)s", datefmt="%H:%M:%S")
