"""KL to a frozen reference policy: per-step estimators, fixed / adaptive beta controllers, and
the penalty itself.

`apply_kl_penalty` adds `-beta * kl_t` to the rewards of every valid step of a collected rollout,
before GAE. It is not part of the env's episode return (the rollout only collects).
"""

from __future__ import annotations

from typing import Any

import torch

from agents.core.buffer import RolloutBuffer
from agents.core.distributed import LOCAL, Distributed

ESTIMATORS = ("k1", "k3")
KL_PLACEMENTS = ("reward", "loss")  # -beta * kl_t in each step's reward, or beta * k3 in the loss


def kl_estimate(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-step KL(pi || ref) estimate from log-probs of the sampled actions.

    k1: logp - logp_ref (unbiased, can be negative);
    k3: exp(logp_ref - logp) - 1 - (logp_ref - logp) (unbiased, always >= 0, lower variance).
    Unbiased as values. As gradients they differ (docs/algorithms.md): k3 in the loss has the
    gradient of KL(ref || pi), and as a reward, that of KL(pi || ref) - KL(ref || pi); k1 as a
    reward gives the gradient of KL(pi || ref).
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
    estimate came from and H the horizon (in episodes). The step fraction `n / H` is capped at 1,
    so one update moves beta by at most 20%: with more episodes per update than the horizon, the
    uncapped factor would go below 0 (a negative beta rewards moving away from the reference).
    """

    def __init__(self, init_beta: float, target: float, horizon: int):
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, kl: float, n_episodes: int) -> None:
        error = min(max((kl - self.target) / self.target, -0.2), 0.2)
        self.beta *= 1.0 + error * min(n_episodes / self.horizon, 1.0)


def make_kl_controller(kl_cfg) -> FixedKLController | AdaptiveKLController:
    if kl_cfg.adaptive:
        return AdaptiveKLController(kl_cfg.beta, kl_cfg.target, kl_cfg.horizon)
    return FixedKLController(kl_cfg.beta)


@torch.no_grad()
def apply_kl_penalty(
    buffer: RolloutBuffer,
    policy: Any,
    reference: Any,
    beta: float,
    estimator: str,
    placement: str = "reward",
    dist: Distributed = LOCAL,
) -> dict[str, float]:
    """Measure the KL to the reference on the rollout; return KL statistics.

    placement "reward": add `-beta * kl_t` to the rewards of valid steps (before the advantages);
    "loss": leave the rewards alone (the PPO loss has a KL term). Either way the reference's
    log-probs are stored in `buffer.ref_log_probs` (the loss's KL term, the diagnostics). The
    policy's log-probs are the rollout's own (`buffer.log_probs`: the policy has not changed
    since it sampled), so only the reference runs a forward here; a reference equal to the
    policy measures 0 up to float rounding (cached vs teacher-forced forwards, about 1e-7 per
    step).
    `kl_to_ref` is the KL summed over each episode segment, averaged over segments (over the
    segments of every rank in a data-parallel run, `dist`).
    """
    if placement not in KL_PLACEMENTS:
        raise ValueError(f"kl.placement must be one of {list(KL_PLACEMENTS)}, got {placement!r}")
    batch = buffer.full_batch(policy.is_sequence_policy)
    ref_log_prob = reference.evaluate(batch)[0]  # (T, N), or (T*N,) for transition policies
    # invalid steps: the reference's log-prob (0 there), so their estimate is finite and masked
    log_prob = torch.where(batch.valid, batch.log_probs, ref_log_prob)
    T, N = buffer.n_steps, buffer.num_envs
    kl = kl_estimate(log_prob, ref_log_prob, estimator).reshape(T, N) * buffer.valid
    if placement == "reward":
        buffer.rewards.sub_(beta * kl)
    # the loss's KL term reads them (placement "loss"); the diagnostics and the trajectory log
    # read them in either placement
    buffer.ref_log_probs.copy_(ref_log_prob.reshape(T, N) * buffer.valid)
    # segments: runs of valid steps between dones (one per episode piece in this rollout)
    done = buffer.terminated | buffer.truncated
    prev_open = torch.cat([torch.zeros_like(buffer.valid[:1]), buffer.valid[:-1] & ~done[:-1]])
    kl_sum, n_segments, n_valid = dist.sum_floats(
        float(kl.sum()), int((buffer.valid & ~prev_open).sum()), int(buffer.valid.sum())
    )
    n_segments, n_valid = max(int(n_segments), 1), max(int(n_valid), 1)
    return {
        "kl_to_ref": kl_sum / n_segments,
        "kl_per_step": kl_sum / n_valid,
        "kl_segments": n_segments,
        "beta": beta,
    }
