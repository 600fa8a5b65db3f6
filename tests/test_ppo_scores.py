"""Score normalization (agents/core/scores.py): hand-computed values, running stats, trainer wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import text_config

from agents.core.scores import ScoreNormalizer
from agents.run import checkpoint as ckpt
from agents.run.config import load_config
from agents.run.trainer import Trainer, new_run_dir


def rollout(scores_at_end: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T=3, N=len) rewards with 0.5 on intermediate steps and the score at t=2 (the end)."""
    n = len(scores_at_end)
    rewards = torch.full((3, n), 0.5)
    rewards[2] = torch.tensor(scores_at_end)
    ends = torch.zeros(3, n, dtype=torch.bool)
    ends[2] = True
    return rewards, ends, torch.ones(3, n, dtype=torch.bool)


def test_batch_whitening_by_hand():
    rewards, ends, valid = rollout([1.0, 3.0, 5.0])
    valid[2, 2] = False  # an invalid end step is neither counted nor changed
    stats = ScoreNormalizer("batch")(rewards, ends, valid)
    # scores 1, 3: mean 2, population std 1 -> -1, +1
    assert rewards[2].tolist() == [-1.0, 1.0, 5.0]
    assert rewards[:2].eq(0.5).all()  # intermediate rewards untouched
    assert stats == {"raw_mean": 2.0, "raw_std": 1.0}


def test_running_stats_match_numpy_over_all_scores_so_far():
    norm = ScoreNormalizer("running")
    first, second = [1.0, 2.0, 6.0], [10.0, -4.0]
    norm(*rollout(first))
    rewards, ends, valid = rollout(second)
    stats = norm(rewards, ends, valid)
    seen = np.array(first + second)
    assert stats["running_mean"] == pytest.approx(seen.mean())
    assert stats["running_std"] == pytest.approx(seen.std())
    expected = (np.array(second) - seen.mean()) / seen.std()
    assert rewards[2].numpy() == pytest.approx(expected, rel=1e-6)
    restored = ScoreNormalizer("running")
    restored.load_state_dict(norm.state_dict())
    assert (restored.mean, restored.std) == (norm.mean, norm.std)


def test_single_score_is_centered_clip_is_applied_and_none_is_identity():
    rewards, ends, valid = rollout([4.0])
    ScoreNormalizer("running")(rewards, ends, valid)
    assert rewards[2].tolist() == [0.0]  # std of one score is taken as 1
    rewards, ends, valid = rollout([0.0, 0.0, 0.0, 10.0])
    ScoreNormalizer("batch", clip=1.0)(rewards, ends, valid)
    assert rewards[2].max() == 1.0 and rewards[2].min() >= -1.0
    rewards, ends, valid = rollout([7.0, 9.0])
    assert ScoreNormalizer("none")(rewards, ends, valid) == {}
    assert rewards[2].tolist() == [7.0, 9.0]


def test_bad_settings_name_the_value_and_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"score.normalize must be one of \['none', 'running'"):
        load_config(None, ["score.normalize=whiten"])
    with pytest.raises(ValueError, match="score.clip"):
        load_config(None, ["score.clip=0"])
    with pytest.raises(ValueError, match="did you mean 'normalize'"):
        load_config(None, ["score.normalise=batch"])


def test_trainer_normalizes_text_scores_and_checkpoints_the_running_stats(
    gpt2_ctx64_path, tmp_path
):
    data = text_config(gpt2_ctx64_path, str(tmp_path))
    data["score"] = {"normalize": "running"}
    data["env"]["kwargs"]["missing_eos_penalty"] = 1.0
    cfg = load_config(data)
    trainer = Trainer(cfg, new_run_dir(cfg, "a"))
    metrics = trainer.iterate()
    # the env reward of a text episode is its (penalized) score at the last step
    assert trainer.score_normalizer.count == cfg.env.num_envs
    assert metrics["score/running_mean"] == pytest.approx(metrics["rollout/ep_return"])
    ends = (trainer.buffer.terminated | trainer.buffer.truncated) & trainer.buffer.valid
    normalized = trainer.buffer.rewards[ends].double()
    # first iteration: policy == reference, so the KL penalty is 0 and the scores are whitened
    assert float(normalized.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(normalized.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    path = trainer.save()
    resumed = Trainer(cfg, trainer.run_dir, resume=True)
    assert resumed.score_normalizer.state_dict() == trainer.score_normalizer.state_dict()
    meta, _ = ckpt.read_checkpoint(path)
    assert meta["score_normalizer"]["count"] == cfg.env.num_envs
