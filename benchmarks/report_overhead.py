"""What the update diagnostics and the trajectory log cost, and how large the main job's report is.

    python benchmarks/report_overhead.py [--rounds 6] [--per-round 2] [--short-iterations 8]

1. Cost: three Trainers of configs/text_edit_distance.yaml (the same seed, so the same
   iterations: the diagnostics do not change training) run in alternating rounds in this one
   process: `run.diagnostics: false` (off), `true` (on), and `true` with trajectory records
   built at EVERY iteration (on+traj, the worst case; a run builds them at about 50 iterations
   of 400). Each round times `--per-round` iterations of each, each configuration first in
   turn. Prints the seconds, the ratios to off (total, and the median of the rounds' ratios;
   the load of other processes hits all alike), and the seconds spent in the diagnostics' own
   code (`update_diagnostics`, `FirstEpoch.add`) and in building trajectory records, timed
   directly inside the iterations, as a fraction of an iteration.
2. Size: a short run of the main job (`--short-iterations` iterations, evaluations at the
   start and the end, 32 evaluation episodes), then its report.html. Then the size of the
   report of the whole 400-iteration run, estimated by writing a report from that run folder
   with its metrics rows and trajectory records repeated to the counts a whole run logs (400
   rows; 51 logged iterations and 14 evaluations of 4 episodes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.core.diagnostics import FirstEpoch  # noqa: E402
from agents.run import trainer as trainer_module  # noqa: E402
from agents.run.config import load_config  # noqa: E402
from agents.run.report import write_report  # noqa: E402
from agents.run.trainer import Trainer, train  # noqa: E402

CONFIG = REPO / "configs" / "text_edit_distance.yaml"


def timed(owner: object, name: str, spent: dict[str, float]) -> None:
    """Wrap `owner.name` so that the seconds spent in it add up in `spent[name]`."""
    function = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def cost(rounds: int, per_round: int) -> None:
    trainers = {}
    for name, diagnostics in (("off", False), ("on", True), ("on+traj", True)):
        cfg = load_config(CONFIG, [
            "run.progress=false", f"run.diagnostics={diagnostics}", "run.trajectory_every=1",
        ])  # fmt: skip
        trainer = Trainer(cfg)
        trainer.log_trajectories = name == "on+traj"  # records built, not written (no logger)
        trainer.iterate()  # warm-up (not timed)
        trainers[name] = trainer
    # the diagnostics' and the trajectory log's own code, timed directly inside the iterations
    spent = dict.fromkeys(("update_diagnostics", "add", "trajectory_records"), 0.0)
    timed(trainer_module, "update_diagnostics", spent)
    timed(trainer_module, "trajectory_records", spent)
    timed(FirstEpoch, "add", spent)
    seconds = dict.fromkeys(trainers, 0.0)
    ratios: dict[str, list[float]] = {"on": [], "on+traj": []}
    for r in range(rounds):
        names = list(trainers)
        names = names[r % 3 :] + names[: r % 3]  # each configuration first in turn
        this = {}
        for name in names:
            start = time.perf_counter()
            for _ in range(per_round):
                trainers[name].iterate()
            this[name] = time.perf_counter() - start
            seconds[name] += this[name]
        for name in ratios:
            ratios[name].append(this[name] / this["off"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in this.items()))
    n = rounds * per_round
    for name, total in seconds.items():
        print(f"{name}: {total:.2f} s for {n} iterations ({total / n:.3f} s each), "
              f"{total / seconds['off']:.4f}x of off in total")  # fmt: skip
    for name, values in ratios.items():
        print(f"{name} / off, median of {rounds} rounds: {statistics.median(values):.4f}")
    per_iteration = seconds["on"] / n
    diag = spent["update_diagnostics"] + spent["add"]
    iterations = 2 * n  # "on" and "on+traj" both compute the diagnostics
    print(f"diagnostics code (update_diagnostics + FirstEpoch.add): {1e3 * diag / iterations:.2f} "
          f"ms an iteration, {diag / iterations / per_iteration:.2%} of an iteration")  # fmt: skip
    traj = spent["trajectory_records"] / n
    print(
        f"trajectory records (4 episodes): {1e3 * traj:.2f} ms each time, "
        f"{traj / per_iteration:.2%} of an iteration (built at ~1 of 8 iterations in a run)"
    )
    for trainer in trainers.values():
        trainer.close()


def size(short_iterations: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        steps = short_iterations * 128 * 32
        cfg = load_config(CONFIG, [
            f"run.root={tmp}", f"total_timesteps={steps}", f"eval.every={steps}",
            "eval.episodes=32", "run.progress=false", "run.checkpoint_every=0",
        ])  # fmt: skip
        run = train(cfg, name="short")
        report = run / "report.html"
        print(f"short run, {short_iterations} iterations: report.html {report.stat().st_size:,} "
              f"bytes, trajectories.jsonl {(run / 'trajectories.jsonl').stat().st_size:,} bytes, "
              f"metrics.csv {(run / 'metrics.csv').stat().st_size:,} bytes")  # fmt: skip
        # the whole run's counts: 400 metric rows (+ the initial evaluation's), 51 logged
        # iterations and 14 evaluations of 4 episodes
        whole = Path(tmp) / "whole"
        shutil.copytree(run, whole)
        lines = (run / "metrics.csv").read_text().splitlines()
        rows = [line for line in lines[1:] if not line.startswith("0,")]
        (whole / "metrics.csv").write_text(
            "\n".join([lines[0]] + [rows[i % len(rows)] for i in range(400)]) + "\n"
        )
        records = [json.loads(x) for x in (run / "trajectories.jsonl").read_text().splitlines()]
        train_records = [r for r in records if r["split"] == "train"]
        eval_records = [r for r in records if r["split"] == "eval"]
        out = [train_records[i % len(train_records)] for i in range(51 * 4)]
        out += [eval_records[i % len(eval_records)] for i in range(14 * 4)]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
        (whole / "trajectories.jsonl").write_text(text)
        page = write_report([whole])
        print(f"whole run (estimated): report.html {page.stat().st_size:,} bytes, "
              f"trajectories.jsonl {len(text.encode()):,} bytes ({len(out)} episodes)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=2)
    parser.add_argument("--short-iterations", type=int, default=8)
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.skip_cost:
        cost(args.rounds, args.per_round)
    size(args.short_iterations)


if __name__ == "__main__":
    main()
