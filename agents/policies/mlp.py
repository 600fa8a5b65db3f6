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
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from agents.policies.base import Minibatch, PolicyConfig

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class MLPPolicyConfig(PolicyConfig):
    """`policy:` section of `type: mlp`."""

    type: Literal["mlp"] = "mlp"
    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [64, 64])
    activation: Literal[tuple(ACTIVATIONS)] = "tanh"  # type: ignore[valid-type]
    log_std_init: float = 0.0  # Box actions: initial state-independent log std


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


def mlp(sizes: list[int], out_gain: float) -> nn.ModuleList:
    """Linear layers; orthogonal init with gain sqrt(2) for hidden layers, `out_gain` last."""
    layers = nn.ModuleList()
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        linear = nn.Linear(n_in, n_out)
        nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
    return layers


def run_mlp(x: torch.Tensor, layers: nn.ModuleList, activation) -> torch.Tensor:
    """x (B, D) -> (B, out). Calls F.linear directly: at 64x64 the per-module call overhead of
    nn.Sequential is a noticeable part of the cost of a PPO minibatch step."""
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        x = F.linear(x, layer.weight, layer.bias)
        if i < last:
            x = activation(x)
    return x


class MLPActorCritic(nn.Module):
    """Separate actor and critic MLPs; categorical or diagonal-Gaussian action distribution."""

    is_sequence_policy = False
    Config = MLPPolicyConfig

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
        self.activation = ACTIVATIONS[activation]
        self.actor = mlp([obs_dim, *hidden_sizes, n_out], out_gain=0.01)
        self.critic = mlp([obs_dim, *hidden_sizes, 1], out_gain=1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat observations (B, D) -> actor output (B, A) (logits or Gaussian mean), value (B,)."""
        out = run_mlp(x, self.actor, self.activation)
        value = run_mlp(x, self.critic, self.activation)
        return out, value.squeeze(-1)

    @classmethod
    def from_config(
        cls, policy_cfg: MLPPolicyConfig, observation_space: gym.Space, action_space: gym.Space
    ) -> MLPActorCritic:
        return cls(
            observation_space,
            action_space,
            hidden_sizes=list(policy_cfg.hidden_sizes),
            activation=policy_cfg.activation,
            log_std_init=policy_cfg.log_std_init,
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
        out, value = self.forward(flatten_obs(obs, 1))  # (B, A), (B,)
        if self.continuous:
            action = out if deterministic else out + torch.randn_like(out) * self.log_std.exp()
            log_prob, _ = self._log_prob_entropy(out, action)
            return action, log_prob, value, None
        logp = F.log_softmax(out, dim=-1)  # (B, A)
        if deterministic:
            action = logp.argmax(-1)
        else:
            # exponential race: argmax_i p_i / E_i with E_i ~ Exp(1) is a sample of Categorical(p)
            # (the Gumbel-max trick in another form); same distribution as torch.multinomial,
            # a third of its cost at this size
            action = (logp - torch.empty_like(logp).exponential_().log()).argmax(-1)  # (B,)
        log_prob = logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        return action, log_prob, value, None

    @torch.no_grad()
    def predict_value(
        self, obs: torch.Tensor | dict[str, torch.Tensor], state: None
    ) -> torch.Tensor:
        return run_mlp(flatten_obs(obs, 1), self.critic, self.activation).squeeze(-1)

    def evaluate(self, batch: Minibatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, value = self.forward(flatten_obs(batch.obs, 1))  # (B, A), (B,)
        log_prob, entropy = self._log_prob_entropy(out, batch.actions)
        return log_prob, entropy, value
