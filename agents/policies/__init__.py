"""Policies: `make_policy(policy_cfg, observation_space, action_space)` dispatches on `type`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from agents.policies.base import ActorCritic, Minibatch, frozen_copy

POLICY_TYPES = ("mlp", "lm")


def make_policy(policy_cfg: Any, observation_space: gym.Space, action_space: gym.Space) -> Any:
    """Build the policy named by `policy_cfg.type` ("mlp" or "lm") for the given spaces.

    The LM policy is imported lazily so that classic-control runs never import transformers.
    """
    kind = policy_cfg["type"] if isinstance(policy_cfg, dict) else policy_cfg.type
    if kind == "mlp":
        from agents.policies.mlp import MLPActorCritic

        return MLPActorCritic.from_config(policy_cfg, observation_space, action_space)
    if kind == "lm":
        from agents.policies.lm import LMPolicy

        return LMPolicy.from_config(policy_cfg, observation_space, action_space)
    raise ValueError(f"policy.type must be one of {list(POLICY_TYPES)}, got {kind!r}")


__all__ = ["ActorCritic", "Minibatch", "frozen_copy", "make_policy", "POLICY_TYPES"]
