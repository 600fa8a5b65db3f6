"""Where a text run loses, by reference length: read the training samples (`samples.jsonl`) of
run folders and print, per reference length, the mean score, the share of exact answers, the
share of answers of the right length, and the most common length error.

    python benchmarks/length_breakdown.py runs/RUN [runs/RUN ...] --last 0.2

`--last 0.2`: only the samples of the last fifth of each run's steps (the end of training).
Training prompts, sampled at temperature 1: a diagnosis of the policy's modes, not a held-out
score (that is `eval/score`).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path


def breakdown(run: Path, last: float) -> dict[int, dict[str, float]]:
    """Reference length -> {n, score, exact, right_length, common length error}."""
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines() if line]
    end = max(r["step"] for r in rows)
    rows = [r for r in rows if r["step"] >= (1 - last) * end and r.get("reference") is not None]
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        groups[len(r["reference"])].append(r)
    out = {}
    for n, rs in sorted(groups.items()):
        errors = Counter(len(r["response"]) - n for r in rs if len(r["response"]) != n)
        out[n] = {
            "n": len(rs),
            "score": sum(r["score"] for r in rs) / len(rs),
            "exact": sum(r["response"] == r["reference"] for r in rs) / len(rs),
            "right_length": sum(len(r["response"]) == n for r in rs) / len(rs),
            "length_error": errors.most_common(1)[0][0] if errors else 0,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--last", type=float, default=0.2, help="share of the run's last steps")
    args = parser.parse_args()
    for run in args.runs:
        print(f"\n{run.name} (samples of the last {args.last:.0%} of the steps)")
        print(
            "| length | samples | score | exact | right length | most common length error (of the wrong lengths) |"
        )
        print("|---|---|---|---|---|---|")
        for n, s in breakdown(run, args.last).items():
            print(
                f"| {n} | {s['n']} | {s['score']:.3f} | {s['exact']:.2f} | {s['right_length']:.2f} "
                f"| {s['length_error']:+d} |"
            )


if __name__ == "__main__":
    main()
