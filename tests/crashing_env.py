"""An env whose process dies at its first reset (no exception: `os._exit`), registered on import
as `crashing_env:CrashOnReset-v0`, for tests of runs whose worker process crashes."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np


class CrashOnReset(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        os._exit(7)  # as a segfault or the OOM killer would end it: no exception, no cleanup


gym.register("CrashOnReset-v0", entry_point=CrashOnReset)
