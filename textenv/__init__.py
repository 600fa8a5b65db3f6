"""textenv: text generation as a Gymnasium RL environment (``TextRLHF-v0``).

Public API: ``TextRLHFEnv``, ``TextRLHFVectorEnv``, ``TextEnvArgs`` (their shared arguments),
``PromptDataset``, ``make_task``, ``TASK_NAMES``, ``default_tokenizer``, ``load_tokenizer``,
``make_reward_fn``, ``register_reward``, ``reward_names``, ``encode_for_reward_model``, ``Reward``,
``RewardFunctionError``, ``gold_score`` (the gold rule, reward name ``gold``).
"""

import gymnasium as gym

from textenv.data import PromptDataset, make_dataset
from textenv.env import TextEnvArgs, TextRLHFEnv
from textenv.gold import gold_score
from textenv.rewards import (
    Reward,
    RewardFunction,
    RewardFunctionError,
    encode_for_reward_model,
    make_reward_fn,
    per_sample,
    register_reward,
    reward_names,
)
from textenv.tasks import TASK_NAMES, make_task
from textenv.tokenizer import default_tokenizer, load_tokenizer
from textenv.vector import TextRLHFVectorEnv

ENV_ID = "TextRLHF-v0"

if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="textenv.env:TextRLHFEnv",
        vector_entry_point="textenv.vector:TextRLHFVectorEnv",
    )

__all__ = [
    "ENV_ID",
    "TASK_NAMES",
    "PromptDataset",
    "Reward",
    "RewardFunction",
    "RewardFunctionError",
    "TextEnvArgs",
    "TextRLHFEnv",
    "TextRLHFVectorEnv",
    "default_tokenizer",
    "encode_for_reward_model",
    "gold_score",
    "load_tokenizer",
    "make_dataset",
    "make_reward_fn",
    "make_task",
    "per_sample",
    "register_reward",
    "reward_names",
]
