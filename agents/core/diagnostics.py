"""Diagnostics of one PPO update: measurements the update already has (docs/report.md).

The first epoch of `PPO.update` re-scores every step of the rollout with `policy.evaluate`;
`FirstEpoch` keeps those log-probs and entropies per step, in the rollout's (T, N) step order.
From them and the rollout buffer, `update_diagnostics` gives, over the rollout's valid steps
(the agent's tokens of a text run):

- `logprob_drift_max`, `logprob_drift_p95`: |log-prob at rollout - log-prob of the first
  `evaluate`| over the steps evaluated before the update's first optimizer step: every step when
  one minibatch holds the rollout, else the first minibatch's (a sample of 1 / n_minibatches of
  the rollout). A policy whose `act` and `evaluate` compute the same distribution gives ~1e-7 in
  float32; bfloat16 autocast gives ~1e-2.
- `outside_clip_band_epoch0`: the fraction of the steps whose epoch-0 ratio r = exp(log-prob of
  the evaluate - log-prob at rollout) lies outside [1 - clip, 1 + clip]. Each minibatch's ratio
  is the one its own loss uses in epoch 0: computed before that minibatch's optimizer step, so
  after the steps of the minibatches before it in the epoch (exactly 0 with one minibatch and a
  consistent policy; with several, it also measures how far the first steps moved the others).
- `outside_clip_band_first_minibatch`: the same fraction over the steps evaluated before any
  optimizer step (the drift's steps): the consistency check alone, 0 for a policy whose `act`
  and `evaluate` agree (equal to the epoch-0 fraction with one minibatch an epoch). With several
  minibatches the epoch-0 fraction is not 0 in a healthy run: the main job
  (configs/text_edit_distance.yaml, 4 minibatches) shows 1-2.5%, and 9.6% at its first
  iteration, where Adam's first steps move every weight by about the learning rate.
- `ess`: the effective sample size of those epoch-0 ratios as importance weights, (sum r)^2 /
  (n sum r^2), a fraction in (0, 1]: 1 when all are equal.
- `truncated_mass`: the mean probability mass the sampling's top-k / top-p cut away at each step
  (`policy.truncated_mass`; 0 when the policy samples from its whole distribution).
- `kl_token_p95` (with a reference): the 95th percentile of the per-step KL estimate to the
  reference (`kl.estimator`; log pi - log ref for k1).
- `entropy_first_token`, `entropy_last_token`: the mean entropy (of the epoch-0 evaluate) at the
  first step of every episode that starts in the rollout and at the last step of every episode
  that ends in it (the first and last agent tokens of a text episode; CartPole's first and last
  steps).

Statistics only: nothing here draws random numbers or changes the buffer, the policy or the
update. Data-parallel runs (`dist`): counts and sums are summed over ranks (exact), the drift max
is the max over ranks, and each 95th percentile is computed per rank and averaged over the ranks
that have steps (an approximation of the global quantile: one small all-reduce, no gather).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from agents.core.buffer import RolloutBuffer
from agents.core.distributed import LOCAL, Distributed
from agents.core.kl import kl_estimate
from agents.policies.base import Minibatch

DIAGNOSTICS = (
    "logprob_drift_max", "logprob_drift_p95", "outside_clip_band_epoch0",
    "outside_clip_band_first_minibatch", "ess", "truncated_mass", "kl_token_p95",
    "entropy_first_token", "entropy_last_token",
)  # fmt: skip


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 1 else x.reshape(-1)


class FirstEpoch:
    """What the first epoch's `evaluate` calls gave for each step of the rollout, flat (T*N,)
    in the buffer's order t * N + row (`Minibatch.step_index`)."""

    def __init__(self, n_steps: int, device: torch.device):
        self.log_prob = torch.zeros(n_steps, device=device)  # (T*N,)
        self.entropy = torch.zeros(n_steps, device=device)  # (T*N,)
        self.seen = torch.zeros(n_steps, dtype=torch.bool, device=device)  # evaluated in epoch 0
        self.fresh = torch.zeros(n_steps, dtype=torch.bool, device=device)  # ... before a step

    @torch.no_grad()
    def add(
        self,
        mb: Minibatch,
        outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        before_any_step: bool,
    ) -> None:
        """Keep one minibatch's `evaluate` outputs (log_prob, entropy, value)."""
        index = _flat(mb.step_index)
        log_prob, entropy, _ = outputs
        self.log_prob[index] = _flat(log_prob).detach().float()
        self.entropy[index] = _flat(entropy).detach().float()
        self.seen[index] = True
        if before_any_step:
            self.fresh[index] = True


def _p95(x: torch.Tensor) -> tuple[float, float]:
    """(95th percentile of `x` (linear interpolation), 1.0), or (0.0, 0.0) when `x` is empty:
    the two numbers a rank adds to the average over ranks."""
    if x.numel() == 0:
        return 0.0, 0.0
    return float(np.quantile(x.double().cpu().numpy(), 0.95)), 1.0


@torch.no_grad()
def update_diagnostics(
    buffer: RolloutBuffer,
    first: FirstEpoch,
    clip: float,
    kl_estimator: str | None = None,
    dist: Distributed = LOCAL,
) -> dict[str, float]:
    """The diagnostics of the update that filled `first` from `buffer` (module docstring), with
    the update's clip range `clip`; `kl_estimator`: the KL estimator when a reference exists
    (then `buffer.ref_log_probs` holds its log-probs), None without one. NaN where a statistic
    has no step (e.g. no episode ended in the rollout)."""
    valid = buffer.valid.reshape(-1)  # (T*N,)
    rollout = buffer.log_probs.reshape(-1)
    log_ratio = first.log_prob - rollout  # the loss's log-ratio, float32
    seen, fresh = first.seen & valid, first.fresh & valid
    drift = log_ratio[fresh].abs()
    ratio = log_ratio[seen].exp()  # as the loss computes it (float32)
    outside = ((ratio - 1).abs() > clip).sum()  # the loss's clipfrac rule
    outside_fresh = ((log_ratio[fresh].exp() - 1).abs() > clip).sum()
    ratio = ratio.double()
    starts = buffer.episode_starts.reshape(-1) & seen
    ends = (buffer.terminated | buffer.truncated).reshape(-1) & seen
    entropy = first.entropy.double()
    cut_mass = buffer.truncated_mass.reshape(-1)[valid].double()
    cut = cut_mass.sum() if buffer.has_truncated_mass else 0
    drift_p95, drift_has = _p95(drift)
    kl_p95, kl_has = 0.0, 0.0
    if kl_estimator is not None:
        ref = buffer.ref_log_probs.reshape(-1)[valid]
        kl_p95, kl_has = _p95(kl_estimate(rollout[valid], ref, kl_estimator))
    (n_seen, n_outside, n_fresh, n_outside_fresh, r_sum, r_sq, n_valid, cut_sum, n_starts,
     start_entropy, n_ends, end_entropy, drift_p95, drift_has, kl_p95, kl_has) = dist.sum_floats(
        int(seen.sum()), int(outside), int(fresh.sum()), int(outside_fresh),
        float(ratio.sum()), float(ratio @ ratio),
        int(valid.sum()), float(cut), int(starts.sum()), float(entropy[starts].sum()),
        int(ends.sum()), float(entropy[ends].sum()), drift_p95, drift_has, kl_p95, kl_has,
    )  # fmt: skip
    (drift_max,) = dist.max_floats(float(drift.max()) if drift.numel() else -math.inf)

    def ratio_of(a: float, b: float) -> float:
        return a / b if b > 0 else math.nan

    out = {
        "logprob_drift_max": drift_max if drift_max > -math.inf else math.nan,
        "logprob_drift_p95": ratio_of(drift_p95, drift_has),
        "outside_clip_band_epoch0": ratio_of(n_outside, n_seen),
        "outside_clip_band_first_minibatch": ratio_of(n_outside_fresh, n_fresh),
        "ess": ratio_of(r_sum * r_sum, n_seen * r_sq),
        "truncated_mass": ratio_of(cut_sum, n_valid) if buffer.has_truncated_mass else 0.0,
        "entropy_first_token": ratio_of(start_entropy, n_starts),
        "entropy_last_token": ratio_of(end_entropy, n_ends),
    }
    if kl_estimator is not None:
        out["kl_token_p95"] = ratio_of(kl_p95, kl_has)
    return {k: out[k] for k in DIAGNOSTICS if k in out}
