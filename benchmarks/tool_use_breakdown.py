"""Held-out accuracy of calc-tool runs, split by whether the answer used the tool.

    python benchmarks/tool_use_breakdown.py RUN [RUN ...] [--episodes 256]

For each run folder (e.g. the runs of `textrlhf compare configs/text_calc_tool.yaml --seeds 5`),
the latest checkpoint answers the first `--episodes` prompts of the calc task's `--split` once
each (sampled, temperature as trained); prints the accuracy (exact_answer), the tool-use rate,
and the accuracy of the answers that called the tool and of those that did not. A second table
sorts the wrong tool-using answers by what went wrong: the expression copied into the last call
differs from the prompt's (`copy in`), the call was right but the final integer is not its result
(`copy out`), or anything else (no final integer, a tool error).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch

import agents
from textenv import TextRLHFVectorEnv


def breakdown(run: Path, episodes: int, seed: int = 0, split: str = "test") -> dict[str, float]:
    model = agents.PPO.load(run)
    policy, kwargs = model.policy, dict(model.cfg.env.kwargs)
    kwargs.update(split=split)
    env = TextRLHFVectorEnv(num_envs=episodes, **kwargs)
    torch.manual_seed(seed)
    obs, _ = env.reset(seed=seed, options={"prompts": list(range(episodes))})
    state = policy.initial_state(episodes)
    score, used = np.zeros(episodes), np.zeros(episodes, dtype=bool)
    prompts, responses = [""] * episodes, [""] * episodes
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
                for r in rows.tolist():
                    prompts[r], responses[r] = info["prompt"][r], info["response"][r]
            done |= terminated
    wrong = [error_type(p, t) for p, t, s, u in zip(prompts, responses, score, used) if u and s < 1]
    n_used = max(int(used.sum()), 1)
    return {
        "copy_in": wrong.count("copy in") / n_used,
        "copy_out": wrong.count("copy out") / n_used,
        "other": wrong.count("other") / n_used,
        "accuracy": float(score.mean()),
        "tool_use": float(used.mean()),
        "accuracy_with_tool": float(score[used].mean()) if used.any() else float("nan"),
        "accuracy_without_tool": float(score[~used].mean()) if (~used).any() else float("nan"),
    }


CALL = re.compile(r"<calc>(.*?)</calc>=(-?\d+)")


def error_type(prompt: str, response: str) -> str:
    """What went wrong in a wrong tool-using answer: ``copy in`` (the last call's expression is not
    the prompt's), ``copy out`` (the call was right; the answer is not its result) or ``other``."""
    calls = CALL.findall(response)
    if not calls:
        return "other"  # the tool answered "=error", or the call was cut off
    expression, _ = calls[-1]
    if expression.replace(" ", "") != prompt.removeprefix("What is ").removesuffix("?\n"):
        return "copy in"
    return "copy out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--split", default="test", help="the prompts' split (validation to choose)")
    args = parser.parse_args()
    print("| run | accuracy | tool use | accuracy with the tool | without |")
    print("|---|---|---|---|---|")
    rows = []
    for run in args.runs:
        r = breakdown(run, args.episodes, split=args.split)
        print(f"| {run.name} | {r['accuracy']:.3f} | {r['tool_use']:.3f} "
              f"| {r['accuracy_with_tool']:.3f} | {r['accuracy_without_tool']:.3f} |")  # fmt: skip
        rows.append((run.name, r))
    print("\nWrong tool-using answers, as a share of the tool-using answers:\n")
    print("| run | copy in (wrong expression) | copy out (right call, wrong answer) | other |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['copy_in']:.3f} | {r['copy_out']:.3f} | {r['other']:.3f} |")


if __name__ == "__main__":
    main()
