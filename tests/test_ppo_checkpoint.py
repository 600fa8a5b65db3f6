"""Checkpoints: round trip, bit-exact resume, corrupted / incomplete / mismatched files (the
latest pointer, metadata, optimizer state), a full disk, settings a resume refuses, NaN loss."""

from __future__ import annotations

import csv
import errno
import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import _half_run, copy_run, text_config, train_args
from safetensors.torch import load_file, save_file

from agents.cli import main
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
    # what a checkpoint keeps and gives back (agents.run.resume: rank_state / load_trainer)
    saved = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in runner.state_arrays().items()}
    runner.step(EpisodeLog())  # from the env's array
    runner.load_state_arrays({k: v.numpy() for k, v in saved.items()})
    runner.step(EpisodeLog())  # the same observation, from the checkpoint's array
    (obs_a, stride_a, out_a), (obs_b, stride_b, out_b) = seen
    assert torch.equal(obs_a, obs_b) and stride_a == stride_b == (4, 1)
    for a, b in zip(out_a[:3], out_b[:3]):
        assert torch.equal(a, b)
    env.close()


# ----------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize(
    ("pointer", "message"),
    [
        ({"checkpoint": "../../other/checkpoints/512.json"}, "must be the name of a"),
        ({"checkpoint": "/etc/passwd"}, "must be the name of a"),
        ({"checkpoint": 3}, "'checkpoint' = 3 must be"),
        (["512.json"], "'checkpoint' = None must be"),
    ],
)
def test_the_latest_pointer_names_a_checkpoint_of_its_own_folder(
    finished, tmp_path, capsys, pointer, message
):
    run = copy_run(finished, tmp_path)
    copy_run(finished, tmp_path, "other")  # ../../other/checkpoints/512.json exists
    (run / "checkpoints" / "latest.json").write_text(json.dumps(pointer))
    assert main(["eval", str(run)]) == 1  # read another run's checkpoint, or a raw TypeError
    err = capsys.readouterr().err
    assert "checkpoint pointer" in err and "is corrupted" in err and message in err


@pytest.mark.parametrize(("key", "value"), [("weights_file", 5), ("weights_sha256", None)])
def test_checkpoint_metadata_of_the_wrong_type_is_named(finished, tmp_path, capsys, key, value):
    run = copy_run(finished, tmp_path)
    path = ckpt.latest_checkpoint(run / "checkpoints")
    meta = json.loads(path.read_text())
    meta[key] = value
    path.write_text(json.dumps(meta))
    assert main(["eval", str(run)]) == 1  # was "expected str, bytes or os.PathLike object, ..."
    assert f"{path} is corrupted: {key} = {value!r} must be a string" in capsys.readouterr().err


def _rewrite_weights(meta_path: Path, keep) -> None:
    """Rewrite a checkpoint's tensors (and the recorded hash) without the ones `keep` rejects."""
    meta = json.loads(meta_path.read_text())
    weights = meta_path.parent / meta["weights_file"]
    tensors = {k: v for k, v in load_file(str(weights)).items() if keep(k)}
    save_file(tensors, str(weights))
    meta["weights_sha256"] = ckpt.sha256_of(weights)
    meta_path.write_text(json.dumps(meta))


def test_a_checkpoint_without_optimizer_state_is_refused(cartpole_yaml, tmp_path, capsys):
    run, path = _half_run(cartpole_yaml, tmp_path)
    _rewrite_weights(path, lambda key: not key.startswith("optim/"))
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "incomplete: optimizer state ['optim/0/exp_avg'" in err and "from scratch" in err


def test_a_checkpoint_missing_metadata_names_the_key(cartpole_yaml, tmp_path, capsys):
    run, path = _half_run(cartpole_yaml, tmp_path)
    meta = json.loads(path.read_text())
    del meta["kl_beta"], meta["recent_returns"]
    path.write_text(json.dumps(meta))
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 1
    assert "metadata keys ['recent_returns', 'kl_beta'] missing" in capsys.readouterr().err


def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(
    cartpole_yaml, tmp_path, capsys, monkeypatch
):
    run, path = _half_run(cartpole_yaml, tmp_path)

    def disk_full(tensors, filename, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    assert main([*train_args(cartpole_yaml, tmp_path), "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"cannot write \S+/checkpoints/512\.safetensors: No space left", err), err
    assert ckpt.latest_checkpoint(run / "checkpoints") == path  # still the last good one
    ckpt.read_checkpoint(path)  # and it is intact
    assert not list((run / "checkpoints").glob(".*.tmp"))


# ----------------------------------------------------------------------------- resume settings


def test_resume_refuses_a_switch_of_run_dtype(gpt2_ctx64_path, tmp_path):
    """bfloat16 forward passes are other numbers, not a rounding difference: a resume that
    switched run.dtype went on silently as another experiment."""
    raw = text_config(gpt2_ctx64_path, str(tmp_path))
    raw["total_timesteps"] = 64  # one iteration of 8 envs x 8 steps
    raw["eval"]["episodes"] = 2
    cfg = load_config(raw)
    trainer = Trainer(cfg, new_run_dir(cfg, "dtype"))
    trainer.learn()
    switched = {**raw, "run": {**raw["run"], "dtype": "bfloat16"}}
    with pytest.raises(
        ckpt.CheckpointError, match=r"run.dtype: 'float32' in the checkpoint, 'bfloat16' in the"
    ):
        Trainer(load_config(switched), trainer.run_dir, resume=True)
    # where and how the run computes and reports may change (same numbers up to rounding)
    moved = {"torch_threads": 2, "checkpoint_every": 64, "progress": True, "device": "auto",
             "allreduce_bucket_mb": 0.0, "root": str(tmp_path / "elsewhere")}  # fmt: skip
    other = {**raw, "name": "renamed", "run": {**raw["run"], **moved}}
    assert Trainer(load_config(other), trainer.run_dir, resume=True).global_step == 64
