"""Envs for the asynchronous-run tests (test_async.py), registered on import as
`async_envs:<Id>`: the test's subprocesses import them by that name."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

FAIL_AT_BATCH = 3  # 1-based: the third rollout


class RaisesInRollout(CartPoleEnv):
    """CartPole that raises during the third rollout of a run with ppo.n_steps = `n_steps`.
    Only the actor steps the training env (the learner builds it and never steps it), so it is
    the actor that raises."""

    def __init__(self, n_steps: int = 8, **kwargs: Any):
        super().__init__(**kwargs)
        self.limit = n_steps * (FAIL_AT_BATCH - 1)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps > self.limit:
            raise RuntimeError(f"the env fails on purpose in rollout {FAIL_AT_BATCH}")
        return super().step(action)


gym.register("RaisesInRollout-v0", entry_point=RaisesInRollout, max_episode_steps=500)
