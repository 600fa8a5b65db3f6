"""Normalization of episode-end scores, applied to the env rewards before the KL penalty.

In RLHF the task reward is one score at the last step of an episode (a reward model's logit, an
edit distance), and its scale decides how it weighs against the per-token KL penalty `-beta * kl_t`.
Normalizing it makes `beta` mean the same thing whatever the reward function's scale:

- "running": `(s - mean) / std` with the mean and std of every score seen so far, this rollout's
  included (TRL's score normalization, OpenRLHF's `normalize_reward`);
- "batch": whitening over the scores of this rollout only (mean 0, std 1);
- "none": the scores as the env gave them.

A score is the env reward at a step where an episode ends (terminated or truncated). The other
steps' rewards are left alone, so this is meant for tasks whose reward comes at the end
(TextRLHF-v0); on dense-reward envs it would touch only the last step of each episode.
"""

from __future__ import annotations

import math

import torch

from agents.core.distributed import LOCAL, Distributed

SCORE_NORMS = ("none", "running", "batch")


def check_score_settings(mode: str, clip: float | None) -> None:
    """Raise ValueError naming a bad `score.normalize` / `score.clip` and the allowed values."""
    if mode not in SCORE_NORMS:
        raise ValueError(f"score.normalize must be one of {list(SCORE_NORMS)}, got {mode!r}")
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"score.clip must be null or a finite number > 0, got {clip!r}")


class ScoreNormalizer:
    """Normalizes the end-of-episode rewards in a rollout buffer in place; keeps running stats."""

    def __init__(self, mode: str = "none", clip: float | None = None, dist: Distributed = LOCAL):
        check_score_settings(mode, clip)
        self.mode, self.clip = mode, clip
        self.dist = dist  # data-parallel: moments over the scores of every rank
        self.count, self.mean, self.m2 = 0, 0.0, 0.0  # running moments (Chan et al. merge)

    @property
    def std(self) -> float:
        """Running std; 1.0 until two scores differ (so a lone score is only centered)."""
        var = self.m2 / self.count if self.count else 0.0
        return math.sqrt(var) if var > 0 else 1.0

    def _update(self, scores: torch.Tensor, moments: tuple[int, float, float] | None) -> None:
        if moments is None:
            n = scores.numel()
            batch_mean = float(scores.mean())
            batch_m2 = float((scores - batch_mean).square().sum())
        else:
            n, batch_mean, batch_m2 = moments
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    @torch.no_grad()
    def __call__(
        self, rewards: torch.Tensor, ends: torch.Tensor, valid: torch.Tensor
    ) -> dict[str, float]:
        """Normalize `rewards[ends & valid]` in place ((T, N) tensors); return score statistics."""
        if self.mode == "none":
            return {}
        at_end = ends & valid  # (T, N)
        scores = rewards[at_end].double()  # (K,)
        moments = None
        if self.dist.active:  # every rank reduces, even one without scores (no deadlock)
            moments = self.dist.moments(scores)
            n, mean, m2 = moments
            if n == 0:
                return {}
            stats = {"raw_mean": mean, "raw_std": math.sqrt(m2 / n)}
        elif scores.numel() == 0:
            return {}
        else:
            stats = {"raw_mean": float(scores.mean()), "raw_std": float(scores.std(unbiased=False))}
        if self.mode == "running":
            self._update(scores, moments)
            mean, std = self.mean, self.std
            stats.update(running_mean=mean, running_std=std)
        else:
            mean = stats["raw_mean"]
            std = stats["raw_std"] if stats["raw_std"] > 0 else 1.0
        normalized = (scores - mean) / std
        if self.clip is not None:
            normalized = normalized.clamp(-self.clip, self.clip)  # documented, opt-in clip
        rewards[at_end] = normalized.to(rewards.dtype)
        return stats

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), state["mean"], state["m2"]
