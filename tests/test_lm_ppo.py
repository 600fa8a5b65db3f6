"""The generic PPO core driving the LM policy on TextRLHF-v0 (tiny random models, fast)."""

from __future__ import annotations

import pytest
import torch
from helpers import REPO, text_config

from agents.core.kl import apply_kl_penalty
from agents.policies import make_policy
from agents.rlhf.sft import score_on_task
from agents.run import checkpoint as ckpt
from agents.run.config import load_config
from agents.run.trainer import Trainer


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_at_init_kl_is_zero_and_ratio_is_one(gpt2_ctx64_path, tmp_path, critic):
    """...and the rollout's values are evaluate's: from the cached steps (shared critic), or
    from the one batched forward after the rollout (separate critic, `rollout_values`)."""
    cfg = text_config(gpt2_ctx64_path, str(tmp_path))
    cfg["policy"]["critic"] = critic
    trainer = Trainer(load_config(cfg))
    trainer.collector.collect()
    buffer = trainer.buffer
    assert buffer.valid.any()
    stats = apply_kl_penalty(buffer, trainer.policy, trainer.reference, 0.1, "k1")
    assert abs(stats["kl_to_ref"]) < 1e-5  # the rollout's cached log-probs vs teacher-forced
    mb = next(iter(buffer.minibatches(trainer.cfg.ppo.batch_size, sequence=True)))
    log_prob, _, value = trainer.policy.evaluate(mb)
    valid = mb.valid
    ratio = torch.exp(log_prob - mb.log_probs)[valid]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(value[valid], mb.values[valid], atol=1e-5, rtol=0)


def test_one_update_changes_policy_and_value_head(gpt2_ctx64_path, tmp_path):
    trainer = Trainer(load_config(text_config(gpt2_ctx64_path, str(tmp_path))))
    policy = trainer.policy
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    metrics = trainer.iterate()
    after = policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "value_head.weight" in changed
    assert any(k.startswith("model.transformer.h.") for k in changed)
    assert "model.lm_head.weight" in changed
    # the first rollout is scored by the policy that is still equal to the reference
    assert metrics["kl/beta"] == 0.1 and abs(metrics["kl/kl_to_ref"]) < 1e-5
    # the reference stays frozen; it is the actor alone (no value head: it only scores actions)
    ref = trainer.reference.state_dict()
    assert set(ref) == {k for k in before if k.startswith("model.")}
    assert all(torch.equal(before[k], ref[k]) for k in ref)


def test_checkpoint_round_trip_restores_the_lm_policy(gpt2_ctx64_path, tmp_path):
    trainer = Trainer(load_config(text_config(gpt2_ctx64_path, str(tmp_path))), tmp_path / "run")
    trainer.iterate()
    path = trainer.save()
    _, tensors = ckpt.read_checkpoint(path)
    env = trainer.env
    fresh = make_policy(trainer.cfg.policy, env.single_observation_space, env.single_action_space)
    ckpt.load_policy_weights(fresh, tensors, path)
    for key, value in trainer.policy.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    trainer.collector.collect()
    batch = trainer.buffer.full_batch(sequence=True)
    with torch.no_grad():
        for a, b in zip(trainer.policy.evaluate(batch), fresh.evaluate(batch)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_checkpoint_whose_reference_has_a_value_head_still_loads(gpt2_ctx64_path, tmp_path):
    """Checkpoints before 2026-11-30 saved the LM reference with its (unused) value head and
    separate critic; the reference now holds the actor alone. Such keys are skipped on load."""
    cfg = load_config(text_config(gpt2_ctx64_path, str(tmp_path)))
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.iterate()
    own = trainer.reference.state_dict
    legacy = {"value_head.weight": torch.ones(1, 8), "value_head.bias": torch.zeros(1)}
    trainer.reference.state_dict = lambda: {**own(), **legacy}  # as the old reference wrote
    path = trainer.save()
    assert "reference/value_head.weight" in ckpt.read_checkpoint(path)[1]
    resumed = Trainer(cfg, tmp_path / "run", resume=True)
    for key, value in own().items():
        assert torch.equal(resumed.reference.state_dict()[key], value), key


@pytest.mark.slow
def test_ppo_improves_heldout_edit_distance_reward():
    """configs/text_edit_distance.yaml as shipped (~5 min) with seed 2, the seed that was slow
    before (0.737 on the test split with raw scores, 0.797 with score normalization at 64 envs x
    4 epochs): the held-out reward of the default SFT model reaches the 0.85 of issue 16 (0.945
    in the run's own evaluation, docs/lm.md "Every seed"), with the KL bounded."""
    cfg = load_config(REPO / "configs" / "text_edit_distance.yaml", ["seed=2"])
    trainer = Trainer(cfg)  # no run folder: nothing written
    before = score_on_task(trainer.policy, n=256, seed=0)["mean_score"]
    kls = []
    while trainer.iteration < trainer.num_iterations:
        kls.append(trainer.iterate()["kl/kl_to_ref"])
    after = score_on_task(trainer.policy, n=256, seed=0)["mean_score"]
    print(f"held-out reward: SFT {before:.3f} -> PPO {after:.3f}; final KL {kls[-1]:.2f}")
    assert after >= 0.85
    assert max(kls[-20:]) < 15.0  # measured: 5-8 nats per episode at the end over 5 seeds
