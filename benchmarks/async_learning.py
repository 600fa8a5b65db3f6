"""The learning table of asynchronous runs (docs/async.md), from their run folders.

    python benchmarks/async_learning.py RUN_DIR [RUN_DIR ...] [--threshold 0.85]

One row per run: its rollout settings, seed, final held-out return (the last evaluation), the
staleness of its updates, and the importance-weight statistics (pi at the start of the update /
the actor's behaviour policy) averaged over its updates, from metrics.csv and summary.json; then
one line per setting: mean ± std over its seeds and how many reach `--threshold`. Training wall
clock is printed too, but only a quiet machine makes it a measurement (benchmarks/async.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

COLUMNS = ("async/staleness_mean", "async/is_weight_mean", "async/is_weight_max", "async/is_ess",
           "async/is_frac_truncated")  # fmt: skip


def run_row(run: Path) -> dict:
    """One run's settings, result and means of the async/ columns over its updates."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    means = {}
    for key in COLUMNS:
        values = [float(r[key]) for r in rows if r.get(key)]
        means[key] = statistics.mean(values) if values else float("nan")
    rollout = cfg.get("rollout", {})
    return {
        "setting": (
            rollout.get("actors", 0),
            rollout.get("max_staleness", 0),
            rollout.get("correction", "none"),
        ),  # fmt: skip
        "seed": cfg["seed"],
        "final": summary.get("final_return"),
        "finished": summary.get("finished"),
        "wall_s": summary.get("wall_time_s"),
        **means,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--threshold", type=float, default=0.85)
    args = parser.parse_args()
    rows = sorted((run_row(r) for r in args.runs), key=lambda r: (r["setting"], r["seed"]))
    print("| actors | max_staleness | correction | seed | held-out | staleness | w mean | "
          "w max | ESS | truncated | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    groups = defaultdict(list)
    for r in rows:
        actors, staleness, correction = r["setting"]
        groups[r["setting"]].append(r["final"])
        print(
            f"| {actors} | {staleness} | {correction} | {r['seed']} | {r['final']:.3f} | "
            f"{r['async/staleness_mean']:.2f} | {r['async/is_weight_mean']:.3f} | "
            f"{r['async/is_weight_max']:.2f} | {r['async/is_ess']:.3f} | "
            f"{r['async/is_frac_truncated']:.4f} | {r['wall_s']:.0f} |"
        )
    print()
    for (actors, staleness, correction), finals in groups.items():
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        hits = sum(f >= args.threshold for f in finals)
        print(f"actors {actors}, max_staleness {staleness}, {correction}: "
              f"{statistics.mean(finals):.3f} ± {std:.3f}, {hits} of {len(finals)} seeds >= "
              f"{args.threshold}")  # fmt: skip


if __name__ == "__main__":
    main()
