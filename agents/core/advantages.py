"""Advantage estimators: GAE (with a critic) and the critic-free outcome estimators.

- "gae": generalized advantage estimation from per-step rewards and the critic's values
  (`RolloutBuffer.compute_gae`, Schulman et al. 2016). The default.
- "grpo": group-relative (Shao et al. 2024): each episode's return minus its group's mean,
  divided by the group's standard deviation (`scale_std`; off gives Dr. GRPO's unscaled form).
- "rloo": REINFORCE leave-one-out (Ahmadian et al. 2024): the return minus the mean return of the
  other K - 1 episodes of the group, i.e. K / (K - 1) * (R_i - mean_group).
- "reinforce_pp": REINFORCE++ (Hu 2025): returns whitened over the whole batch; with groups
  (K > 1) the group mean is subtracted first (its "baseline" variant).

The critic-free estimators use outcome supervision: an episode's return (the sum of its rewards,
per-step KL penalties included when they sit in the reward) is one number, and every valid step
of that episode gets the episode's advantage. They need rollouts in which every env row holds
exactly one whole episode, as lockstep vector envs give (each rollout starts with a reset of all
rows and ends when every row is done); a group is K consecutive rows that started from the same
state. Zero-variance groups (all K returns equal) get advantage 0.
"""

from __future__ import annotations

import torch

from agents.core.buffer import RolloutBuffer
from agents.core.distributed import LOCAL, Distributed

GROUP_ESTIMATORS = ("grpo", "rloo")  # need group_size >= 2
CRITIC_FREE = ("grpo", "rloo", "reinforce_pp")
ESTIMATORS = ("gae", *CRITIC_FREE)


def check_estimator(estimator: str, group_size: int) -> None:
    """ValueError naming a bad `advantage.estimator` / `advantage.group_size`."""
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"advantage.estimator must be one of {list(ESTIMATORS)}, got {estimator!r}"
        )
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"advantage.group_size must be an int >= 1, got {group_size!r}")
    if estimator in GROUP_ESTIMATORS and group_size < 2:
        raise ValueError(
            f"advantage.estimator={estimator!r} compares the K episodes of a group: it needs "
            f"advantage.group_size >= 2, got {group_size}"
        )


def episode_returns(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(T, N) rewards of one-episode-per-row rollouts -> (N,) episode returns (valid steps)."""
    return (rewards * valid).sum(0)


def group_advantages(
    returns: torch.Tensor,
    estimator: str,
    group_size: int,
    scale_std: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, float]:
    """(N,) episode returns -> (N,) advantages, and the fraction of zero-variance groups.

    Rows [g*K, (g+1)*K) form group g. Standard deviations are the sample (unbiased) ones, as
    `torch.std` computes them; with K = 1 there are no groups (REINFORCE++ only)."""
    check_estimator(estimator, group_size)
    N, K = returns.numel(), group_size
    if N % K:
        raise ValueError(f"{N} rows do not split into groups of advantage.group_size={K}")
    grouped = returns.double().reshape(N // K, K)  # (G, K)
    zero_var = 0.0
    if K > 1:
        spread = grouped.max(1).values - grouped.min(1).values  # (G,)
        zero_var = float((spread == 0).double().mean())
    if estimator == "grpo":
        centered = grouped - grouped.mean(1, keepdim=True)
        if scale_std:
            centered = centered / (grouped.std(1, keepdim=True) + eps)
        adv = centered
    elif estimator == "rloo":
        adv = (grouped - grouped.mean(1, keepdim=True)) * (K / (K - 1))
    else:  # reinforce_pp: optional group baseline, then whitening over the whole batch
        centered = grouped - grouped.mean(1, keepdim=True) if K > 1 else grouped
        flat = centered.reshape(-1)
        std = flat.std() if flat.numel() > 1 else flat.new_tensor(0.0)
        adv = (centered - flat.mean()) / (std + eps)
    return adv.reshape(N).to(returns.dtype), zero_var


@torch.no_grad()
def outcome_advantages(
    buffer: RolloutBuffer,
    estimator: str,
    group_size: int,
    scale_std: bool = True,
    dist: Distributed = LOCAL,
) -> dict[str, float]:
    """Fill `buffer.advantages` (the episode's advantage on each of its valid steps) and
    `buffer.returns` (the episode return on each valid step) for a critic-free estimator.

    `buffer` holds one whole episode per env row (a lockstep rollout). In a data-parallel run the
    returns of every rank are gathered (rank order = global row order), the advantages computed
    over all of them as one process would, and this rank keeps its own rows. Returns statistics."""
    valid = buffer.valid
    returns = episode_returns(buffer.rewards, valid)  # (N,) this rank's rows
    N = returns.numel()
    if dist.active:
        everything = torch.tensor(dist.gather_floats(returns.tolist()), dtype=returns.dtype)
        adv, zero_var = group_advantages(everything, estimator, group_size, scale_std)
        adv = adv[dist.rank * N : (dist.rank + 1) * N]
        mean_return = float(everything.mean())
    else:
        adv, zero_var = group_advantages(returns, estimator, group_size, scale_std)
        mean_return = float(returns.mean())
    mask = valid.to(buffer.advantages.dtype)
    torch.mul(adv.unsqueeze(0), mask, out=buffer.advantages)  # (T, N)
    torch.mul(returns.unsqueeze(0), mask, out=buffer.returns)
    return {"zero_variance_groups": zero_var, "episode_return_mean": mean_return}
