"""The checks before a run (agents/run/preflight.py and the Trainer building every env first): a
bad setting fails in seconds, before any env or buffer is allocated and before training (each test
failed on the code before its fix). The config's own validators are tested in test_configs.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import train_args

from agents.cli import main
from agents.run.config import load_config
from agents.run.trainer import Trainer


def test_a_bad_eval_setting_fails_before_training_and_leaves_no_folder(
    cartpole_yaml, tmp_path, capsys
):
    root = tmp_path / "runs"
    args = train_args(cartpole_yaml, root, "total_timesteps=100000", "eval.env_kwargs={bogus: 1}")
    start = time.perf_counter()
    assert main(args) == 1  # the eval env is built at Trainer(), not after 100k steps
    assert time.perf_counter() - start < 10
    assert "bogus" in capsys.readouterr().err
    assert not root.exists() or not any(root.iterdir())


def test_env_sizes_are_checked_against_the_model_before_any_env_exists():
    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "text_edit_distance.yaml",
        ["env.kwargs.max_new_tokens=1000000000", "run.progress=false"],
    )
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"1000000032 tokens exceeds the model's context of 320"):
        Trainer(cfg)  # the env would allocate (64, 1e9) int64 buffers first
    assert time.perf_counter() - start < 5


def test_a_rollout_larger_than_the_machines_memory_is_a_config_error(
    cartpole_yaml, tmp_path, capsys, monkeypatch
):
    """torch's allocation error was a raw RuntimeError naming no setting (or the OS killed the
    process); the size is checked before the buffer is allocated."""
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1024}  # a 4 MiB machine
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    big = ["env.num_envs=4096", "total_timesteps=131072", "--name", "big"]
    assert main(train_args(cartpole_yaml, tmp_path, *big)) == 1
    err = capsys.readouterr().err
    assert "ppo.n_steps * env.num_envs = 32 * 4096 = 131,072 transitions" in err
    assert "lower env.num_envs or ppo.n_steps" in err and not (tmp_path / "big").exists()
