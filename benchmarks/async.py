"""Asynchronous rollouts: training wall clock per iteration of 1 learner + 1 actor vs the
synchronous 1-process run vs 2 data-parallel ranks (docs/async.md).

    python benchmarks/async.py [--iterations 12] [--rounds 3] [--staleness 1]
                               [--config configs/text_edit_distance.yaml] [--set KEY=VALUE ...]

Each round runs the same config three ways, one after the other (never concurrently), in
alternating order from round to round:

    sync      textrlhf train CONFIG                              1 process
    async     textrlhf train CONFIG --set rollout.actors=1 ...   learner + actor (torchrun)
    nproc2    textrlhf train CONFIG --nproc 2                    2 data-parallel ranks

Every run trains `--iterations` PPO iterations without evaluations (eval.episodes=0), with one
torch thread per process. The time of an iteration is the step of `time/elapsed` between two
rows of metrics.csv (rank 0's clock: collect + update, and for the learner the wait for its
batch); the first iteration is left out (warm-up: the actor's first rollout has no overlap).
Printed: the median seconds per iteration of each mode over all rounds, the ratio to the
synchronous run (target for async: <= 0.6, and below nproc2's), and for async the mean
`async/learner_idle` and `async/actor_idle` fractions, which explain the ratio: the learner
waits when the rollout is the longer phase, the actor when the update is.

Measure on a quiet machine: other processes on the same cores distort every number.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what torchrun sets for a rank: a benchmark started from inside a job must not inherit them
DISTRIBUTED_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
)  # fmt: skip
MODES = ("sync", "async", "nproc2")


def run_mode(
    mode: str, args: argparse.Namespace, root: Path, name: str
) -> tuple[list[float], dict[str, float]]:
    """Train one run of `mode`; returns its per-iteration seconds (the first left out) and the
    mean of each async/ idle column."""
    from agents.run.config import load_config

    cfg = load_config(args.config, args.set)
    per_iteration = cfg.ppo.n_steps * cfg.env.num_envs
    overrides = [
        f"total_timesteps={per_iteration * args.iterations}", "eval.episodes=0",
        "run.progress=false", "run.checkpoint_every=0", "run.torch_threads=1",
        "run.trajectory_episodes=0", f"run.root={root}", *args.set,
    ]  # fmt: skip
    extra: list[str] = []
    if mode == "async":
        overrides += ["rollout.actors=1", f"rollout.max_staleness={args.staleness}"]
    elif mode == "nproc2":
        extra = ["--nproc", "2"]
    cmd = [sys.executable, "-m", "agents.cli", "train", str(args.config), "--name", name,
           "--set", *overrides, *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    with open(root / name / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("time/elapsed")]
    elapsed = [float(row["time/elapsed"]) for row in rows]
    seconds = [b - a for a, b in zip(elapsed, elapsed[1:])]  # iterations 2..n
    idle = {}
    for key in ("async/learner_idle", "async/actor_idle"):
        values = [float(row[key]) for row in rows[1:] if row.get(key)]
        if values:
            idle[key] = statistics.mean(values)
    return seconds, idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "text_edit_distance.yaml")
    parser.add_argument("--iterations", type=int, default=12, help="PPO iterations per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three modes")
    parser.add_argument("--staleness", type=int, default=1, help="rollout.max_staleness")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.iterations < 2:
        raise SystemExit("--iterations must be >= 2 (the first one is the warm-up)")
    sys.path.insert(0, str(REPO))
    seconds: dict[str, list[float]] = {m: [] for m in args.modes}
    idle: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-async-") as tmp:
        for r in range(args.rounds):
            order = args.modes if r % 2 == 0 else list(reversed(args.modes))
            for mode in order:
                times, fractions = run_mode(mode, args, Path(tmp), f"{mode}-{r}")
                seconds[mode] += times
                for key, value in fractions.items():
                    idle.setdefault(key, []).append(value)
                print(f"round {r + 1} {mode:7s} {statistics.median(times):.3f} s/iteration",
                      flush=True)  # fmt: skip
    base = statistics.median(seconds["sync"]) if "sync" in seconds else None
    print(f"\n{args.config.name}, {args.iterations} iterations x {args.rounds} rounds, "
          f"max_staleness {args.staleness}")  # fmt: skip
    print(f"{'mode':8s} {'s/iteration':>12s} {'vs sync':>8s}")
    for mode in args.modes:
        median = statistics.median(seconds[mode])
        ratio = f"{median / base:.2f}x" if base else "-"
        print(f"{mode:8s} {median:12.3f} {ratio:>8s}")
    for key, values in idle.items():
        print(f"{key}: {statistics.mean(values):.2f} (mean over the async runs' iterations)")


if __name__ == "__main__":
    main()
