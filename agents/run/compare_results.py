"""What a comparison records: one result per (config or env, agent, seed) that finished, and the
runs that failed. `compare_sb3.py` and `compare_configs.py` produce them; `compare_report.py`
writes them out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WINDOW = 20  # training episodes in the moving average used for curves and thresholds


@dataclass
class FailedRun:
    """A compared run that did not finish, and why (its error on one line)."""

    label: str  # the config (ours vs ours) or the env id (ours vs SB3)
    seed: int
    error: str
    agent: str = "ours"


class CompareFailed(RuntimeError):
    """Some runs of a comparison failed; the report at `out` has the ones that finished."""

    def __init__(self, out: Path, failed: list[FailedRun], total: int):
        self.out, self.failed = out, failed
        which = "; ".join(f"{f.label} {f.agent} seed {f.seed} ({f.error})" for f in failed)
        super().__init__(
            f"{len(failed)} of {total} runs failed: {which}. {out / 'compare.md'} reports the "
            f"{total - len(failed)} that finished; the same command again retries the failed "
            "runs and reuses the finished ones"
        )


def one_line(err: BaseException, limit: int = 300) -> str:
    """An error as one line for a table cell: its type and message, whitespace collapsed."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class RunResult:
    agent: str
    env_id: str
    seed: int
    final_return: float
    wall_time: float
    steps: int
    episodes: list[tuple[int, float]] = field(default_factory=list)  # (env step, return)
    flattened_obs: bool = False  # SB3 saw the observations through FlattenObservation

    @property
    def sps(self) -> float:
        return self.steps / self.wall_time

    def steps_to(self, threshold: float | None) -> int | None:
        if threshold is None:
            return None
        returns = [r for _, r in self.episodes]
        for i in range(len(returns)):
            if i + 1 >= WINDOW and np.mean(returns[i + 1 - WINDOW : i + 1]) >= threshold:
                return self.episodes[i][0]
        return None


@dataclass
class ConfigRun:
    """One finished `textrlhf train` run of a compared config, read back from its run folder."""

    label: str
    seed: int
    run_dir: str
    initial_return: float | None
    final_return: float
    wall_time: float
    transitions: int
    kl_to_ref: float | None  # at the last iteration
    # periodic evaluations: (seconds since the start, tokens generated so far, eval return)
    curve: list[tuple[float, float, float]] = field(default_factory=list)
    # the last evaluation's reward components (e.g. a learned proxy and a weight-0 gold reward)
    components: dict[str, float] = field(default_factory=dict)
    # the same at the evaluation before training (step 0; empty when the run had none)
    start_components: dict[str, float] = field(default_factory=dict)
    code_version: str | None = None  # recorded by the run (summary.json), None in older runs
