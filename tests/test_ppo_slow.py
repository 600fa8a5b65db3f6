"""Slow learning run: CartPole-v1 with the zoo hyperparameters reaches 475 within 100k steps."""

from __future__ import annotations

import numpy as np
import pytest

from agents.run.config import load_config
from agents.run.trainer import Trainer


@pytest.mark.slow
def test_cartpole_reaches_475_within_100k_steps(cartpole_yaml):
    cfg = load_config(cartpole_yaml, ["run.progress=false", "seed=1"])
    trainer = Trainer(cfg)
    trainer.learn(log=False)
    assert trainer.global_step <= 100_000
    returns = trainer.evaluate(10).returns
    assert len(returns) == 10
    assert np.mean(returns) >= 475
