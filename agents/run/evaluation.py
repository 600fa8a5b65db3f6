"""Evaluation: run a policy for a number of whole episodes on a fresh vector env."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.core.rollout import EnvRunner, EpisodeLog
from agents.run.envs import make_eval_env


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


def run_evaluation(
    policy: Any,
    cfg: Any,
    env: Any = None,
    episodes: int | None = None,
    deterministic: bool | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> EpisodeLog:
    """A run's evaluation: `eval.episodes` episodes on the eval env (`make_eval_env`, or `env`),
    actions as `eval.deterministic`, env and torch seeded with `10_000 + seed` (the same number
    for the trainer and `textrlhf eval`). The torch RNG is forked: evaluating does not change
    the training run."""
    episodes = cfg.eval.episodes if episodes is None else episodes
    deterministic = cfg.eval.deterministic if deterministic is None else deterministic
    seed = 10_000 + cfg.seed if seed is None else seed
    own_env = env is None
    env = make_eval_env(cfg, episodes) if own_env else env
    device = torch.device(device)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return evaluate_policy(policy, env, episodes, deterministic, seed, device)
    finally:
        if own_env:
            env.close()
