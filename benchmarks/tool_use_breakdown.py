"""Held-out accuracy of calc-tool runs, split by whether the answer used the tool.

    python benchmarks/tool_use_breakdown.py RUN [RUN ...] [--episodes 256]

For each run folder (e.g. the runs of `textrlhf compare configs/text_calc_tool.yaml --seeds 5`),
the latest checkpoint answers the first `--episodes` prompts of the calc task's test split once
each (sampled, temperature as trained); prints the accuracy (exact_answer), the tool-use rate,
and the accuracy of the answers that called the tool and of those that did not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import agents
from textenv import TextRLHFVectorEnv


def breakdown(run: Path, episodes: int, seed: int = 0) -> dict[str, float]:
    model = agents.PPO.load(run)
    policy, kwargs = model.policy, dict(model.cfg.env.kwargs)
    kwargs.update(split="test")
    env = TextRLHFVectorEnv(num_envs=episodes, **kwargs)
    torch.manual_seed(seed)
    obs, _ = env.reset(seed=seed, options={"prompts": list(range(episodes))})
    state = policy.initial_state(episodes)
    score, used = np.zeros(episodes), np.zeros(episodes, dtype=bool)
    done = np.zeros(episodes, dtype=bool)
    with torch.no_grad():
        while not done.all():
            tensors = {k: torch.as_tensor(v) for k, v in obs.items()}
            action, _, _, state = policy.act(tensors, state)
            obs, _, terminated, _, info = env.step(action.numpy())
            rows = np.flatnonzero(info.get("_score", np.zeros(episodes, dtype=bool)))
            if rows.size:
                score[rows] = info["score"][rows]
                used[rows] = info["used_tool"][rows]
            done |= terminated
    return {
        "accuracy": float(score.mean()),
        "tool_use": float(used.mean()),
        "accuracy_with_tool": float(score[used].mean()) if used.any() else float("nan"),
        "accuracy_without_tool": float(score[~used].mean()) if (~used).any() else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=256)
    args = parser.parse_args()
    print("| run | accuracy | tool use | accuracy with the tool | without |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        r = breakdown(run, args.episodes)
        print(f"| {run.name} | {r['accuracy']:.3f} | {r['tool_use']:.3f} "
              f"| {r['accuracy_with_tool']:.3f} | {r['accuracy_without_tool']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
