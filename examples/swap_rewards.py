"""The same rollouts scored by different reward functions: swapping the reward is one argument.

python examples/swap_rewards.py
"""

import gymnasium as gym
import numpy as np

import textenv  # noqa: F401  (registers TextRLHF-v0)


def vowel_free(prompt: str, response: str) -> float:
    """A custom per-sample reward: 1 if the response avoids the letters a and e."""
    return float(not set(response) & {"a", "e"})


REWARDS = {
    "edit_distance": "edit_distance",
    "repetition": "repetition",
    "length(target=5)": {"name": "length", "target": 5},
    # reverse task: does the answer start with the word's last letter? ("reverse: abc\n" -> "c...")
    "lambda(1st ok)": lambda prompt, response: float(response[:1] == prompt[-2:-1]),
    "vowel_free": vowel_free,
    "0.7*edit+0.3*len": {
        "weighted_sum": [
            {"name": "edit_distance", "weight": 0.7},
            {"name": "length", "target": 5, "weight": 0.3},
            {"name": "repetition", "weight": 0.0},  # logged only
        ]
    },
}


def rollout(reward_fn, actions: np.ndarray) -> list[dict]:
    """Replay fixed actions (8 rows) with a given reward; return the final infos."""
    venv = gym.make_vec("TextRLHF-v0", num_envs=8, reward_fn=reward_fn, max_new_tokens=8)
    venv.reset(seed=0)
    infos: list[dict] = [{} for _ in range(8)]
    for a in actions:
        _, rewards, terminated, _, info = venv.step(a)
        for i in np.flatnonzero(info.get("_score", [])):
            infos[i] = {"response": info["response"][i], "reward": rewards[i]}
            infos[i]["components"] = {
                k: round(float(v[i]), 3)
                for k, v in info["reward_components"].items()
                if not k.startswith("_")
            }
        if terminated.all():
            break
    return infos


def main() -> None:
    rng = np.random.default_rng(0)
    actions = rng.choice([1, *range(100, 108)], p=[0.2] + [0.1] * 8, size=(8, 8))
    results = {name: rollout(fn, actions) for name, fn in REWARDS.items()}
    names = list(REWARDS)
    responses = [[r["response"] for r in results[n]] for n in names]
    assert all(r == responses[0] for r in responses), "same seed + actions -> same texts"
    print(f"{'response':12s}" + "".join(f"{n:>18s}" for n in names))
    for i in range(8):
        row = "".join(f"{results[n][i]['reward']:18.3f}" for n in names)
        print(f"{results[names[0]][i]['response']!r:12s}{row}")
    print("weighted-sum components of row 0:", results[names[-1]][0]["components"])


if __name__ == "__main__":
    main()
