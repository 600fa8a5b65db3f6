"""textrlhf's agent: PPO for any Gymnasium env, MLP or language-model policies.

    from agents import PPO, evaluate_policy
    model = PPO("mlp", "CartPole-v1", seed=1).learn(100_000)

The public names; everything else is the harness behind them (agents.run, agents.core, ...).
"""

from __future__ import annotations

from agents.api import PPO, Run, evaluate_policy, train
from agents.callbacks import BaseCallback
from agents.policies import register_policy
from agents.run.config import Config, load_config

__all__ = [
    "PPO", "BaseCallback", "Config", "Run", "evaluate_policy", "load_config", "register_policy",
    "train",
]  # fmt: skip
