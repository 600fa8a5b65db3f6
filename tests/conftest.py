"""Shared test setup: one torch thread (the CPU is shared), repo paths, shared fixtures, and a
known process state for every test.

The suite passes from any shell, so no test may depend on what the process inherited: a
torchrun/SLURM job's RANK/WORLD_SIZE/MASTER_* variables, the current directory, or signal
dispositions (SIGINT is ignored under nohup, in background jobs and in some CI runners; the
tests that send signals set the dispositions they need themselves). `.ci/run` runs the suite
under such conditions.

The plain helpers (the tiny-model builder, LM rollouts, configs) are in helpers.py; the fixtures
that more than one test module uses are here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, save_tiny_model, train_args

torch.set_num_threads(1)

# what torchrun (and our `--nproc` launcher) sets for a rank: a test process is not one
DISTRIBUTED_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_SIGNALS_TO_HANDLE", "TEXTRLHF_ERROR_DIR",
)  # fmt: skip
for _name in DISTRIBUTED_VARS:
    os.environ.pop(_name, None)
# nothing is ever downloaded: a test that tries fails at once instead of waiting on the network
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _run_in_a_scratch_directory(tmp_path_factory, monkeypatch) -> None:
    """Every test starts in an empty directory of its own, not wherever pytest was started:
    a test that reads a repo file by a relative path, or leaves `runs/` behind, fails here
    instead of on a user's machine."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def cartpole_yaml() -> Path:
    return CONFIGS / "cartpole.yaml"


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Path:
    """A finished 512-step CartPole run (tests copy it before changing it)."""
    from agents.cli import main

    root = tmp_path_factory.mktemp("finished")
    assert main([*train_args(CONFIGS / "cartpole.yaml", root), "--name", "run"]) == 0
    return root / "run"


# tiny random causal LMs (2 layers, width 32, 4 heads, byte vocabulary); read-only, so built once


@pytest.fixture(scope="session")
def gpt2_path(tmp_path_factory) -> str:
    """GPT-2, 128 positions."""
    return save_tiny_model(tmp_path_factory.mktemp("gpt2"), "gpt2")


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory) -> str:
    """Llama (grouped-query attention: 2 key/value heads), 128 positions."""
    return save_tiny_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def gpt2_ctx64_path(tmp_path_factory) -> str:
    """GPT-2 with a 64-token context: fits text_config's 20 prompt + 8 new tokens."""
    return save_tiny_model(tmp_path_factory.mktemp("gpt2-ctx64"), "gpt2", n_positions=64)
