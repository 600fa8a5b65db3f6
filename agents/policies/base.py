"""The policy protocol: the only thing the PPO core knows about a policy.

A policy is an actor-critic with an optional recurrent `state` threaded through `act` (MLPs use
`None`; the LM policy keeps its KV cache there). Observations arrive as torch tensors, or dicts of
tensors for Dict spaces (`agents.core.rollout.obs_to_tensor`).

Shapes: transition policies (`is_sequence_policy = False`, e.g. MLPs) receive `Minibatch` fields of
shape `(B, ...)` and return `(B,)` tensors. Sequence policies (`is_sequence_policy = True`, e.g.
the LM) receive all T steps of B env columns, `(T, B, ...)`, and return `(T, B)` tensors.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch


class Minibatch(NamedTuple):
    """One minibatch handed to `policy.evaluate` and to the PPO loss."""

    obs: torch.Tensor | dict[str, torch.Tensor]  # (B, ...) or (T, B, ...)
    actions: torch.Tensor  # (B, ...) or (T, B, ...)
    log_probs: torch.Tensor  # (B,) or (T, B), log-probs at collection time
    values: torch.Tensor  # (B,) or (T, B), values at collection time
    advantages: torch.Tensor  # (B,) or (T, B)
    returns: torch.Tensor  # (B,) or (T, B), advantages + values
    valid: torch.Tensor  # (B,) or (T, B) bool, False for steps that are not real transitions


@runtime_checkable
class ActorCritic(Protocol):
    """What `agents.core.rollout` and `agents.core.ppo` call. Implementations are `torch.nn.Module`s."""

    is_sequence_policy: bool

    def initial_state(self, num_envs: int) -> Any:
        """Recurrent state for a fresh batch of `num_envs` episodes (None for MLPs)."""

    def act(
        self, obs: Any, state: Any, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """Sample (or pick the mode of) an action, no grad: (action, log_prob, value, state)."""

    def predict_value(self, obs: Any, state: Any) -> torch.Tensor:
        """Value of `obs` (B,) for bootstrapping; does not change `state`."""

    def evaluate(self, batch: Minibatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-score `batch.actions` with grad: (log_prob, entropy, value)."""

    def reset_state(self, state: Any, done_mask: np.ndarray) -> Any:
        """Forget the state of the env rows in `done_mask` (N,) bool whose episodes ended."""


def frozen_copy(policy: torch.nn.Module) -> torch.nn.Module:
    """The reference policy for the KL penalty: a deep copy of `policy` with every parameter
    frozen (requires_grad False). Taken once, before training starts."""
    import copy

    reference = copy.deepcopy(policy)
    reference.requires_grad_(False)
    reference.eval()
    return reference
