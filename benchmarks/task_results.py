"""Write a results page (README.md) from `textrlhf compare` output folders: for each config, the
held-out score of the SFT start (the run's first evaluation, before any update) and after
training, per seed, with the gain, mean ± std, and each run's training time.

    python benchmarks/task_results.py --title "..." --command "textrlhf compare ..." \
        --out docs/results/rg COMPARE_FOLDER [COMPARE_FOLDER ...]

Copies each folder's compare.md / compare.json / compare.png next to the page (as
`<folder name>/`), and stamps the code version (`git describe --always --dirty`).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from agents.run.provenance import provenance_line


def step0_return(run: Path) -> float | None:
    """The run's evaluation at step 0 (its start) as logged in metrics.csv, or None."""
    with (run / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("step") == "0" and row.get("eval/return"):
                return float(row["eval/return"])
    return None


def runs_of(folder: Path) -> dict[str, list[dict]]:
    """config name -> its runs' summaries, in seed order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for summary in sorted(folder.glob("runs/*/summary.json")):
        name, _, seed = summary.parent.name.rpartition("_s")
        data = json.loads(summary.read_text())
        data["seed"] = int(seed)
        if data.get("initial_return") is None:  # resumed before 2026-12-08: from metrics.csv
            data["initial_return"] = step0_return(summary.parent)
        groups[name].append(data)
    for runs in groups.values():
        runs.sort(key=lambda r: r["seed"])
    return groups


def table(groups: dict[str, list[dict]]) -> list[str]:
    lines = [
        "| config | seeds | SFT start (held out) | after training | gain per seed | gain | runs finished | training time per run |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, runs in groups.items():
        done = [r for r in runs if r.get("finished") and r.get("initial_return") is not None]
        start = np.array([r["initial_return"] for r in done])
        end = np.array([r["final_return"] for r in done])
        gain = end - start
        seconds = [r["wall_time_s"] for r in done]
        lines.append(
            f"| `{name}` | {', '.join(str(r['seed']) for r in done)} "
            f"| {start.mean():.3f} ± {start.std():.3f} | **{end.mean():.3f} ± {end.std():.3f}** "
            f"| {' / '.join(f'{g:+.3f}' for g in gain)} | **{gain.mean():+.3f} ± {gain.std():.3f}** "
            f"(min {gain.min():+.3f}) | {len(done)} of {len(runs)} "
            f"| {min(seconds):.0f}-{max(seconds):.0f} s |"
        )
    return lines


def turns_table(groups: dict[str, list[dict]]) -> list[str]:
    """Two-turn runs: the held-out first- and second-turn scores (`eval/score_turn1`, `_turn2`)
    of the SFT start and after training, and the second turn's lead over the first per seed."""
    lines = [
        "| config | seeds | start: turn 1 / turn 2 | after: turn 1 | after: turn 2 | turn 2 - turn 1 per seed | turn 2 - turn 1 |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, runs in groups.items():
        done = [r for r in runs if r.get("finished") and r.get("final_eval_metrics")]
        if not done or "eval/score_turn2" not in done[0]["final_eval_metrics"]:
            continue

        def turn(r: dict, when: str, t: int) -> float:
            return r[f"{when}_eval_metrics"][f"eval/score_turn{t}"]

        s1, s2 = (np.array([turn(r, "initial", t) for r in done]) for t in (1, 2))
        e1, e2 = (np.array([turn(r, "final", t) for r in done]) for t in (1, 2))
        lead = e2 - e1
        lines.append(
            f"| `{name}` | {', '.join(str(r['seed']) for r in done)} "
            f"| {s1.mean():.3f} / {s2.mean():.3f} | {e1.mean():.3f} ± {e1.std():.3f} "
            f"| {e2.mean():.3f} ± {e2.std():.3f} | {' / '.join(f'{g:+.3f}' for g in lead)} "
            f"| **{lead.mean():+.3f} ± {lead.std():.3f}** (min {lead.min():+.3f}) |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", required=True)
    parser.add_argument("--command", required=True, help="the command that made the folders")
    parser.add_argument("--notes", default="", help="a paragraph under the table (Markdown)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict]] = {}
    for folder in args.folders:
        groups.update(runs_of(folder))
        keep = args.out / folder.name
        keep.mkdir(exist_ok=True)
        for name in ("compare.md", "compare.json", "compare.png"):
            if (folder / name).exists():
                shutil.copy(folder / name, keep / name)
    page = [
        f"# {args.title}",
        "",
        f"{provenance_line(r.get('code_version') for runs in groups.values() for r in runs)} "
        "Written by `benchmarks/task_results.py` from the run folders of:",
        "",
        "```bash",
        args.command,
        "```",
        "",
        "The held-out score is `eval/return`: the mean episode score on the `test` split",
        "(sampled, temperature 1). The SFT start is each run's first evaluation, before any",
        "update. Mean ± std (population) over the seeds. Training times come from a 2-core",
        "machine shared with other jobs: they bound the budget, they are not speed results.",
        "",
        *table(groups),
        "",
    ]
    turns = turns_table(groups)
    if len(turns) > 2:
        page += [
            "Two-turn configs: the held-out score of each turn (`eval/score_turn1`,",
            "`eval/score_turn2`; the return above is their sum when each turn is paid).",
            "",
            *turns,
            "",
        ]
    if args.notes:
        page += [args.notes, ""]
    (args.out / "README.md").write_text("\n".join(page))
    print("\n".join(page))


if __name__ == "__main__":
    main()
