"""The Python API (`agents.PPO`, `evaluate_policy`, `train`): SB3's shape over the one Trainer.

Short budgets; the learning check (CartPole to 475 on 3 of 3 seeds) is marked slow.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import CONFIGS
from safetensors.torch import load_file

import agents
from agents import PPO, BaseCallback, evaluate_policy, train
from agents.run import checkpoint as ckpt
from agents.run.config import load_config

FAST = dict(n_epochs=2, seed=3)


def final_weights(folder) -> dict[str, torch.Tensor]:
    """The policy tensors of a run or model folder's latest checkpoint."""
    path = ckpt.latest_checkpoint(folder / "checkpoints")
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return {k: v for k, v in tensors.items() if k.startswith("policy/")}


def test_the_public_names_are_exported_with_docstrings():
    assert sorted(agents.__all__) == sorted(
        ["PPO", "BaseCallback", "Config", "Run", "evaluate_policy", "load_config",
         "register_policy", "train"]
    )  # fmt: skip
    for name in agents.__all__:
        assert getattr(agents, name).__doc__, name


def test_cartpole_learn_predict_evaluate_save_load(tmp_path):
    model = PPO("mlp", "CartPole-v1", **FAST)
    assert model.learn(total_timesteps=512) is model and model.num_timesteps == 512
    mean, std = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=3)
    assert np.isfinite(mean) and std >= 0
    returns, lengths = evaluate_policy(model, "CartPole-v1", 2, return_episode_rewards=True)
    assert len(returns) == len(lengths) == 2
    obs, _ = gym.make("CartPole-v1").reset(seed=0)
    action, state = model.predict(obs, deterministic=True)
    assert state is None and gym.make("CartPole-v1").action_space.contains(action)

    model.save(tmp_path / "model")
    loaded = PPO.load(tmp_path / "model")
    batch = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    assert np.array_equal(model.predict(batch)[0], loaded.predict(batch)[0])
    assert np.array_equal(model.predict(batch, deterministic=False)[0].shape, (1000,))
    with torch.no_grad():
        values = [m.policy.predict_value(torch.from_numpy(batch), None) for m in (model, loaded)]
    assert torch.equal(*values)
    assert loaded.num_timesteps == 512


def test_learn_twice_equals_one_learn_of_the_summed_budget():
    """With no schedule that depends on the budget (constant learning rate and clip range),
    learn(a) then learn(b) ends with the weights of learn(a + b), bit for bit."""
    kwargs = dict(ppo=dict(anneal_lr=False, anneal_clip=False), **FAST)
    once = PPO("mlp", "CartPole-v1", **kwargs).learn(1024)
    twice = PPO("mlp", "CartPole-v1", **kwargs).learn(512).learn(512)
    assert twice.num_timesteps == once.num_timesteps == 1024
    a, b = once.policy.state_dict(), twice.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = once.trainer.ppo.optimizer.state_dict(), twice.trainer.ppo.optimizer.state_dict()
    assert all(torch.equal(oa["state"][i][k], ob["state"][i][k])
               for i in oa["state"] for k in oa["state"][i])  # fmt: skip


def test_the_api_and_the_cli_train_the_same_weights(tmp_path):
    """PPO(...) with a config's values and `textrlhf train` of that config: one training path."""
    from agents.cli import main

    overrides = ["total_timesteps=1024", "ppo.n_epochs=2", "eval.episodes=0", "seed=4",
                 "run.progress=false", f"run.root={tmp_path}"]  # fmt: skip
    assert main(["train", str(CONFIGS / "cartpole.yaml"), "--name", "cli",
                 *[f"--set={o}" for o in overrides]]) == 0  # fmt: skip
    cfg = load_config(CONFIGS / "cartpole.yaml", overrides)
    model = PPO("mlp", "CartPole-v1", n_envs=cfg.env.num_envs, seed=4,
                policy_kwargs=cfg.policy.model_dump(exclude={"type"}),
                ppo=cfg.ppo.model_dump())  # fmt: skip
    model.learn(1024)
    model.save(tmp_path / "api")
    cli, api = final_weights(tmp_path / "cli"), final_weights(tmp_path / "api")
    assert cli.keys() == api.keys() and all(torch.equal(cli[k], api[k]) for k in cli)

    run = train(CONFIGS / "cartpole.yaml", overrides=[*overrides[:-1], f"run.root={tmp_path}/t"])
    assert run.summary["steps"] == 1024 and run.dir.parent == tmp_path / "t"
    again = final_weights(run.dir)
    assert all(torch.equal(cli[k], again[k]) for k in cli)


class Corridor(gym.Env):
    """A user's own, unregistered env with a Dict observation: walk right to the goal."""

    def __init__(self, size: int = 5):
        self.size = size
        self.observation_space = gym.spaces.Dict(
            {"position": gym.spaces.Box(0, size, (1,), np.float32),
             "goal": gym.spaces.Discrete(size + 1)}
        )  # fmt: skip
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self):
        return {"position": np.array([self.pos], np.float32), "goal": self.size}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self._obs(), {}

    def step(self, action):
        self.pos = max(0, self.pos + (1 if action == 1 else -1))
        self.t += 1
        done = self.pos >= self.size
        return self._obs(), float(done), done, self.t >= 20, {}


@pytest.mark.parametrize("given", ["instance", "factory", "vector"])
def test_an_unregistered_env_with_a_dict_observation_trains(given):
    env = {
        "instance": Corridor(),
        "factory": Corridor,
        "vector": gym.vector.SyncVectorEnv([Corridor] * 4),
    }[given]
    model = PPO("mlp", env, n_envs=4, n_steps=32, batch_size=64, seed=0, learning_rate=3e-3)
    model.learn(128 * 12)
    mean, _ = evaluate_policy(model, Corridor(), n_eval_episodes=4)
    assert mean == 1.0  # reaches the goal (a random walk mostly does not, within 20 steps)


def test_a_callback_that_returns_false_stops_with_a_resumable_checkpoint(tmp_path):
    seen = []

    class StopAtThree(BaseCallback):
        def on_rollout_end(self) -> None:
            seen.append("rollout")

        def on_step(self) -> bool:
            seen.append(self.locals["iteration"])
            return self.locals["iteration"] < 3

    model = PPO("mlp", "CartPole-v1", run=dict(root=str(tmp_path)), **FAST)
    model.learn(256 * 8, callback=StopAtThree())
    assert seen == ["rollout", 1, "rollout", 2, "rollout", 3]
    assert model.num_timesteps == 768 and model.summary["interrupted"] is True
    assert model.summary["stop_signal"] == "callback"
    run = model.run_dir
    assert ckpt.read_checkpoint(ckpt.latest_checkpoint(run / "checkpoints"))[0]["step"] == 768
    resumed = train(run / "config.yaml", resume=run)
    assert resumed.summary["steps"] == 2048 and resumed.summary["finished"] is True

    calls = []
    PPO("mlp", "CartPole-v1", **FAST).learn(1024, callback=lambda loc: calls.append(loc) or False)
    assert len(calls) == 1 and "train/policy_loss" in calls[0]["metrics"]


def test_keywords_are_validated_like_a_config():
    with pytest.raises(TypeError, match="'n_epoch'; did you mean 'n_epochs'"):
        PPO("mlp", "CartPole-v1", n_epoch=3)
    with pytest.raises(TypeError, match="SB3's keyword 'use_sde'"):
        PPO("mlp", "CartPole-v1", use_sde=True)
    with pytest.raises(ValueError, match="learning_rate"):
        PPO("mlp", "CartPole-v1", learning_rate=-1.0)
    with pytest.raises(TypeError, match="anneal_lr"):
        PPO("mlp", "CartPole-v1", learning_rate=lambda progress: 1e-3)
    with pytest.raises(TypeError, match="kl= takes a dict"):
        PPO("mlp", "CartPole-v1", kl=0.1)
    with pytest.raises(TypeError, match="cannot be copied"):

        class Uncopyable(Corridor):
            def __deepcopy__(self, memo):
                raise TypeError("no copies")

        PPO("mlp", Uncopyable())


def test_each_policy_type_fills_in_its_own_defaults(gpt2_ctx64_path):
    mlp = load_config({"env": {"id": "CartPole-v1"}})
    assert (mlp.env.num_envs, mlp.ppo.n_epochs, mlp.ppo.gamma, mlp.ppo.batch_size) == (
        8,
        20,
        0.98,
        256,
    )
    lm = load_config({"env": {"id": "textenv:TextRLHF-v0"},
                      "policy": {"type": "lm", "model_path": gpt2_ctx64_path}})  # fmt: skip
    assert (lm.env.num_envs, lm.ppo.n_epochs, lm.ppo.gamma, lm.ppo.max_grad_norm) == (
        128,
        2,
        1.0,
        1.0,
    )
    assert lm.ppo.batch_size == 32 * 32 and lm.ppo.anneal_clip is False
    small = load_config({"env": {"id": "textenv:TextRLHF-v0", "num_envs": 8},
                         "policy": {"type": "lm", "model_path": gpt2_ctx64_path}})  # fmt: skip
    assert small.ppo.batch_size == 32 * 2  # a quarter of the columns per minibatch


def test_an_lm_from_python_learns_generates_and_saves(gpt2_ctx64_path, tmp_path):
    vec = gym.make_vec("TextRLHF-v0", num_envs=8, vectorization_mode="vector_entry_point",
                       prompts="reverse", reward_fn="edit_distance", max_prompt_tokens=20,
                       max_new_tokens=8)  # fmt: skip
    lm = PPO("lm", vec, model_path=gpt2_ctx64_path, learning_rate=1e-3, n_steps=8,
             kl=dict(enabled=True, beta=0.05), seed=1)  # fmt: skip
    assert lm.cfg.ppo.batch_size == 16 and lm.cfg.ppo.n_epochs == 2  # the LM's defaults
    lm.learn(8 * 8 * 2)
    out = lm.generate(["hello\n", "world\n"], deterministic=True)
    assert len(out) == 2 and all(isinstance(text, str) for text in out)
    assert lm.generate(["hello\n", "world\n"], deterministic=True) == out  # greedy: the same
    lm.save(tmp_path / "lm")
    loaded = PPO.load(tmp_path / "lm")
    assert loaded.generate(["hello\n", "world\n"], deterministic=True) == out


@pytest.mark.slow  # ~3 x 20 s
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cartpole_from_python_with_the_defaults_reaches_475(seed):
    """`PPO("mlp", "CartPole-v1")` with nothing else set trains with the MLP's defaults (the
    rl-zoo CartPole hyperparameters) and solves the task within 100k steps."""
    model = PPO("mlp", "CartPole-v1", seed=seed).learn(100_000)
    mean, _ = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=20)
    assert mean >= 475, mean
