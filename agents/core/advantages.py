"""Advantage estimators: GAE (with a critic) and the critic-free outcome estimators.

- "gae": generalized advantage estimation from per-step rewards and the critic's values
  (`RolloutBuffer.compute_gae`, Schulman et al. 2016). The default.
- "grpo": group-relative (Shao et al. 2024): each episode's return minus its group's mean,
  divided by the group's standard deviation of the task scores (`scale_std`; off gives Dr. GRPO's
  unscaled form).
- "rloo": REINFORCE leave-one-out (Ahmadian et al. 2024): the return minus the mean return of the
  other K - 1 episodes of the group, i.e. K / (K - 1) * (R_i - mean_group).
- "reinforce_pp": REINFORCE++ (Hu 2025): each token's reward-to-go (the KL penalties of this and
  later tokens plus the score, when the KL sits in the reward), whitened over every valid token of
  the batch; with groups (K > 1) the group's mean score is subtracted first (its "baseline"
  variant). `reinforce_pp_form: episode` whitens one return per episode instead.

GRPO and RLOO use outcome supervision: an episode's return (the sum of its rewards, per-step KL
penalties included when they sit in the reward) is one number, and every valid step of that
episode gets the episode's advantage. All three need rollouts in which every env row holds
exactly one whole episode, as lockstep vector envs give (each rollout starts with a reset of all
rows and ends when every row is done); a group is K consecutive rows that started from the same
state.

Groups are compared on their task scores (the returns before the KL penalty was added, which the
trainer measures first): a group whose K scores tie is a zero-variance group (logged), and GRPO's
std is the scores' std. The KL part of the returns is added back centered but never
divided by that std: in a tied group it is the only spread, and the division would blow a
penalty of a few hundredths up to the size of a real score difference. Without a KL penalty in
the reward, a zero-variance group gets advantage exactly 0.
"""

from __future__ import annotations

import math

import torch

from agents.core.buffer import RolloutBuffer
from agents.core.distributed import LOCAL, Distributed

GROUP_ESTIMATORS = ("grpo", "rloo")  # need group_size >= 2
CRITIC_FREE = ("grpo", "rloo", "reinforce_pp")
ESTIMATORS = ("gae", *CRITIC_FREE)
# REINFORCE++: whiten each token's reward-to-go (the paper's form) or each episode's return
REINFORCE_PP_FORMS = ("token", "episode")


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


def reward_to_go(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(T, N) rewards of one-episode-per-row rollouts -> (T, N) undiscounted reward-to-go,
    sum_{t' >= t} r_t' over the valid steps of the row (0 on invalid steps)."""
    r = rewards * valid
    return r.flip(0).cumsum(0).flip(0) * valid


def _zero_variance(grouped: torch.Tensor) -> torch.Tensor:
    """(G, K) -> (G,) bool: the groups whose K values all tie."""
    return grouped.max(1).values == grouped.min(1).values


def group_advantages(
    returns: torch.Tensor,
    estimator: str,
    group_size: int,
    scale_std: bool = True,
    scores: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, float]:
    """(N,) episode returns -> (N,) advantages, and the fraction of zero-variance groups.

    Rows [g*K, (g+1)*K) form group g. `scores`: the (N,) task scores, the returns before a KL
    penalty in the reward (None: the returns hold none); groups are compared on them (module
    docstring). Standard deviations are the sample (unbiased) ones, as `torch.std` computes them;
    with K = 1 there are no groups (REINFORCE++ only). REINFORCE++ here is its per-episode form.
    """
    check_estimator(estimator, group_size)
    N, K = returns.numel(), group_size
    if N % K:
        raise ValueError(f"{N} rows do not split into groups of advantage.group_size={K}")
    total = returns.double().reshape(N // K, K)  # (G, K) returns, KL penalty included
    scores = scores.double().reshape(N // K, K) if scores is not None else total  # (G, K)
    zero_var = float(_zero_variance(scores).double().mean()) if K > 1 else 0.0
    if estimator == "grpo":
        adv = scores - scores.mean(1, keepdim=True)
        if scale_std:
            adv = adv / (scores.std(1, keepdim=True) + eps)
        if scores is not total:  # the KL part of the returns: centered, at its reward scale
            penalty = total - scores  # (G, K)
            adv = adv + (penalty - penalty.mean(1, keepdim=True))
    elif estimator == "rloo":
        adv = (total - total.mean(1, keepdim=True)) * (K / (K - 1))
    else:  # reinforce_pp, per episode: optional group baseline, then whitening over the batch
        centered = total - total.mean(1, keepdim=True) if K > 1 else total
        flat = centered.reshape(-1)
        std = flat.std() if flat.numel() > 1 else flat.new_tensor(0.0)
        adv = (centered - flat.mean()) / (std + eps)
    return adv.reshape(N).to(returns.dtype), zero_var


def reinforce_pp_token_advantages(
    rewards: torch.Tensor,
    valid: torch.Tensor,
    group_size: int,
    scores: torch.Tensor | None = None,
    dist: Distributed = LOCAL,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """REINFORCE++ as the paper computes it: (T, N) advantages, the (T, N) reward-to-go, and the
    fraction of zero-variance groups.

    Each valid token's reward-to-go (its own KL penalty, the later tokens' and the score, when the
    KL sits in `rewards`) minus, with K > 1, the mean task score of its group (`scores`, (N,): the
    returns before the KL penalty; None: the returns), whitened over the valid tokens of all
    ranks. A group sits on one rank, so only the moments cross processes."""
    T, N = rewards.shape
    K = group_size
    if N % K:
        raise ValueError(f"{N} rows do not split into groups of advantage.group_size={K}")
    to_go = reward_to_go(rewards.double(), valid)  # (T, N)
    zero_groups = 0.0
    if K > 1:
        if scores is None:
            scores = episode_returns(rewards, valid)
        grouped = scores.double().reshape(N // K, K)  # (G, K)
        zero_groups = float(_zero_variance(grouped).double().sum())
        baseline = grouped.mean(1).repeat_interleave(K)  # (N,)
        to_go = (to_go - baseline) * valid
    n, mean, m2 = dist.moments(to_go[valid])
    std = math.sqrt(m2 / max(n - 1, 1))  # unbiased, like torch.std
    adv = (to_go - mean) / (std + eps) * valid
    zero_groups, groups = dist.sum_floats(zero_groups, N // K)
    return adv.to(rewards.dtype), to_go.to(rewards.dtype), zero_groups / groups if K > 1 else 0.0


@torch.no_grad()
def outcome_advantages(
    buffer: RolloutBuffer,
    estimator: str,
    group_size: int,
    scale_std: bool = True,
    dist: Distributed = LOCAL,
    reinforce_pp_form: str = "token",
    scores: torch.Tensor | None = None,
) -> dict[str, float]:
    """Fill `buffer.advantages` and `buffer.returns` for a critic-free estimator: the episode's
    advantage and return on each of its valid steps (GRPO, RLOO, per-episode REINFORCE++), or each
    token's own (REINFORCE++, `reinforce_pp_form: token`). Returns statistics.

    `scores`: this rank's (N,) task scores, the episode returns measured before a KL penalty was
    added to the rewards (`episode_returns` of the rewards then); None when the rewards hold no
    KL penalty. `buffer` holds one whole episode per env row (a lockstep rollout). In a
    data-parallel run the per-episode estimators gather the returns of every rank (rank order =
    global row order), compute the advantages over all of them as one process would, and this
    rank keeps its own rows; per-token REINFORCE++ sums its whitening moments over ranks."""
    if reinforce_pp_form not in REINFORCE_PP_FORMS:
        raise ValueError(
            f"advantage.reinforce_pp_form must be one of {list(REINFORCE_PP_FORMS)}, got "
            f"{reinforce_pp_form!r}"
        )
    valid = buffer.valid
    returns = episode_returns(buffer.rewards, valid)  # (N,) this rank's rows
    N = returns.numel()
    if estimator == "reinforce_pp" and reinforce_pp_form == "token":
        adv, to_go, zero_var = reinforce_pp_token_advantages(
            buffer.rewards, valid, group_size, scores, dist
        )
        buffer.advantages.copy_(adv)
        buffer.returns.copy_(to_go)
        total, n = dist.sum_floats(float(returns.sum()), N)
        return {"zero_variance_groups": zero_var, "episode_return_mean": total / n}
    if dist.active:
        lists = {"returns": returns.tolist()}
        if scores is not None:
            lists["scores"] = scores.tolist()
        gathered = dist.gather_lists(lists)  # every rank passes scores, or none does
        everything = torch.tensor(gathered["returns"], dtype=returns.dtype)
        all_scores = gathered.get("scores")
        if all_scores is not None:
            all_scores = torch.tensor(all_scores, dtype=returns.dtype)
        adv, zero_var = group_advantages(everything, estimator, group_size, scale_std, all_scores)
        adv = adv[dist.rank * N : (dist.rank + 1) * N]
        mean_return = float(everything.mean())
    else:
        adv, zero_var = group_advantages(returns, estimator, group_size, scale_std, scores)
        mean_return = float(returns.mean())
    mask = valid.to(buffer.advantages.dtype)
    torch.mul(adv.unsqueeze(0), mask, out=buffer.advantages)  # (T, N)
    torch.mul(returns.unsqueeze(0), mask, out=buffer.returns)
    return {"zero_variance_groups": zero_var, "episode_return_mean": mean_return}
