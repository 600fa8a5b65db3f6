"""KL to a frozen reference policy: per-step estimators and fixed / adaptive beta controllers.

The penalty `-beta * kl_t` is added to the env reward on every valid step before GAE
(`agents.core.rollout.apply_kl_penalty`). It is not part of the env's episode return.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("k1", "k3")


def kl_estimate(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-step KL(pi || ref) estimate from log-probs of the sampled actions.

    k1: logp - logp_ref (unbiased, can be negative);
    k3: exp(logp_ref - logp) - 1 - (logp_ref - logp) (unbiased, always >= 0, lower variance).
    """
    if estimator == "k1":
        return log_prob - ref_log_prob
    if estimator == "k3":
        log_ratio = ref_log_prob - log_prob
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl.estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")


class FixedKLController:
    """A constant beta."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    def update(self, kl: float, n_episodes: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019): beta <- beta * (1 + clip((KL - target) / target, -0.2, 0.2) * n / H).

    `kl` is the mean KL per episode (summed over its steps), `n` the number of episodes the
    estimate came from and H the horizon (in episodes).
    """

    def __init__(self, init_beta: float, target: float, horizon: int):
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, kl: float, n_episodes: int) -> None:
        error = min(max((kl - self.target) / self.target, -0.2), 0.2)
        self.beta *= 1.0 + error * n_episodes / self.horizon


def make_kl_controller(kl_cfg) -> FixedKLController | AdaptiveKLController:
    if kl_cfg.adaptive:
        return AdaptiveKLController(kl_cfg.beta, kl_cfg.target, kl_cfg.horizon)
    return FixedKLController(kl_cfg.beta)
