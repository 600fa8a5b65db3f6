"""`textrlhf compare`: our PPO vs Stable-Baselines3's PPO with the same hyperparameters, or our
configs against each other (algorithms, settings, seeds).

**Ours vs SB3** (configs with an MLP policy, which SB3 can run too). For each config and seed,
both agents train for the same `step_budget(cfg)` env steps; each finished training episode is
recorded as (env step, return). The table (`compare.md`) reports the final deterministic eval
return (mean ± std and median over seeds, same eval episodes for both), whether the two means lie
within one SB3 standard deviation of each other, the env steps at which the mean return of the
last 20 training episodes first reached the env's reward threshold, the training wall-clock and
SPS. `compare.png` shows the learning curves (mean and min-max band over seeds). SB3 takes no
Tuple (or nested Dict) observations: for Tuple and Dict observation spaces its envs are wrapped
in Gymnasium's `FlattenObservation`, and the table says so.

**Our configs against each other** (any config SB3 cannot run, e.g. LM policies, or with
`sb3=False`). Each (config, seed) is a full `textrlhf train` run in `<out>/runs/<name>_s<seed>`
(metrics.csv, TensorBoard, checkpoints), `jobs` of them at a time in separate processes.
`compare.md` has the final eval return (the config's own eval: held-out prompts for the text
configs) as mean ± std, median and min over seeds, the start, wall-clock, the KL to the reference
and the tokens (valid env steps) generated, per config and per seed; `compare.png` plots the
periodic eval return against wall-clock and against tokens generated.

**Failures and re-runs.** A run that fails does not stop the others: the report has what finished,
each failed run marked with its error (one line), and `compare` then raises `CompareFailed`
naming the failed runs (`textrlhf compare` exits 1). The same command again reuses what finished:
a run folder whose `summary.json` says `finished: true` and whose config.yaml is the same config
is read back, an unfinished one with a checkpoint is resumed (`--resume`), and a finished run of
another config is refused, never deleted. The SB3 comparison keeps each finished (config, agent,
seed) result in `<out>/results/`, named with a hash of the whole config.

This module chooses between the two (`compare`); compare_sb3.py runs ours vs SB3,
compare_configs.py our configs against each other, compare_report.py writes the reports and
compare_results.py holds what they record. Their public names are importable from here.
"""

from __future__ import annotations

from pathlib import Path

from agents.run.compare_configs import compare_configs, read_run, train_one
from agents.run.compare_report import write_config_report, write_report
from agents.run.compare_results import CompareFailed, ConfigRun, FailedRun, RunResult
from agents.run.compare_sb3 import (
    SB3Adapter,
    compare_with_sb3,
    run_ours,
    run_sb3,
    sb3_model,
)
from agents.run.config import load_config, save_config

# the public names, defined in the compare_* modules (compare_results, compare_sb3,
# compare_configs, compare_report) and importable from here
__all__ = [
    "CompareFailed",
    "ConfigRun",
    "FailedRun",
    "RunResult",
    "SB3Adapter",
    "compare",
    "compare_configs",
    "read_run",
    "run_ours",
    "run_sb3",
    "sb3_model",
    "train_one",
    "write_config_report",
    "write_report",
]


def compare(
    configs: list[str],
    seeds: int,
    out: str | Path,
    overrides: list[str] | None = None,
    thresholds: dict[str, float] | None = None,
    agents: tuple[str, ...] = ("ours", "sb3"),
    jobs: int = 1,
    command: str | None = None,
) -> Path:
    """Run every config (a YAML path or an env id with default settings) for `seeds` seeds:
    ours vs SB3 when `agents` includes "sb3" and every config has an MLP policy (SB3 runs
    those); otherwise our configs against each other (`compare_configs`). Either way a failed
    run does not stop the others: the report has what finished, and `CompareFailed` then names
    the failed runs; a re-run with the same `out` reuses what finished."""
    sources = [s if s.endswith((".yaml", ".yml")) else {"env": {"id": s}} for s in configs]
    sb3_can_run = all(load_config(s, overrides).policy.type == "mlp" for s in sources)
    if "sb3" not in agents or not sb3_can_run:
        paths = [s if isinstance(s, str) else _env_config(s, out) for s in sources]
        return compare_configs(paths, seeds, out, overrides, jobs, command)
    return compare_with_sb3(configs, seeds, Path(out), overrides, thresholds, agents)


def _env_config(data: dict, out: str | Path) -> str:
    """A config file for a bare env id (so that worker processes can load it)."""
    path = Path(out) / f"{data['env']['id'].replace(':', '_').replace('/', '_')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(load_config(data), path)
    return str(path)
