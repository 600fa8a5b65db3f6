"""Files and folders the project writes: atomic replacement with the umask's modes, file hashes.

Every file the project rewrites goes through here (run folders, checkpoints, summaries, reports),
so a reader never sees a half-written file and a failed write (a full disk, a file-size limit, a
crash, Ctrl-C) leaves the old file whole.

- `atomic_file(path)`: a temp name next to `path` to write; after the block the temp file gets the
  mode a plain `open(path, "w")` would give (0o666 minus the umask: safetensors and `mkstemp`
  create 0o600 files, which others sharing a run folder cannot read), is fsynced and replaces
  `path` (`os.replace`). On any exception, a second Ctrl-C included, the temp file is removed and
  `path` keeps its previous content.
- `replace_folder(out, write)`: a whole output folder (a model, an export) is written into a
  temp folder next to `out` and swapped in, so `out` only ever holds one complete model (never
  the old files beside the new ones); a failure leaves the old `out` as it was.
- `file_sha256(path)`: a chunked SHA-256, cached per process by (path, inode, size, mtime): a
  multi-GB base model is hashed once per process, not at every checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (the `os.umask` round
    trip briefly sets it to another value for every thread of the process)."""
    with contextlib.suppress(OSError, ValueError, IndexError):  # not Linux: the round trip below
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode `mkdir` gives a new folder: 0o777 minus the umask."""
    return 0o777 & ~current_umask()


def temp_name(path: Path, suffix: str = ".tmp") -> Path:
    """The temp file for `path`: hidden, in the same folder (so `os.replace` is a rename on one
    file system), with the pid (two processes writing one report do not share it)."""
    return path.with_name(f".{path.name}.{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path next to `path` for the block to write (by any writer: text, bytes,
    safetensors, `savefig`); then give it the umask's mode, fsync it and `os.replace` it onto
    `path`. Any exception (KeyboardInterrupt included) removes the temp file and propagates; `path`
    is then unchanged, and an `OSError` is re-raised with `path` as its filename (the temp name
    would mean nothing to the user)."""
    path = Path(path)
    tmp = temp_name(path, suffix)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:  # the writer closed its own handle; fsync needs one
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # a failed write, or Ctrl-C in the middle of one
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename != str(path):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8, newlines as given) to `path` atomically (`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def naming_the_file(path: str | os.PathLike) -> Iterator[None]:
    """Appends cannot be atomic; an `OSError` raised while appending to `path` (a buffered
    write's ENOSPC names no file) is re-raised with `path` as its filename."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def _settle(folder: Path) -> None:
    """Give every file and folder under `folder` the umask's modes (transformers' safetensors
    files are created 0o600, `mkdtemp` folders 0o700) and fsync the files."""
    os.chmod(folder, folder_mode())
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(Path(root) / name, folder_mode())
        for name in files:
            file = Path(root) / name
            if file.is_symlink():
                continue
            os.chmod(file, file_mode())
            with open(file, "rb+") as f:
                os.fsync(f.fileno())


def replace_folder(out: Path, write: Callable[[Path], T]) -> T:
    """Write the folder `out` as a whole and return what `write` returns.

    `write(tmp)` fills a fresh temp folder `.<name>.<random>.tmp` next to `out`; its files get
    the umask's modes; then the old `out` (if any) is renamed aside, the temp folder is renamed
    to `out` and the old folder is deleted. Any exception before the swap removes the temp folder
    and leaves `out` as it was. Whether `out` may be replaced is the caller's check
    (`agents.run.output_dir.check_output_dir`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        result = write(tmp)
        _settle(tmp)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # best effort: the original error propagates
        raise
    return result


def _swap_in(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing `out` is renamed aside first and deleted after."""
    if not (out.exists() or out.is_symlink()):
        os.rename(new, out)
        return
    # reserve a unique name; renaming a folder onto an empty folder replaces it (POSIX)
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)  # put the previous folder back
        raise
    shutil.rmtree(old)


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (not the whole file in memory at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """`sha256_of(path)`, cached for this process while the file's (inode, size, mtime) stay the
    same: a model folder that several checkpoints pin is read once."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_of(path)
    return _HASHES[key]
