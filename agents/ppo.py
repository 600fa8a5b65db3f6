"""PPO update (clipped surrogate, value loss, entropy bonus, early stop) for any policy that
follows the protocol in agents/policies/base.py.

Losses are masked means over `valid` steps, so the same code trains shuffled transitions (B,) and
whole-episode columns (T, B) of sequence policies. The value loss is SB3's: mean squared error
weighted by `vf_coef` (c_V = 0.5), optionally clipped around the old values.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from agents.buffer import RolloutBuffer
from agents.policies.base import Minibatch


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/inf: training stops instead of writing a broken model."""


def masked_mean(x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / count


def explained_variance(values: torch.Tensor, returns: torch.Tensor, valid: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over valid steps (nan if returns are constant)."""
    v, r = values[valid], returns[valid]
    var = r.var(unbiased=False) if r.numel() else torch.tensor(0.0)
    if r.numel() == 0 or var == 0:
        return float("nan")
    return float(1 - (r - v).var(unbiased=False) / var)


class PPO:
    """Holds the optimizer and the schedules; `update(buffer, iteration)` runs the epochs."""

    def __init__(self, policy: Any, cfg: Any, num_iterations: int):
        self.policy, self.cfg = policy, cfg
        self.num_iterations = max(int(num_iterations), 1)
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            params, lr=cfg.learning_rate, eps=cfg.adam_eps, fused=True
        )
        self.params = params
        self.generator: torch.Generator | None = None  # minibatch shuffling uses torch's RNG

    def schedules(self, iteration: int) -> tuple[float, float]:
        """Linear annealing to 0: (learning rate, clip range) for `iteration` (0-based)."""
        frac = 1.0 - iteration / self.num_iterations
        lr = self.cfg.learning_rate * (frac if self.cfg.anneal_lr else 1.0)
        clip = self.cfg.clip_range * (frac if self.cfg.anneal_clip else 1.0)
        return lr, clip

    def loss(
        self, mb: Minibatch, clip: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Total loss and (no-grad) stats for one minibatch."""
        cfg = self.cfg
        log_prob, entropy, value = self.policy.evaluate(mb)  # (B,) or (T, B)
        valid = mb.valid.to(log_prob.dtype)
        count = valid.sum().clamp(min=1.0)

        advantages = mb.advantages
        if cfg.normalize_advantage:
            mean = masked_mean(advantages, valid, count)
            var = masked_mean((advantages - mean).square(), valid, count)
            # unbiased std over the valid steps, as torch.std would give
            std = (var * count / (count - 1).clamp(min=1.0)).sqrt()
            advantages = (advantages - mean) / (std + 1e-8)

        log_ratio = log_prob - mb.log_probs
        ratio = log_ratio.exp()
        surrogate = torch.maximum(
            -advantages * ratio, -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
        )
        policy_loss = masked_mean(surrogate, valid, count)

        value_error = (value - mb.returns).square()
        if cfg.clip_range_vf is not None:
            clipped = mb.values + (value - mb.values).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
            value_error = torch.maximum(value_error, (clipped - mb.returns).square())
        value_loss = masked_mean(value_error, valid, count)
        entropy_mean = masked_mean(entropy, valid, count)

        loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy_mean
        with torch.no_grad():
            approx_kl = masked_mean((ratio - 1) - log_ratio, valid, count)  # k3 estimator
            clipfrac = masked_mean(((ratio - 1).abs() > clip).to(valid.dtype), valid, count)
        return loss, policy_loss, value_loss, entropy_mean, approx_kl, clipfrac

    def update(self, buffer: RolloutBuffer, iteration: int) -> dict[str, float]:
        """n_epochs over minibatches of `buffer` (GAE already computed). Returns mean stats."""
        cfg = self.cfg
        lr, clip = self.schedules(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sequence = self.policy.is_sequence_policy
        self.policy.train()
        stats: list[torch.Tensor] = []
        stopped_early = False
        for _epoch in range(cfg.n_epochs):
            for mb in buffer.minibatches(cfg.batch_size, sequence, self.generator):
                loss, pl, vl, ent, kl, cf = self.loss(mb, clip)
                if cfg.target_kl is not None and float(kl) > 1.5 * cfg.target_kl:
                    stopped_early = True  # SB3's rule: stop before a step that moves too far
                    break
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None and cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                stats.append(torch.stack([pl.detach(), vl.detach(), ent.detach(), kl, cf]))
            if stopped_early:
                break
        if stats:
            values = torch.stack(stats)  # (n_minibatches, 5)
            if not torch.isfinite(values).all():
                bad = values[~torch.isfinite(values).all(1)][0].tolist()
                raise NonFiniteLossError(
                    f"non-finite loss at iteration {iteration}: policy_loss={bad[0]}, "
                    f"value_loss={bad[1]}, entropy={bad[2]}, approx_kl={bad[3]}; "
                    "training stopped, the last checkpoint on disk is the last good one "
                    "(lower ppo.learning_rate or check the rewards for inf/nan)"
                )
            means = values.mean(0).tolist()
        else:
            means = [math.nan] * 5
        return {
            "policy_loss": means[0],
            "value_loss": means[1],
            "entropy": means[2],
            "approx_kl": means[3],
            "clipfrac": means[4],
            "explained_variance": explained_variance(buffer.values, buffer.returns, buffer.valid),
            "lr": lr,
            "clip_range": clip,
            "n_minibatch_steps": len(stats),
            "early_stop": float(stopped_early),
        }
