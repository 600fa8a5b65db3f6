"""Every shipped YAML config validates against today's schema (a typo or a renamed field in
configs/ would otherwise surface only when a user runs it)."""

from __future__ import annotations

import pytest
from helpers import CONFIGS

from agents.rlhf.reward_model import load_config as load_rm_config
from agents.rlhf.sft import load_config as load_sft_config
from agents.run.config import load_config

LOADERS = {"sft_": load_sft_config, "rm_": load_rm_config}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_config_loads(path):
    loader = next((f for prefix, f in LOADERS.items() if path.stem.startswith(prefix)), load_config)
    cfg = loader(path)
    assert cfg.name == path.stem


def test_critic_free_configs_build_no_critic():
    for path in sorted(CONFIGS.glob("*_grpo.yaml")) + sorted(CONFIGS.glob("*_rloo.yaml")):
        cfg = load_config(path)
        assert cfg.advantage.estimator in ("grpo", "rloo"), path
        assert cfg.policy.critic == "none", path
        assert cfg.env.num_envs % cfg.advantage.group_size == 0, path
