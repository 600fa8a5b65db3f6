"""Slow learning run: CartPole-v1 with the zoo hyperparameters reaches 475 within 100k steps."""

from __future__ import annotations

import numpy as np
import pytest

from agents.run.config import load_config
from agents.run.trainer import Trainer

THRESHOLD = 475.0  # CartPole-v1's reward threshold
WINDOW = 20  # training episodes in the moving average (as `textrlhf compare`)


@pytest.mark.slow
def test_cartpole_reaches_475_within_100k_steps(cartpole_yaml):
    cfg = load_config(cartpole_yaml, ["run.progress=false", "seed=1"])
    trainer = Trainer(cfg)
    assert cfg.total_timesteps == 100_000 and trainer.steps_per_iteration == 256
    episodes: list[tuple[int, float]] = []  # (env step at the end of the iteration, return)
    while trainer.iteration < trainer.num_iterations:
        trainer.iterate()
        episodes += [(trainer.global_step, r) for r in trainer.last_episodes.returns]
    # the whole budget is used: 390 iterations of 8 envs x 32 steps
    assert trainer.global_step == 390 * 256 == 99_840
    returns = [r for _, r in episodes]
    reached = next(
        (step for i, (step, _) in enumerate(episodes)
         if i + 1 >= WINDOW and np.mean(returns[i + 1 - WINDOW : i + 1]) >= THRESHOLD),
        None,
    )  # fmt: skip
    # measured (seed 1, ~40 s): the mean of the last 20 training episodes first reaches 475 at
    # step 23,296 (200 at 11,264); the bound leaves about 2x margin
    assert reached is not None and reached <= 50_000, reached
    # measured (seed 1): the last 20 training episodes average 500.0 at the end
    assert np.mean(returns[-WINDOW:]) >= THRESHOLD
    eval_returns = trainer.evaluate(10).returns
    assert len(eval_returns) == 10
    assert np.mean(eval_returns) >= THRESHOLD  # measured (seed 1): 500.0, every episode
