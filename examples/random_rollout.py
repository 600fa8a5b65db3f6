"""Quickstart: roll out TextRLHF-v0 with a random policy and print texts and rewards.

    python examples/random_rollout.py

The random policy samples uniformly among the letters "a".."h" and EOS (an action mask on the
Discrete space), so the texts look like answers; any token id in [0, 259) is a valid action.
"""

import gymnasium as gym
import numpy as np

import textenv  # noqa: F401  (registers TextRLHF-v0)


def main() -> None:
    env = gym.make("TextRLHF-v0", prompts="reverse", reward_fn="edit_distance", max_new_tokens=10)
    mask = np.zeros(env.action_space.n, dtype=np.int8)
    mask[[1, *range(100, 108)]] = 1  # EOS (id 1) and the bytes "a".."h" (byte b is id b + 3)
    env.action_space.seed(0)

    print("single env, 5 episodes")
    obs, info = env.reset(seed=0)
    for _ in range(5):
        terminated = truncated = False
        while not (terminated or truncated):
            action = env.action_space.sample(mask=mask)
            obs, reward, terminated, truncated, info = env.step(action)
        print(
            f"  prompt={info['prompt']!r:22} response={info['response']!r:14} "
            f"reference={info['reference']!r:12} reward={reward:.3f}"
        )
        obs, info = env.reset()

    print("vector env, 64 rows in lockstep")
    venv = gym.make_vec("TextRLHF-v0", num_envs=64, max_new_tokens=10)
    rng = np.random.default_rng(0)
    obs, info = venv.reset(seed=0)
    total, done = np.zeros(64), np.zeros(64, dtype=bool)
    while not done.all():
        actions = rng.choice([1, *range(100, 108)], size=64)
        obs, rewards, terminated, truncated, info = venv.step(actions)
        total += rewards
        done = terminated | truncated
    print(f"  mean reward {total.mean():.3f} over 64 episodes (edit-distance similarity in [0, 1])")


if __name__ == "__main__":
    main()
