"""Atomic file writes: write a temp file next to the target, fsync it, `os.replace` it onto the
target.

A reader never sees a half-written file, and a write that fails (a full disk, a file-size limit,
a crash, Ctrl-C) leaves the old file whole: only the temp file is lost, and it is removed. The
`OSError` names the file being written, not the temp name, so `textrlhf` can say which file it
could not write. Every file the project rewrites goes through here (run folders, summaries,
reports); the checkpoint files have their own writer in `checkpoint.py` (same scheme).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path) -> Path:
    """The temp file for `path`: hidden, in the same folder (so `os.replace` is a rename on one
    file system), with the pid (two processes writing one report do not share it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temp path to write (by any writer: text, bytes, `savefig`); when the block ends
    without an error, the temp file is fsynced and moved onto `path`. On an error the temp file
    is removed, `path` is unchanged, and an `OSError` is re-raised with `path` as its filename."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer closed its own handle; fsync needs one
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # a failed write, or Ctrl-C in the middle of one
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8, newlines as given) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def naming_the_file(path: str | os.PathLike) -> Iterator[None]:
    """Appends cannot be atomic; an `OSError` raised while appending to `path` (the buffered
    write's ENOSPC names no file) is re-raised with `path` as its filename."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
