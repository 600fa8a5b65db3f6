"""The textenv examples run, and SB3's PPO (MultiInputPolicy) trains on TextRLHF-v0."""

import ast
import importlib.util
import pathlib
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import edit_similarity

from textenv import default_tokenizer
from textenv.tokenizer import decode_ids, make_batch_decoder, make_decoder

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_rollout_example(capsys):
    load_example("random_rollout").main()
    out = capsys.readouterr().out
    assert out.count("reward=") == 5 and "mean reward" in out
    # each printed reward is the edit-distance similarity of the printed response and reference
    episodes = re.findall(r"response=('.*?')\s+reference=('.*?')\s+reward=([\d.]+)", out)
    assert len(episodes) == 5
    for response, reference, reward in episodes:
        expected = edit_similarity(ast.literal_eval(response), ast.literal_eval(reference))
        assert float(reward) == pytest.approx(expected, abs=6e-4)  # printed with 3 decimals
    assert max(float(r) for *_, r in episodes) > 0  # measured: 2 of the 5 score above 0


def test_swap_rewards_example(capsys):
    load_example("swap_rewards").main()
    out = capsys.readouterr().out
    assert "edit_distance" in out and "vowel_free" in out and "components" in out
    # the table: one row per response, the same texts scored by six rewards (3 decimals)
    lines = out.splitlines()
    names = lines[0].split()[1:]
    assert names == ["edit_distance", "repetition", "length(target=5)", "lambda(1st", "ok)",
                     "vowel_free", "0.7*edit+0.3*len"]  # fmt: skip
    rows = [line.rsplit(maxsplit=6) for line in lines[1:9]]
    assert len(rows) == 8
    for text, edit, _, length, _, vowel_free, weighted in rows:
        response = ast.literal_eval(text)
        assert float(length) == pytest.approx(-abs(len(response) - 5) / 32, abs=6e-4)
        assert float(vowel_free) == float(not set(response) & {"a", "e"})
        assert float(weighted) == pytest.approx(0.7 * float(edit) + 0.3 * float(length), abs=2e-3)
    assert len({float(row[1]) for row in rows}) > 2  # not vacuous: edit distances differ


def test_sb3_ppo_multiinput_runs_on_textenv():
    sb3 = load_example("sb3_textenv")
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("TextRLHF-v0", n_envs=2, seed=0, env_kwargs=sb3.SB3_KWARGS)
    model = PPO("MultiInputPolicy", venv, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    start = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64
    assert all(not torch.equal(p, s) for p, s in zip(model.policy.parameters(), start))
    mean_reward = sb3.evaluate(model, episodes=20)
    # the same 20 held-out episodes replayed, each response scored by an independent Levenshtein
    env = gym.make("TextRLHF-v0", split="test", **sb3.ENV_KWARGS)
    obs, _ = env.reset(seed=123)
    scores = []
    for _ in range(20):
        terminated = False
        while not terminated:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, _, info = env.step(action)
        assert reward == pytest.approx(edit_similarity(info["response"], info["reference"]))
        scores.append(reward)
        obs, _ = env.reset()
    assert mean_reward == pytest.approx(np.mean(scores), abs=1e-12)
    assert max(scores) > 0  # not vacuous: measured 2 of the 20 episodes score above 0


@pytest.mark.slow
def test_sb3_ppo_learns_above_random():
    sb3 = load_example("sb3_textenv")
    random_reward = sb3.evaluate(None)
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("TextRLHF-v0", n_envs=8, seed=0, env_kwargs=sb3.SB3_KWARGS)
    model = PPO("MultiInputPolicy", venv, n_steps=128, batch_size=256, n_epochs=4,
                learning_rate=1e-3, ent_coef=0.01, gamma=1.0, seed=0)  # fmt: skip
    model.learn(total_timesteps=30000)
    assert sb3.evaluate(model) > random_reward + 0.1


def test_fast_byte_decoders_match_tokenizer_decode():
    tok = default_tokenizer()
    decode, decode_batch = make_decoder(tok), make_batch_decoder(tok)
    rng = np.random.default_rng(0)
    for k in range(300):
        low = 0 if k % 2 else 3  # with and without special ids inside the texts
        ids = rng.choice([*range(low, 3), 35, 100, 101, 200, 230, 150, 13, 195, 226], size=(4, 12))
        lengths = rng.integers(0, 13, size=4)
        expected = [decode_ids(tok, ids[i, : lengths[i]]) for i in range(4)]
        assert decode_batch(ids, lengths) == expected
        assert [decode(ids[i, : lengths[i]]) for i in range(4)] == expected
    assert decode(np.array([107, 108, 1, 0])) == "hi"


def test_env_step_benchmark_runs(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(
        "env_step", EXAMPLES.parent / "benchmarks" / "env_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(
        "sys.argv", ["env_step.py", "--steps", "300", "--vector-steps", "40", "--no-lm"]
    )
    threads = torch.get_num_threads()
    try:
        module.main()  # sets torch.set_num_threads(1)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.count("episodes env") == 4 and "ratio" in out
    # the env and the numpy loop saw the same episodes
    for line in out.splitlines():
        if "episodes env" in line:
            env_eps, numpy_eps = line.split("episodes env ")[1].rstrip(")").split(", numpy ")
            assert env_eps == numpy_eps
