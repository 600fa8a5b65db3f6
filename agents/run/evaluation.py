"""Evaluation: run a policy for a number of whole episodes on a fresh vector env."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.core.rollout import LOCKSTEP, EpisodeLog, _collect_infos, autoreset_mode, obs_to_tensor


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
    mode = autoreset_mode(env)
    log = EpisodeLog()
    ep_return, ep_length = np.zeros(N), np.zeros(N, dtype=np.int64)
    obs, _ = env.reset(seed=seed)
    state = policy.initial_state(N)
    skip = np.zeros(N, dtype=bool)  # rows whose next step is a reset step or that are finished
    while (counts < quota).any():
        action, _, _, state = policy.act(
            obs_to_tensor(obs, device), state, deterministic=deterministic
        )
        action = action.cpu().numpy()
        if hasattr(env.single_action_space, "low"):
            action = np.clip(action, env.single_action_space.low, env.single_action_space.high)
        obs, reward, terminated, truncated, info = env.step(action)
        active = ~skip & (counts < quota)
        ep_return += reward * active
        ep_length += active
        done = (terminated | truncated) & active
        rows = np.flatnonzero(done)
        if len(rows):
            log.returns.extend(ep_return[rows].tolist())
            log.lengths.extend(ep_length[rows].tolist())
            _collect_infos(info.get("final_info", info), rows, log)
            counts[rows] += 1
            ep_return[rows] = 0.0
            ep_length[rows] = 0
        if mode == LOCKSTEP:
            skip |= done
            if skip.all() or (skip | (counts >= quota)).all():
                obs, _ = env.reset()
                state = policy.initial_state(N)
                skip[:] = False
        else:
            skip = done  # NEXT_STEP: the next step resets these rows
            state = policy.reset_state(state, done)
    return log
