"""What every RLHF stage command (`textrlhf sft`, `textrlhf rm`) does around its own work:
config -> output-folder check -> threads and seed -> run -> summary JSON in the output folder."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from agents.run.config import Section, Seed, Threads, check_output_dir, load_config
from agents.run.rundir import RunLock

S = TypeVar("S", bound="StageConfig")
REPO_ROOT = Path(__file__).resolve().parents[2]


class StageConfig(Section):
    """Fields every stage config has. `output_dir` is relative to the working directory."""

    summary_file: ClassVar[str] = "summary.json"  # written into the output folder
    name: str
    seed: Seed = 0
    output_dir: str
    torch_threads: Threads = 1

    def output_path(self) -> Path:
        return Path(self.output_dir)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file, fsync, os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_stage(
    cls: type[S],
    config_path: str | os.PathLike | None,
    overrides: list[str] | None,
    overwrite: bool,
    work: Callable[[S, Path], dict[str, Any]],
) -> Path:
    """Load `cls` from YAML + overrides, refuse an existing output folder unless `overwrite`
    (before any work), set torch threads and seed, run `work(cfg, out)` (which writes the
    model into `out`) and write its summary (with the config) to `out/cls.summary_file`."""
    cfg = load_config(config_path, overrides, cls=cls)
    out = check_output_dir(cfg.output_path(), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):  # one process writes an output folder at a time
        torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        summary = work(cfg, out)
        write_json(out / cls.summary_file, {"config": cfg.model_dump(mode="json"), **summary})
    print(f"saved {out}")
    return out


def optimizer_step(
    model: torch.nn.Module, optimizer: Any, schedule: Any, loss: torch.Tensor, max_grad_norm: float
) -> None:
    """One supervised step of a stage: backward, clip the global gradient norm, step, schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
