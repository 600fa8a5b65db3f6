"""The policy protocol: the only thing the PPO core knows about a policy.

A policy is an actor-critic with an optional recurrent `state` threaded through `act` (MLPs use
`None`; the LM policy keeps its KV cache there). Observations arrive as torch tensors, or dicts /
tuples of tensors for Dict / Tuple spaces, nested as the space is, in the space's own dtypes
(`agents.core.rollout.obs_to_tensor`); encoding them is the policy's business.

Shapes: transition policies (`is_sequence_policy = False`, e.g. MLPs) receive `Minibatch` fields of
shape `(B, ...)` and return `(B,)` tensors. Sequence policies (`is_sequence_policy = True`, e.g.
the LM) receive all T steps of B env columns, `(T, B, ...)`, and return `(T, B)` tensors.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict


class Minibatch(NamedTuple):
    """One minibatch handed to `policy.evaluate` and to the PPO loss."""

    obs: Any  # tensor, or dict / tuple of tensors: (B, ...) or (T, B, ...)
    actions: torch.Tensor  # (B, ...) or (T, B, ...)
    log_probs: torch.Tensor  # (B,) or (T, B), log-probs at collection time
    values: torch.Tensor  # (B,) or (T, B), values at collection time
    advantages: torch.Tensor  # (B,) or (T, B)
    returns: torch.Tensor  # (B,) or (T, B), advantages + values
    valid: torch.Tensor  # (B,) or (T, B) bool, False for steps that are not real transitions
    ref_log_probs: torch.Tensor | None = None  # (B,) or (T, B): the reference's (KL in the loss)
    episode_weights: torch.Tensor | None = None  # (B,) or (T, B): 1 / length of the step's episode


@dataclass(frozen=True)
class ReadsFiles:
    """Config field marker, `Annotated[str | None, INPUT_PATH]`: the field names a file or
    folder the run reads; `Annotated[dict, ENV_KWARGS]`: the field holds an env's keyword
    arguments, some of which do (`agents.run.config.resolve_input_paths` has the rule). A
    relative path in a config file then means relative to that file's folder, not to wherever
    the command happens to run."""

    kind: str


INPUT_PATH, ENV_KWARGS = ReadsFiles("path"), ReadsFiles("env_kwargs")


class PolicyConfig(BaseModel):
    """The `policy:` config section. Each policy type subclasses it with its own fields (and a
    `type: Literal["name"]`); unknown keys and bad values are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: str


@runtime_checkable
class ActorCritic(Protocol):
    """What `agents.core.rollout` and `agents.core.ppo` call. Implementations are `torch.nn.Module`s.

    A registered policy class also has `Config` (its `PolicyConfig` subclass) and the classmethod
    `from_config(policy_cfg, observation_space, action_space)`. Optionally, a classmethod
    `check_env_kwargs(policy_cfg, env_kwargs)` that refuses env sizes its model cannot take,
    called before any env is built (the LM policy checks prompt + response against the context).
    Optionally, a classmethod `pinned_folders(policy_cfg) -> {config key: folder}` naming the
    model folders its checkpoints need but do not hold (a LoRA policy's frozen base): each
    checkpoint records their hashes, and a resume, eval or export refuses folders that changed.

    Optionally, a sequence policy whose critic does not shape the sampling may leave the values
    out of `act` (returning 0) and set `values_after_rollout = True`: the collector then fills
    the rollout's values with `rollout_values(batch)`, (T, B) from the whole `(T, B, ...)`
    rollout at once (the LM with a separate critic: one batched forward, not one per token).
    """

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
        """Forget the state of the env rows in `done_mask` (N,) bool whose episodes ended (may be
        a no-op for a policy that detects new episodes from the observations, as the LM does)."""


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, str | type] = {}  # type -> class, or "module:Class" imported on first use


def register_policy(name: str, policy: str | type, overwrite: bool = False) -> None:
    """Make `policy.type: name` build `policy` (a class, or "module:Class" imported lazily so
    that, e.g., MLP runs never import transformers)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a policy type must be a non-empty str, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"policy type {name!r} is already registered; pass overwrite=True")
    _REGISTRY[name] = policy


def policy_types() -> list[str]:
    """The registered policy types."""
    return sorted(_REGISTRY)


def policy_class(name: str) -> type:
    """The class registered as `name`; ValueError naming the allowed types."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"policy.type must be one of {policy_types()}, got {name!r}{hint}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return target


def make_policy(policy_cfg: PolicyConfig, observation_space: Any, action_space: Any) -> Any:
    """Build the policy of `policy_cfg.type` for the given spaces."""
    return policy_class(policy_cfg.type).from_config(policy_cfg, observation_space, action_space)


def make_reference(policy: torch.nn.Module) -> torch.nn.Module:
    """The frozen reference policy for the KL penalty, taken once before training: the policy's
    own `reference()` when it has one (the LM: no top-k/top-p cut, and under LoRA the same base
    with the adapters off instead of a copy), else a `frozen_copy`."""
    own = getattr(policy, "reference", None)
    return own() if callable(own) else frozen_copy(policy)


def frozen_copy(policy: torch.nn.Module) -> torch.nn.Module:
    """The reference policy for the KL penalty: a deep copy of `policy` with every parameter
    frozen (requires_grad False). Taken once, before training starts."""
    import copy

    reference = copy.deepcopy(policy)
    reference.requires_grad_(False)
    reference.eval()
    return reference
