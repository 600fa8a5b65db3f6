"""Policies: the protocol, and a registry keyed by `policy.type`.

Adding a policy type is one new module (a class with `Config`, `from_config` and the protocol
methods of `agents.policies.base.ActorCritic`) plus one `register_policy` line here.
"""

from __future__ import annotations

from agents.policies.base import (
    ActorCritic,
    Minibatch,
    PolicyConfig,
    frozen_copy,
    make_policy,
    make_reference,
    policy_class,
    policy_types,
    register_policy,
)

register_policy("mlp", "agents.policies.mlp:MLPActorCritic")
register_policy("lm", "agents.policies.lm:LMPolicy")

__all__ = [
    "ActorCritic",
    "Minibatch",
    "PolicyConfig",
    "frozen_copy",
    "make_policy",
    "make_reference",
    "policy_class",
    "policy_types",
    "register_policy",
]
