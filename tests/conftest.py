"""Shared test setup: one torch thread (the CPU is shared), repo paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

torch.set_num_threads(1)


@pytest.fixture
def cartpole_yaml() -> Path:
    return CONFIGS / "cartpole.yaml"
