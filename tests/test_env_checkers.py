"""Gymnasium's and SB3's env checkers pass on TextRLHF-v0 with no warnings."""

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import textenv  # noqa: F401  (registers TextRLHF-v0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"render_mode": "ansi", "prompts": "continuation", "reward_fn": "repetition"},
        {"prompts": "mixed", "max_new_tokens": 4, "max_prompt_tokens": 20},
    ],
)
def test_gymnasium_and_sb3_check_env_pass_without_warnings(kwargs):
    env = gym.make("TextRLHF-v0", **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)
        sb3_check_env(env, warn=True)  # through gym.make's wrappers too
    assert [str(w.message) for w in caught] == []


def test_make_vec_gives_native_vector_env_without_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        venv = gym.make_vec("TextRLHF-v0", num_envs=64)
    assert type(venv).__name__ == "TextRLHFVectorEnv" and venv.num_envs == 64
    assert venv.metadata["autoreset_mode"] == "lockstep"
    assert [str(w.message) for w in caught] == []
    sync = gym.make_vec("TextRLHF-v0", num_envs=2, vectorization_mode="sync")
    assert type(sync).__name__ == "SyncVectorEnv"
