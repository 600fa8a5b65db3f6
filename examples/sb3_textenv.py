"""Stable-Baselines3 PPO (MultiInputPolicy) learning on TextRLHF-v0: it is a standard Gymnasium env.

    python examples/sb3_textenv.py [--timesteps 30000]

An MLP over raw token ids is a poor text model, so this is a plumbing demo: on the ``sort`` task
with 6 new tokens it learns within a short run to emit letters instead of random bytes, which
lifts the edit-distance reward well above the random policy's.
"""

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import textenv  # noqa: F401  (registers TextRLHF-v0)

ENV_KWARGS = {"prompts": "sort", "reward_fn": "edit_distance", "max_new_tokens": 6}
SB3_KWARGS = {**ENV_KWARGS, "render_mode": None}  # make_vec_env would ask for 'rgb_array'


def evaluate(model: PPO | None, episodes: int = 200, seed: int = 123) -> float:
    """Mean final reward on held-out (test split) prompts; model None = uniform random policy."""
    env = gym.make("TextRLHF-v0", split="test", **ENV_KWARGS)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    total = 0.0
    for _ in range(episodes):
        done = False
        while not done:
            if model is None:
                action = env.action_space.sample()
            else:
                action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        total += reward
        obs, _ = env.reset()
    return total / episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    venv = make_vec_env("TextRLHF-v0", n_envs=8, seed=args.seed, env_kwargs=SB3_KWARGS)
    model = PPO(
        "MultiInputPolicy", venv, n_steps=128, batch_size=256, n_epochs=4, learning_rate=1e-3,
        ent_coef=0.01, gamma=1.0, seed=args.seed, verbose=0,
    )  # fmt: skip
    print(f"random policy, held-out mean reward: {evaluate(None):.3f}")
    start = time.perf_counter()
    model.learn(total_timesteps=args.timesteps)
    elapsed = time.perf_counter() - start
    print(
        f"PPO after {args.timesteps} steps ({elapsed:.0f} s), held-out mean reward: {evaluate(model):.3f}"
    )
    np.testing.assert_(np.isfinite(evaluate(model, episodes=5)))


if __name__ == "__main__":
    main()
