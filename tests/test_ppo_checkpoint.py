"""Checkpoints: round trip, bit-exact resume, corrupted / mismatched files, NaN loss."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.core.ppo import NonFiniteLossError
from agents.core.rollout import EnvRunner, EpisodeLog
from agents.policies import make_policy
from agents.run import checkpoint as ckpt
from agents.run.config import load_config
from agents.run.trainer import Trainer, new_run_dir

SMALL = ["run.progress=false", "total_timesteps=4096", "ppo.n_epochs=2", "eval.episodes=2"]


def small_cfg(cartpole_yaml, tmp_path, *extra):
    return load_config(cartpole_yaml, [*SMALL, f"run.root={tmp_path}", *extra])


def metrics_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_save_load_predict_round_trip_is_identical(cartpole_yaml, tmp_path):
    cfg = small_cfg(cartpole_yaml, tmp_path, "total_timesteps=1024")
    trainer = Trainer(cfg, new_run_dir(cfg, "a"))
    trainer.learn()
    path = ckpt.latest_checkpoint(trainer.run_dir / "checkpoints")
    _, tensors = ckpt.read_checkpoint(path)
    env = trainer.env
    fresh = make_policy(cfg.policy, env.single_observation_space, env.single_action_space)
    obs = torch.randn(64, 4)
    assert not torch.equal(fresh.predict_value(obs, None), trainer.policy.predict_value(obs, None))
    ckpt.load_policy_weights(fresh, tensors, path)
    for a, b in zip(fresh.act(obs, None, True)[:3], trainer.policy.act(obs, None, True)[:3]):
        assert torch.equal(a, b)
    assert torch.equal(fresh.predict_value(obs, None), trainer.policy.predict_value(obs, None))


def test_resume_after_half_equals_an_uninterrupted_run_bit_for_bit(cartpole_yaml, tmp_path):
    cfg = small_cfg(cartpole_yaml, tmp_path)
    full = Trainer(cfg, new_run_dir(cfg, "full"))
    full.learn()

    half = Trainer(cfg, new_run_dir(cfg, "half"))
    half.learn(stop_at=2048)
    assert half.global_step == 2048
    torch.manual_seed(123)  # garbage RNG state between the two processes' halves
    np.random.seed(123)
    resumed = Trainer(cfg, half.run_dir, resume=True)
    assert resumed.global_step == 2048
    resumed.learn()

    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = full.ppo.optimizer.state_dict()["state"], resumed.ppo.optimizer.state_dict()["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    assert metrics_rows(full.run_dir) == metrics_rows(half.run_dir)
    sa = json.loads((full.run_dir / "summary.json").read_text())
    sb = json.loads((half.run_dir / "summary.json").read_text())
    assert sa["final_return"] == sb["final_return"] and sa["steps"] == sb["steps"] == 4096


def test_truncated_checkpoint_raises_an_error_naming_the_file(cartpole_yaml, tmp_path):
    cfg = small_cfg(cartpole_yaml, tmp_path, "total_timesteps=512")
    trainer = Trainer(cfg, new_run_dir(cfg, "t"))
    trainer.learn()
    path = ckpt.latest_checkpoint(trainer.run_dir / "checkpoints")
    weights = path.with_suffix(".safetensors")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=rf"{weights.name}.*truncated or corrupted"):
        ckpt.read_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match=weights.name):
        Trainer(cfg, trainer.run_dir, resume=True)
    path.write_text(path.read_text()[:50])
    with pytest.raises(ckpt.CheckpointError, match=rf"{path.name} is truncated"):
        ckpt.read_checkpoint(path)


def test_mismatched_checkpoint_names_the_file_and_the_mismatch(cartpole_yaml, tmp_path):
    cfg = small_cfg(cartpole_yaml, tmp_path, "total_timesteps=512")
    trainer = Trainer(cfg, new_run_dir(cfg, "m"))
    trainer.learn()
    path = ckpt.latest_checkpoint(trainer.run_dir / "checkpoints")
    _, tensors = ckpt.read_checkpoint(path)
    env = trainer.env
    other = make_policy(
        load_config(cartpole_yaml, ["policy.hidden_sizes=[32, 32]"]).policy,
        env.single_observation_space,
        env.single_action_space,
    )
    with pytest.raises(ckpt.CheckpointError, match=rf"{path.name}.*'actor.0.weight' has shape"):
        ckpt.load_policy_weights(other, tensors, path)
    wider = small_cfg(cartpole_yaml, tmp_path, "total_timesteps=512", "policy.hidden_sizes=[32]")
    with pytest.raises(
        ckpt.CheckpointError,
        match=rf"{path.name} does not match the config: policy.hidden_sizes: \[64, 64\] in the "
        r"checkpoint, \[32\] in the config$",
    ):
        Trainer(wider, trainer.run_dir, resume=True)
    # settings that shape the run are refused, with both values; run.* and eval.* may change
    for changed in ("ppo.learning_rate=0.01", "kl.enabled=true", "seed=7"):
        other_cfg = small_cfg(cartpole_yaml, tmp_path, "total_timesteps=512", changed)
        with pytest.raises(ckpt.CheckpointError, match=rf"{changed.split('=')[0]}: .* in the"):
            Trainer(other_cfg, trainer.run_dir, resume=True)
    ok = small_cfg(cartpole_yaml, tmp_path, "total_timesteps=512", "eval.episodes=3")
    assert Trainer(ok, trainer.run_dir, resume=True).global_step == 512


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(cartpole_yaml, tmp_path):
    cfg = small_cfg(cartpole_yaml, tmp_path, "run.checkpoint_every=512")
    trainer = Trainer(cfg, new_run_dir(cfg, "nan"))
    compute_gae = trainer.buffer.compute_gae

    def poisoned(gamma, lam):  # from the 4th iteration on, the rewards are NaN
        if trainer.iteration >= 3:
            trainer.buffer.rewards[0, 0] = float("nan")
        compute_gae(gamma, lam)

    trainer.buffer.compute_gae = poisoned
    with pytest.raises(NonFiniteLossError, match="non-finite loss or gradient at iteration 3"):
        trainer.learn()
    # checked before every optimizer step: the weights in memory never saw the NaN either
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    path = ckpt.latest_checkpoint(trainer.run_dir / "checkpoints")
    meta, tensors = ckpt.read_checkpoint(path)
    assert meta["global_step"] == 512  # the last checkpoint before the NaN (every 512 steps)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("policy/"))


def test_the_policy_sees_one_observation_layout_before_and_after_a_resume(cartpole_yaml):
    """CartPoleVectorEnv returns the transpose of its (4, N) state, while a checkpoint stores
    the observation C-contiguous. A matmul over a transposed input can round differently: resumed
    runs drifted from uninterrupted ones in the last bits (seen at 2 ranks, step 43,520 of
    configs/cartpole.yaml). The runner hands the policy C-contiguous observations either way."""
    cfg = load_config(cartpole_yaml)
    env = gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="vector_entry_point")
    policy = make_policy(cfg.policy, env.single_observation_space, env.single_action_space)
    seen = []

    class Spy:
        def __getattr__(self, name):
            return getattr(policy, name)

        def act(self, obs, state, deterministic=False):
            seen.append((obs.clone(), obs.stride(), policy.act(obs, state, True)))
            return seen[-1][2]

    runner = EnvRunner(env, Spy())
    runner.reset(seed=3)
    assert not runner.obs.flags.c_contiguous  # the env's own layout: the case that matters
    # what a checkpoint keeps and gives back (agents.run.trainer: _rank_state / load)
    saved = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in runner.state_arrays().items()}
    runner.step(EpisodeLog())  # from the env's array
    runner.load_state_arrays({k: v.numpy() for k, v in saved.items()})
    runner.step(EpisodeLog())  # the same observation, from the checkpoint's array
    (obs_a, stride_a, out_a), (obs_b, stride_b, out_b) = seen
    assert torch.equal(obs_a, obs_b) and stride_a == stride_b == (4, 1)
    for a, b in zip(out_a[:3], out_b[:3]):
        assert torch.equal(a, b)
    env.close()
