"""The policy contract (`Policy`): the only thing the PPO core and the harness know about a policy,
and the registry of policy types by name.

A policy is an actor-critic with an optional recurrent `state` threaded through `act` (MLPs use
`None`; the LM policy keeps its KV cache there). Observations arrive as torch tensors, or dicts /
tuples of tensors for Dict / Tuple spaces, nested as the space is, in the space's own dtypes
(`agents.core.rollout.obs_to_tensor`); encoding them is the policy's business.

Shapes: transition policies (`is_sequence_policy = False`, e.g. MLPs) receive `Minibatch` fields of
shape `(B, ...)` and return `(B,)` tensors. Sequence policies (`is_sequence_policy = True`, e.g.
the LM) receive all T steps of B env columns, `(T, B, ...)`, and return `(T, B)` tensors.
"""

from __future__ import annotations

import abc
import contextlib
import difflib
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn as nn
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
    # (B,) or (T, B) int64: each step's place t * N + row in the (T, N) rollout (diagnostics)
    step_index: torch.Tensor | None = None


@dataclass(frozen=True)
class ReadsFiles:
    """Config field marker, `Annotated[str | None, INPUT_PATH]`: the field names a file or
    folder the run reads; `Annotated[dict, ENV_KWARGS]`: the field holds an env's keyword
    arguments, some of which do (`agents.run.config_paths.resolve_input_paths` has the rule). A
    relative path in a config file then means relative to that file's folder, not to wherever
    the command happens to run."""

    kind: str


INPUT_PATH, ENV_KWARGS = ReadsFiles("path"), ReadsFiles("env_kwargs")


class PolicyConfig(BaseModel):
    """The `policy:` config section. Each policy type subclasses it with its own fields (and a
    `type: Literal["name"]`); unknown keys and bad values are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: str

    def critic_choice(self) -> str | None:
        """This type's `critic` setting ("none": no value head, as the critic-free advantage
        estimators need), or None for a type that offers no choice. Default: None."""
        return None


class Policy(nn.Module, abc.ABC):
    """The policy contract: what `agents.core` and `agents.run` call, and nothing else.

    A policy type subclasses this, sets `Config` (its `PolicyConfig` subclass) and
    `is_sequence_policy`, and implements the four abstract methods (`from_config`, `act`,
    `predict_value`, `evaluate`); every other method has a default that is right for a plain
    stateless actor-critic such as the MLP. The callers never probe a policy with
    getattr/hasattr: they call these methods (docs/policies.md lists who calls what).
    """

    #: the `policy:` config section of this type (a `PolicyConfig` subclass)
    Config: ClassVar[type[PolicyConfig]] = PolicyConfig
    #: True: `evaluate` gets whole env columns `(T, B, ...)` (the LM); False: transitions `(B, ...)`
    is_sequence_policy: ClassVar[bool] = False

    # -- construction (the harness, before and while building the run) ---------------------

    @classmethod
    @abc.abstractmethod
    def from_config(
        cls, policy_cfg: PolicyConfig, observation_space: Any, action_space: Any
    ) -> Policy:
        """Build the policy for the env's (single) spaces from its `policy:` section."""

    @classmethod
    def check_env_kwargs(cls, policy_cfg: PolicyConfig, env_kwargs: Mapping[str, Any]) -> None:
        """Refuse env sizes the model cannot take, BEFORE any env allocates (ValueError naming
        the sizes). `env_kwargs` are the env's keyword arguments with its defaults filled in
        where the harness knows them (`agents.run.envs.env_kwargs_with_defaults`).
        Default: no check."""

    @classmethod
    def config_defaults(cls, data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The `env.num_envs` and `ppo:` values a run of this policy type takes where its
        config leaves them out, by section (`data`: the config as given, for defaults that
        depend on other keys). Default: none (the config models' own defaults)."""
        return {}

    @classmethod
    def pinned_folders(cls, policy_cfg: PolicyConfig) -> dict[str, Path]:
        """The folders a checkpoint of this policy needs but does not hold, by config key (a
        LoRA policy's frozen base): each checkpoint records their hashes, and a resume, eval or
        export refuses folders that changed. Default: none (the checkpoint holds every weight)."""
        return {}

    # the `run.dtype` values this policy type runs (`run.dtype: auto` picks bfloat16 only for a
    # type that lists it, agents/run/dtype.py)
    COMPUTE_DTYPES: tuple[str, ...] = ("float32",)

    def set_compute_dtype(self, dtype: str) -> None:
        """`run.dtype` (resolved: never "auto"): the dtype forward passes run in. Default:
        float32 only."""
        if dtype != "float32":
            raise ValueError(
                f"run.dtype={dtype!r} is for LM policies; {type(self).__name__} runs in float32 "
                "(set run.dtype: float32)"
            )

    # -- the rollout and the update (agents.core) --------------------------------------------

    def initial_state(self, num_envs: int) -> Any:
        """Recurrent state for a fresh batch of `num_envs` episodes. Default: None (stateless)."""
        return None

    def reset_state(self, state: Any, done_mask: np.ndarray) -> Any:
        """Forget the state of the env rows in `done_mask` (N,) bool whose episodes ended (a
        policy may instead detect new episodes from the observations, as the LM does).
        Default: `state` unchanged."""
        return state

    @abc.abstractmethod
    def act(
        self, obs: Any, state: Any, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """Sample (or pick the mode of) an action, no grad: (action, log_prob, value, state)."""

    @abc.abstractmethod
    def predict_value(self, obs: Any, state: Any) -> torch.Tensor:
        """Value of `obs` (B,) for bootstrapping; does not change `state`."""

    @abc.abstractmethod
    def evaluate(self, batch: Minibatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-score `batch.actions` with grad: (log_prob, entropy, value)."""

    @property
    def has_critic(self) -> bool:
        """False for a critic-free policy: no value parameters, every value is 0 (the PPO loss
        then has no value term). Default: True."""
        return True

    def truncated_mass(self, state: Any) -> torch.Tensor | None:
        """(N,) probability mass that the last `act` call's sampling cut away (top-k / top-p)
        for each row, read right after that call with the state it returned; None when this
        policy samples from its whole distribution (diagnostics). Default: None."""
        return None

    @property
    def values_after_rollout(self) -> bool:
        """True: `act` returns values of 0 and the collector fills the rollout's values with
        `rollout_values` once the rollout is done (a sequence policy whose critic does not shape
        the sampling: one batched forward instead of one per token). Default: False."""
        return False

    def rollout_values(self, batch: Any) -> torch.Tensor:
        """(T, B) values of the whole `(T, B, ...)` rollout `batch`, when
        `values_after_rollout`. Default: not available."""
        raise NotImplementedError(
            f"{type(self).__name__} computes its values in act() (values_after_rollout is False)"
        )

    # -- the KL reference, evaluation and checkpoints (agents.run) ---------------------------

    def reference(self) -> nn.Module:
        """The frozen reference for the KL penalty, taken once before training: a module with
        `is_sequence_policy` and `evaluate(batch)` that never changes. Default: `frozen_copy`."""
        return frozen_copy(self)

    def sampling(
        self,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> contextlib.AbstractContextManager:
        """A context in which the policy acts with other sampling settings (`eval.sampling`;
        None keeps its own), its own restored on exit. Default: TypeError, this policy has no
        sampling settings."""
        raise TypeError(
            f"eval.sampling needs a policy with sampling settings (policy.type: lm), got "
            f"{type(self).__name__}; remove eval.sampling"
        )

    def token_texts(self, token_ids: list[int]) -> list[str] | None:
        """The text of each token id on its own, for the run's trajectory log and report (read
        without the model later). Default: None, this policy's actions are not tokens."""
        return None

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds. Default: the whole `state_dict()`."""
        return self.state_dict()

    def save_pretrained(self, folder: str | os.PathLike, merge: bool = True) -> Path:
        """Write the actor in its library's own format (`textrlhf export`). Default: TypeError,
        this policy has no such format."""
        raise TypeError(f"{type(self).__name__} has no pretrained format to export")


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, str | type] = {}  # type -> class, or "module:Class" imported on first use


def register_policy(name: str, policy: str | type, overwrite: bool = False) -> None:
    """Make `policy.type: name` build `policy`: a `Policy` subclass, or "module:Class" imported
    lazily (and checked then) so that, e.g., MLP runs never import transformers."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a policy type must be a non-empty str, got {name!r}")
    if not isinstance(policy, str) and not (
        isinstance(policy, type) and issubclass(policy, Policy)
    ):
        raise TypeError(f"policy type {name!r}: {policy!r} is not a subclass of Policy")
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
        target = getattr(importlib.import_module(module), attr)
        if not (isinstance(target, type) and issubclass(target, Policy)):
            raise TypeError(
                f"policy type {name!r} is registered as {module}:{attr}, which is not a subclass "
                "of agents.policies.base.Policy"
            )
        _REGISTRY[name] = target
    return target


def make_policy(policy_cfg: PolicyConfig, observation_space: Any, action_space: Any) -> Policy:
    """Build the policy of `policy_cfg.type` for the given spaces."""
    return policy_class(policy_cfg.type).from_config(policy_cfg, observation_space, action_space)


def make_reference(policy: Policy) -> nn.Module:
    """The frozen reference policy for the KL penalty, taken once before training: the policy's
    own business (`Policy.reference`; the LM: no top-k/top-p cut, and under LoRA the same base
    with the adapters off instead of a copy)."""
    return policy.reference()


def frozen_copy(policy: nn.Module) -> nn.Module:
    """The reference policy for the KL penalty: a deep copy of `policy` with every parameter
    frozen (requires_grad False). Taken once, before training starts."""
    import copy

    reference = copy.deepcopy(policy)
    reference.requires_grad_(False)
    reference.eval()
    return reference
