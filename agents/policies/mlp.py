"""MLP actor-critic for flat observations: Discrete (categorical) and Box (Gaussian) actions.

Separate actor and critic MLPs (no shared trunk), orthogonal init with gains sqrt(2) for hidden
layers, 0.01 for the policy head and 1.0 for the value head. Box actions use a Gaussian with a
state-independent, learned log std; the rollout clips actions to the space only when stepping the
env and stores the unclipped sample, so log-probs stay exact.

The distributions are written out by hand (log-softmax gather, Gaussian log-density) instead of
`torch.distributions`: same math, a fraction of the per-call overhead, which dominates at 64x64.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.policies.base import Minibatch

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def flat_dim(space: gym.Space) -> int:
    """Number of floats an observation of `space` flattens to (Box or Dict of Boxes)."""
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, gym.spaces.Dict):
        return sum(flat_dim(s) for s in space.spaces.values())
    raise TypeError(
        f"the MLP policy supports Box or Dict-of-Box observation spaces, got {space}; "
        "use policy.type: lm for text observations"
    )


def flatten_obs(obs: torch.Tensor | dict[str, torch.Tensor], batch_dims: int) -> torch.Tensor:
    """(..., *shape) observation(s) -> (..., D) float32."""
    if isinstance(obs, dict):
        return torch.cat([flatten_obs(obs[k], batch_dims) for k in sorted(obs)], dim=-1)
    return obs.reshape(*obs.shape[:batch_dims], -1).float()


def mlp(sizes: list[int], activation: str, out_gain: float) -> nn.Sequential:
    """Linear layers with `activation` between them; orthogonal init (sqrt(2) hidden gain)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        linear = nn.Linear(n_in, n_out)
        nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPActorCritic(nn.Module):
    """Separate actor and critic MLPs; categorical or diagonal-Gaussian action distribution."""

    is_sequence_policy = False

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden_sizes: tuple[int, ...] | list[int] = (64, 64),
        activation: str = "tanh",
        log_std_init: float = 0.0,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"policy.activation must be one of {list(ACTIVATIONS)}, got {activation!r}"
            )
        obs_dim = flat_dim(observation_space)
        if isinstance(action_space, gym.spaces.Discrete):
            self.continuous = False
            n_out = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.continuous = True
            n_out = int(action_space.shape[0])
            self.log_std = nn.Parameter(torch.full((n_out,), float(log_std_init)))
        else:
            raise TypeError(
                f"the MLP policy supports Discrete or 1-D Box action spaces, got {action_space}"
            )
        self.actor = mlp([obs_dim, *hidden_sizes, n_out], activation, out_gain=0.01)
        self.critic = mlp([obs_dim, *hidden_sizes, 1], activation, out_gain=1.0)

    @classmethod
    def from_config(
        cls, policy_cfg: Any, observation_space: gym.Space, action_space: gym.Space
    ) -> MLPActorCritic:
        get = policy_cfg.get if isinstance(policy_cfg, dict) else policy_cfg.__getattribute__
        return cls(
            observation_space,
            action_space,
            hidden_sizes=list(get("hidden_sizes")),
            activation=get("activation"),
            log_std_init=get("log_std_init"),
        )

    # -- distribution pieces ----------------------------------------------------------------

    def _log_prob_entropy(
        self, out: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actor output (B, A) and actions -> log_prob (B,), entropy (B,)."""
        if self.continuous:
            log_std = self.log_std.expand_as(out)  # (B, A)
            z = (actions - out) * torch.exp(-log_std)
            log_prob = (-0.5 * z.square() - log_std - LOG_SQRT_2PI).sum(-1)
            entropy = (0.5 + LOG_SQRT_2PI + log_std).sum(-1)
            return log_prob, entropy
        logp = F.log_softmax(out, dim=-1)  # (B, A)
        log_prob = logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return log_prob, entropy

    # -- policy protocol --------------------------------------------------------------------

    def initial_state(self, num_envs: int) -> None:
        return None

    def reset_state(self, state: None, done_mask: np.ndarray) -> None:
        return None

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor | dict[str, torch.Tensor], state: None, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x = flatten_obs(obs, 1)  # (B, D)
        out = self.actor(x)  # (B, A)
        value = self.critic(x).squeeze(-1)  # (B,)
        if self.continuous:
            action = out if deterministic else out + torch.randn_like(out) * self.log_std.exp()
            log_prob, _ = self._log_prob_entropy(out, action)
            return action, log_prob, value, None
        logp = F.log_softmax(out, dim=-1)  # (B, A)
        if deterministic:
            action = logp.argmax(-1)
        else:
            action = torch.multinomial(logp.exp(), 1).squeeze(-1)  # (B,)
        log_prob = logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        return action, log_prob, value, None

    @torch.no_grad()
    def predict_value(
        self, obs: torch.Tensor | dict[str, torch.Tensor], state: None
    ) -> torch.Tensor:
        return self.critic(flatten_obs(obs, 1)).squeeze(-1)

    def evaluate(self, batch: Minibatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = flatten_obs(batch.obs, 1)  # (B, D)
        log_prob, entropy = self._log_prob_entropy(self.actor(x), batch.actions)
        return log_prob, entropy, self.critic(x).squeeze(-1)
