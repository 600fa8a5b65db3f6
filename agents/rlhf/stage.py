"""What every RLHF stage command (`textrlhf sft`, `textrlhf rm`) does around its own work:
config -> output-folder check -> threads and seed -> run -> summary JSON in the output folder."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import Field

from agents.run.config import load_config
from agents.run.config_types import Section, Seed, Threads
from agents.run.files import atomic_write_text, replace_folder
from agents.run.output_dir import check_output_dir
from agents.run.rundir import RunLock

S = TypeVar("S", bound="StageConfig")
REPO_ROOT = Path(__file__).resolve().parents[2]


class StageConfig(Section):
    """Fields every stage config has. `output_dir` is relative to the working directory."""

    summary_file: ClassVar[str] = "summary.json"  # written into the output folder
    name: str = Field(description="The stage's name (printed, and recorded in its summary).")
    seed: Seed = Field(0, description="Seeds the data, the initialization and sampling.")
    output_dir: str = Field(description="The folder the stage writes its model into.")
    torch_threads: Threads = Field(1, description="torch's intra-op threads.")

    def output_path(self) -> Path:
        return Path(self.output_dir)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file, fsync, os.replace; a failed write leaves no temp file
    and names `path`)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def run_stage(
    cls: type[S],
    config_path: str | os.PathLike | None,
    overrides: list[str] | None,
    overwrite: bool,
    work: Callable[[S, Path], dict[str, Any]],
) -> Path:
    """Load `cls` from YAML + overrides, refuse an existing output folder unless `overwrite`
    (before any work), set torch threads and seed, run `work(cfg, folder)` (which writes the
    model into `folder`) and write its summary (with the config) to `folder/cls.summary_file`.

    `folder` is a temp folder next to the output folder, swapped in when everything is written
    (`replace_folder`): an existing model is replaced as a whole, never mixed with the new
    files, and a failed or interrupted stage leaves it as it was."""
    cfg = load_config(config_path, overrides, cls=cls)
    out = check_output_dir(cfg.output_path(), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):  # one process writes an output folder at a time

        def write(folder: Path) -> None:
            torch.set_num_threads(cfg.torch_threads)
            torch.manual_seed(cfg.seed)
            summary = work(cfg, folder)
            summary = {"config": cfg.model_dump(mode="json"), **summary}
            write_json(folder / cls.summary_file, summary)

        replace_folder(out, write)
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
