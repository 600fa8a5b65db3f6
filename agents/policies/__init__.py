"""Policies: the contract (`Policy`), and a registry keyed by `policy.type`.

Adding a policy type is one new module (a `Policy` subclass with `Config`, `from_config`, `act`,
`predict_value` and `evaluate`; docs/policies.md) plus one `register_policy` line here.
"""

from __future__ import annotations

from agents.policies.base import (
    Minibatch,
    Policy,
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
    "Minibatch",
    "Policy",
    "PolicyConfig",
    "frozen_copy",
    "make_policy",
    "make_reference",
    "policy_class",
    "policy_types",
    "register_policy",
]
