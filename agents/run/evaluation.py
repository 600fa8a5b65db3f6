"""Evaluation: run a policy for a number of whole episodes on a fresh vector env."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.core.rollout import EnvRunner, EpisodeLog


@torch.no_grad()
def evaluate_policy(
    policy: Any,
    env: Any,
    episodes: int,
    deterministic: bool = True,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> EpisodeLog:
    """Run exactly `episodes` episodes, spread over the env's rows (row i runs its share).

    Returns the env returns and lengths (no KL penalty) and the episodes' infos and samples.
    """
    N = env.num_envs
    quota = np.array([episodes // N + (i < episodes % N) for i in range(N)])  # episodes per row
    counts = np.zeros(N, dtype=np.int64)
    runner, log = EnvRunner(env, policy, device), EpisodeLog()
    runner.reset(seed=seed)
    t = 0
    while (counts < quota).any():
        step = runner.step(log, deterministic, counted=counts < quota, t=t)
        counts += step.terminated | step.truncated
        t += 1
    return log
