"""MLP actor-critic for any standard Gymnasium observation space, with Discrete (categorical),
Box (Gaussian), MultiDiscrete (one categorical per dimension) and MultiBinary (one Bernoulli per
bit) actions.

Observations are encoded to one float vector by `agents.policies.spaces.ObsEncoder` (Box and
MultiBinary as floats, Discrete and MultiDiscrete one-hot, Tuple and Dict flattened), inside the
forward pass; a flat Box observation (CartPole) is only reshaped.

Separate actor and critic MLPs (no shared trunk), orthogonal init with gains sqrt(2) for hidden
layers, 0.01 for the policy head and 1.0 for the value head. Box actions use a Gaussian with a
state-independent, learned log std; the rollout clips actions to the space only when stepping the
env and stores the unclipped sample, so log-probs stay exact. For MultiDiscrete and MultiBinary
actions the dimensions are independent: log-prob and entropy are sums over the dimensions.

The distributions are written out by hand (log-softmax gather, Gaussian log-density, Bernoulli
through softplus) instead of `torch.distributions`: same math, a fraction of the per-call
overhead, which dominates at 64x64.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from agents.policies.base import Minibatch, Policy, PolicyConfig
from agents.policies.spaces import ObsEncoder

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# action distribution kinds
CATEGORICAL = "categorical"  # Discrete
GAUSSIAN = "gaussian"  # Box
MULTI_CATEGORICAL = "multi_categorical"  # MultiDiscrete: one categorical per dimension
BERNOULLI = "bernoulli"  # MultiBinary: one Bernoulli per bit


class MLPPolicyConfig(PolicyConfig):
    """`policy:` section of `type: mlp`."""

    type: Literal["mlp"] = Field("mlp", description="The policy type: an MLP actor-critic.")
    # widths up to 2**16: one 2**16 x 2**16 float32 layer is already 16 GiB
    hidden_sizes: list[Annotated[int, Field(gt=0, le=2**16)]] = Field(
        default_factory=lambda: [64, 64],
        description="Hidden layer widths of the actor and of the critic.",
    )
    activation: Literal[tuple(ACTIVATIONS)] = Field(  # type: ignore[valid-type]
        "tanh", description="The hidden layers' activation."
    )
    # its exp() must be a normal float32 (exp overflows past 88.7 and underflows below -87.3)
    log_std_init: float = Field(
        0.0, ge=-80, le=80, description="Box actions: the initial state-independent log std."
    )
    critic: Literal["separate", "none"] = Field(
        "separate",
        description='"separate": a value MLP; "none": no critic (critic-free estimators).',
    )

    def critic_choice(self) -> str:
        return self.critic


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


class MLPActorCritic(Policy):
    """Separate actor and critic MLPs on the encoded observation; a categorical, diagonal
    Gaussian, per-dimension categorical or per-bit Bernoulli action distribution."""

    is_sequence_policy = False
    Config = MLPPolicyConfig

    @classmethod
    def config_defaults(cls, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The `env.num_envs` and `ppo:` defaults of an MLP run (rl-zoo's CartPole
        hyperparameters: 500 on 10 of 10 seeds within 100k steps); the batch is one rollout
        when 256 does not divide it."""
        env, ppo = data.get("env") or {}, data.get("ppo") or {}
        rollout = ppo.get("n_steps", 32) * env.get("num_envs", 8)
        batch = 256 if isinstance(rollout, int) and rollout % 256 == 0 else rollout
        return {
            "env": {"num_envs": 8},
            "ppo": {
                "n_steps": 32, "batch_size": batch, "n_epochs": 20, "gamma": 0.98,
                "gae_lambda": 0.8, "learning_rate": 1.0e-3, "anneal_lr": True, "clip_range": 0.2,
                "anneal_clip": True, "clip_range_vf": None, "vf_coef": 0.5, "ent_coef": 0.0,
                "max_grad_norm": 0.5, "normalize_advantage": True, "target_kl": None,
                "adam_eps": 1.0e-5, "loss_aggregation": "token",
            },
        }  # fmt: skip

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden_sizes: tuple[int, ...] | list[int] = (64, 64),
        activation: str = "tanh",
        log_std_init: float = 0.0,
        critic: str = "separate",
    ):
        super().__init__()
        if critic not in ("separate", "none"):
            raise ValueError(f"policy.critic must be one of ['separate', 'none'], got {critic!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"policy.activation must be one of {list(ACTIVATIONS)}, got {activation!r}"
            )
        self.encoder = ObsEncoder(observation_space)
        self.flat_obs = self.encoder.is_flat  # a Box observation: reshape only
        self.action_shape = tuple(action_space.shape or ())  # of one action
        if isinstance(action_space, gym.spaces.Discrete):
            self.kind, n_out = CATEGORICAL, int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box):
            self.kind, n_out = GAUSSIAN, int(np.prod(action_space.shape))
            self.log_std = nn.Parameter(torch.full((n_out,), float(log_std_init)))
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            self.kind = MULTI_CATEGORICAL
            self._init_multi_categorical(np.asarray(action_space.nvec, dtype=np.int64).ravel())
            n_out = int(self.nvec.sum())
        elif isinstance(action_space, gym.spaces.MultiBinary):
            self.kind, n_out = BERNOULLI, int(np.prod(action_space.shape))
        else:
            raise TypeError(
                "the MLP policy supports Discrete, Box, MultiDiscrete and MultiBinary action "
                f"spaces, got {action_space}"
            )
        self.continuous = self.kind == GAUSSIAN
        self.activation = ACTIVATIONS[activation]
        obs_dim = self.encoder.dim
        self.actor = mlp([obs_dim, *hidden_sizes, n_out], out_gain=0.01)
        # None: critic-free (advantage estimators without a value function); values are 0
        self.critic = mlp([obs_dim, *hidden_sizes, 1], out_gain=1.0) if critic != "none" else None

    @property
    def has_critic(self) -> bool:
        return self.critic is not None

    def _init_multi_categorical(self, nvec: np.ndarray) -> None:
        """The actor outputs sum(nvec) logits, dimension j's block after those of 0..j-1. They
        are laid out as (k, max(nvec)) for one log-softmax over the last axis: a plain view when
        every dimension has the same size, else a gather with the padding set to -inf."""
        self.nvec = nvec
        k, m = len(nvec), int(nvec.max())
        self.md_shape = (k, m)
        self.md_padded = bool((nvec != m).any())
        if self.md_padded:
            offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
            cols = np.arange(m)
            mask = cols[None, :] < nvec[:, None]  # (k, m)
            index = offsets[:, None] + np.minimum(cols[None, :], nvec[:, None] - 1)
            self.register_buffer("md_index", torch.as_tensor(index.ravel()), persistent=False)
            self.register_buffer("md_mask", torch.as_tensor(mask), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded observations (B, D) -> actor output (B, A) (logits or Gaussian mean),
        value (B,)."""
        out = run_mlp(x, self.actor, self.activation)
        if self.critic is None:
            return out, x.new_zeros(x.shape[0])
        value = run_mlp(x, self.critic, self.activation)
        return out, value.squeeze(-1)

    def features(self, obs: Any) -> torch.Tensor:
        """Observations (B, ...) in the space's structure -> (B, D) float32."""
        if self.flat_obs:
            return obs.reshape(obs.shape[0], -1).float()
        return self.encoder(obs)

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
            critic=policy_cfg.critic,
        )

    # -- distribution pieces ----------------------------------------------------------------

    def _multi_logp(self, out: torch.Tensor) -> torch.Tensor:
        """MultiDiscrete: logits (B, sum(nvec)) -> log-probs (B, k, max(nvec)), -inf padding."""
        if not self.md_padded:
            return F.log_softmax(out.reshape(out.shape[0], *self.md_shape), dim=-1)
        logits = out[:, self.md_index].reshape(out.shape[0], *self.md_shape)
        return F.log_softmax(logits.masked_fill(~self.md_mask, -math.inf), dim=-1)

    def _log_prob_entropy(
        self, out: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actor output (B, A) and actions (B, *action_shape) -> log_prob (B,), entropy (B,)."""
        if self.kind == CATEGORICAL:
            logp = F.log_softmax(out, dim=-1)  # (B, A)
            log_prob = logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(logp.exp() * logp).sum(-1)
            return log_prob, entropy
        B = out.shape[0]
        if self.kind == GAUSSIAN:
            if len(self.action_shape) != 1:
                actions = actions.reshape(B, -1)
            log_std = self.log_std.expand_as(out)  # (B, A)
            z = (actions - out) * torch.exp(-log_std)
            log_prob = (-0.5 * z.square() - log_std - LOG_SQRT_2PI).sum(-1)
            entropy = (0.5 + LOG_SQRT_2PI + log_std).sum(-1)
            return log_prob, entropy
        if self.kind == MULTI_CATEGORICAL:
            logp = self._multi_logp(out)  # (B, k, m)
            index = actions.reshape(B, -1, 1).long()  # (B, k, 1)
            log_prob = logp.gather(-1, index).squeeze(-1).sum(-1)
            plogp = logp.exp() * logp
            if self.md_padded:  # 0 * -inf on the padding
                plogp = plogp.masked_fill(~self.md_mask, 0.0)
            return log_prob, -plogp.sum((-2, -1))
        # Bernoulli per bit, logit l: log p(a) = a * l - softplus(l); H = softplus(l) - p * l
        bits = actions.reshape(B, -1).to(out.dtype)
        softplus = F.softplus(out)
        log_prob = (bits * out - softplus).sum(-1)
        entropy = (softplus - torch.sigmoid(out) * out).sum(-1)
        return log_prob, entropy

    def _sample(self, out: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Actor output (B, A) -> action (B, *action_shape) for the non-categorical kinds."""
        B = out.shape[0]
        if self.kind == GAUSSIAN:
            action = out if deterministic else out + torch.randn_like(out) * self.log_std.exp()
        elif self.kind == MULTI_CATEGORICAL:
            logp = self._multi_logp(out)  # (B, k, m)
            if not deterministic:  # exponential race per dimension (see `act`)
                logp = logp - torch.empty_like(logp).exponential_().log()
            action = logp.argmax(-1)  # (B, k)
        else:  # Bernoulli: bit = 1 with probability sigmoid(l), the mode is l > 0
            action = (out > 0) if deterministic else (torch.rand_like(out) < torch.sigmoid(out))
            action = action.to(torch.int8)
        return action if len(self.action_shape) == 1 else action.reshape(B, *self.action_shape)

    # -- policy protocol --------------------------------------------------------------------

    @torch.no_grad()
    def act(
        self, obs: Any, state: None, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        out, value = self.forward(self.features(obs))  # (B, A), (B,)
        if self.kind != CATEGORICAL:
            action = self._sample(out, deterministic)
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
    def predict_value(self, obs: Any, state: None) -> torch.Tensor:
        if self.critic is None:
            return torch.zeros(self.features(obs).shape[0])
        return run_mlp(self.features(obs), self.critic, self.activation).squeeze(-1)

    def evaluate(self, batch: Minibatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, value = self.forward(self.features(batch.obs))  # (B, A), (B,)
        log_prob, entropy = self._log_prob_entropy(out, batch.actions)
        return log_prob, entropy, value
