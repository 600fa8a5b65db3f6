"""Shared test setup: one torch thread (the CPU is shared), repo paths, shared fixtures.

The plain helpers (the tiny-model builder, LM rollouts, configs) are in helpers.py; the fixtures
that more than one test module uses are here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, save_tiny_model

torch.set_num_threads(1)


@pytest.fixture
def cartpole_yaml() -> Path:
    return CONFIGS / "cartpole.yaml"


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
