"""Run folders: unique names created atomically, names that stay under `run.root`, and a lock so
that one process at a time writes a run.

A run folder is `<run.root>/<name>`: `<config name>-<YYYYmmdd-HHMMSS>` by default (with `-2`,
`-3`, ... appended when that folder exists already: two runs started in the same second get two
folders), or the `--name` given, which must be one plain path component.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import IO, Any


class RunFolderError(RuntimeError):
    """A run folder that cannot be used: bad name, taken, or locked by another process."""


def check_run_name(name: str) -> str:
    """A run name is one path component under run.root: not empty, not '.' or '..', no '/'."""
    separators = {os.sep, os.altsep} - {None}
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or any(s in name for s in separators)
        or "\0" in name
    ):
        raise ValueError(
            f"run name {name!r} must be one folder name under run.root (no '/', not '.' or "
            "'..', not empty)"
        )
    return name


def create_run_dir(root: str | Path, name: str, unique: bool) -> Path:
    """Create `root/name` atomically (mkdir fails if it exists). With `unique`, a taken name
    gets the first free suffix `-2`, `-3`, ...; otherwise a taken name is an error."""
    root = Path(root)
    check_run_name(name)
    if root.exists() and not root.is_dir():
        raise ValueError(f"run.root {str(root)!r} is a file, not a folder; choose a folder")
    root.mkdir(parents=True, exist_ok=True)
    candidates = [name] + ([f"{name}-{k}" for k in range(2, 1000)] if unique else [])
    for candidate in candidates:
        folder = root / candidate
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(
        f"run folder {root / name} already exists; pass --resume {root / name} to continue it or "
        "--overwrite to replace it"
    )


def new_run_dir(cfg: Any, name: str | None = None, overwrite: bool = False) -> Path:
    """A fresh, empty run folder under `cfg.run.root`. `name=None`: `<cfg.name>-<time>` (made
    unique). With `overwrite`, an existing folder `name` is deleted first, unless another process
    holds its lock."""
    root = cfg.run.root
    if name is None:
        return create_run_dir(root, f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}", unique=True)
    folder = Path(root) / check_run_name(name)
    if overwrite and (folder.exists() or folder.is_symlink()):
        check_is_run_folder(folder)  # --overwrite deletes a run, never other files
        with RunLock(folder):  # refuse to delete a run that another process is writing
            pass
        shutil.rmtree(folder)
    return create_run_dir(root, name, unique=False)


def is_run_folder(folder: Path) -> bool:
    """A folder `textrlhf train` wrote: it holds the run's `config.yaml`, or only what a run
    writes before it (`.lock`, `metrics.csv`, TensorBoard events), or nothing. Not a model
    folder of `textrlhf sft|rm` (it has a `.lock` too, but no `config.yaml`)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    entries = [p.name for p in folder.iterdir()]
    return "config.yaml" in entries or all(
        e in (".lock", "metrics.csv") or e.startswith("events.out.tfevents.") for e in entries
    )


def check_is_run_folder(folder: Path) -> None:
    """`--overwrite` deletes `folder`: refuse unless it is a run folder (`is_run_folder`)."""
    if is_run_folder(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        what = f"it is {'a symbolic link' if folder.is_symlink() else 'a file'}"
    else:
        what = f"it holds {sorted(p.name for p in folder.iterdir())[:5]} but no config.yaml"
    raise RunFolderError(
        f"--overwrite refuses to delete {folder}: {what}, so it is not a run folder; remove it "
        "yourself or choose another --name"
    )


class RunLock:
    """An exclusive, non-blocking lock on a run folder (`<run>/.lock`, fcntl.flock), held while a
    process writes the run. The OS releases it when the process ends, even on SIGKILL."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        path = self.folder / ".lock"
        file = open(path, "a+")  # noqa: SIM115  (closed in __exit__)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = file.read().strip() or "another process"
            file.close()
            raise RunFolderError(
                f"run folder {self.folder} is in use by {owner}; wait for it to finish (two "
                "processes writing one run would interleave its logs and checkpoints)"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
