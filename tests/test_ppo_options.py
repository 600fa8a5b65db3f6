"""PPO update options on CartPole: clipped value loss, entropy bonus, gradient clipping, Adam
settings, vf_coef, the KL penalty against a different reference, async rollouts."""

from __future__ import annotations

import math

import pytest
import torch

from agents.core.kl import apply_kl_penalty
from agents.policies import frozen_copy
from agents.run.config import load_config
from agents.run.trainer import Trainer

SMALL = ["run.progress=false", "total_timesteps=2048", "ppo.n_epochs=1"]
CLIP = 0.2


def collected(cartpole_yaml, *overrides: str) -> Trainer:
    """A trainer whose buffer holds one rollout with GAE computed."""
    cfg = load_config(cartpole_yaml, [*SMALL, *overrides])
    trainer = Trainer(cfg)
    trainer.collector.collect()
    trainer.buffer.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
    return trainer


def losses(trainer: Trainer, mb) -> tuple[float, torch.Tensor]:
    """(total loss, stats) of `mb` without grad."""
    with torch.no_grad():
        loss, stats = trainer.ppo.loss(mb, trainer.ppo.prepare(mb, CLIP), CLIP)
    return float(loss), stats


def test_clipped_value_loss_matches_the_hand_computed_max(cartpole_yaml):
    c = 0.05
    trainer = collected(cartpole_yaml, f"ppo.clip_range_vf={c}")
    mb = trainer.buffer.full_batch(sequence=False)
    valid = mb.valid
    assert (~valid).any()  # NEXT_STEP reset steps exist and must be left out
    # right after the rollout the value head has not moved: clipping changes nothing
    _, stats = losses(trainer, mb)
    unclipped = ((mb.values - mb.returns)[valid] ** 2).mean()
    torch.testing.assert_close(stats[1], unclipped, rtol=1e-6, atol=0)
    # move the value head so that some (not all) values leave the clip band around v_old
    with torch.no_grad():
        last, g = trainer.policy.critic[-1], torch.Generator().manual_seed(0)
        last.weight.add_(0.05 * torch.randn(last.weight.shape, generator=g))
        last.bias.add_(0.03)
    with torch.no_grad():
        v = trainer.policy.evaluate(mb)[2]
    moved = (v - mb.values).abs() > c
    assert moved[valid].any() and not moved[valid].all()
    clipped_v = mb.values + (v - mb.values).clamp(-c, c)
    error = torch.maximum((v - mb.returns) ** 2, (clipped_v - mb.returns) ** 2)
    expected = error[valid].mean()
    _, stats = losses(trainer, mb)
    torch.testing.assert_close(stats[1], expected, rtol=1e-5, atol=0)
    trainer.cfg.ppo.clip_range_vf = None
    _, stats_free = losses(trainer, mb)
    free = ((v - mb.returns)[valid] ** 2).mean()
    torch.testing.assert_close(stats_free[1], free, rtol=1e-5, atol=0)
    assert float(stats[1]) > float(stats_free[1]) * (1 + 1e-3)  # max() only ever adds
    trainer.env.close()


def test_entropy_bonus_subtracts_ent_coef_times_masked_mean_entropy(cartpole_yaml):
    trainer = collected(cartpole_yaml)
    mb = trainer.buffer.full_batch(sequence=False)
    with torch.no_grad():
        entropy = trainer.policy.evaluate(mb)[1]
    mean_entropy = float(entropy[mb.valid].mean())
    assert mean_entropy == pytest.approx(math.log(2), abs=1e-3)  # near-uniform at init
    assert float(entropy.mean()) != float(entropy[mb.valid].mean())  # the mask matters
    trainer.cfg.ppo.ent_coef = 0.0
    base, stats = losses(trainer, mb)
    assert float(stats[2]) == pytest.approx(mean_entropy, rel=1e-6)
    for coef in (0.01, 0.5):
        trainer.cfg.ppo.ent_coef = coef
        with_bonus, _ = losses(trainer, mb)
        assert with_bonus == pytest.approx(base - coef * mean_entropy, rel=0, abs=1e-6)
    trainer.env.close()


def grads_after_backward(trainer: Trainer, scale: float) -> list[torch.Tensor]:
    """Backward of `scale * loss` on the whole rollout; returns the grads it left."""
    mb = trainer.buffer.full_batch(sequence=False)
    trainer.ppo.zero_grad()
    loss, _ = trainer.ppo.loss(mb, trainer.ppo.prepare(mb, CLIP), CLIP)
    (scale * loss).backward()
    return [p.grad for p in trainer.ppo.params]


def total_norm(grads) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


def test_clip_grad_norm_rescales_like_torch_and_leaves_small_grads_alone(cartpole_yaml):
    trainer = collected(cartpole_yaml)
    grads = grads_after_backward(trainer, scale=100.0)
    before = total_norm(grads)
    max_norm = 0.5
    assert before > 10 * max_norm
    reference = [g.clone().requires_grad_(False) for g in grads]
    holders = [torch.nn.Parameter(torch.zeros_like(g)) for g in reference]
    for holder, g in zip(holders, reference):
        holder.grad = g
    torch_norm = torch.nn.utils.clip_grad_norm_(holders, max_norm)
    assert float(torch_norm) == pytest.approx(before, rel=1e-5)
    trainer.ppo.clip_grad_norm(max_norm)
    after = [p.grad for p in trainer.ppo.params]
    assert total_norm(after) == pytest.approx(max_norm, rel=1e-5)
    for ours, theirs in zip(after, holders):
        torch.testing.assert_close(ours, theirs.grad, rtol=1e-6, atol=1e-9)
    # the module's own parameters see the clipped grads (they are views of the flat grad)
    module_grads = [p.grad for p in trainer.policy.parameters()]
    assert total_norm(module_grads) == pytest.approx(max_norm, rel=1e-5)

    small = grads_after_backward(trainer, scale=1e-3)
    copies = [g.clone() for g in small]
    assert 0 < total_norm(small) < max_norm
    trainer.ppo.clip_grad_norm(max_norm)
    for g, copy in zip(small, copies):
        assert torch.equal(g, copy)
    trainer.env.close()


def test_adam_eps_lr_and_vf_coef(cartpole_yaml):
    trainer = collected(cartpole_yaml, "ppo.adam_eps=1e-7", "ppo.learning_rate=3e-4")
    groups = trainer.ppo.optimizer.param_groups
    assert len(groups) == 1
    assert groups[0]["eps"] == 1e-7 == trainer.cfg.ppo.adam_eps
    assert groups[0]["lr"] == 3e-4
    # update() sets the annealed learning rate on the optimizer
    half = trainer.num_iterations // 2
    stats = trainer.ppo.update(trainer.buffer, half)
    assert groups[0]["lr"] == pytest.approx(3e-4 * (1 - half / trainer.num_iterations))
    assert stats["lr"] == groups[0]["lr"]
    assert groups[0]["eps"] == 1e-7

    mb = trainer.buffer.full_batch(sequence=False)
    trainer.cfg.ppo.vf_coef = 0.5
    loss_half, stats = losses(trainer, mb)
    trainer.cfg.ppo.vf_coef = 1.0
    loss_one, stats_one = losses(trainer, mb)
    value_loss = float(stats[1])
    assert value_loss > 0.1  # the value head is far from the returns at this point
    assert loss_one - loss_half == pytest.approx(0.5 * value_loss, rel=1e-5)
    assert torch.equal(stats, stats_one)  # vf_coef weights the loss, not the reported terms
    trainer.cfg.ppo.vf_coef = 0.0
    loss_zero, _ = losses(trainer, mb)
    assert loss_zero == pytest.approx(float(stats[0]), abs=1e-7)  # only the policy loss is left
    trainer.env.close()


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_against_a_different_reference(cartpole_yaml, estimator):
    beta = 0.3
    trainer = collected(
        cartpole_yaml, "kl.enabled=true", f"kl.beta={beta}", f"kl.estimator={estimator}"
    )
    buf = trainer.buffer
    assert trainer.reference is not None
    reference = frozen_copy(trainer.policy)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in reference.actor.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    batch = buf.full_batch(False)
    with torch.no_grad():
        logp = trainer.policy.evaluate(batch)[0].reshape(buf.n_steps, buf.num_envs)
        ref = reference.evaluate(batch)[0].reshape(buf.n_steps, buf.num_envs)
    if estimator == "k1":
        kl = logp - ref
    else:
        kl = torch.exp(ref - logp) - 1 - (ref - logp)
        assert (kl >= 0).all()
    valid = buf.valid.clone()
    assert (~valid).any() and valid.any()
    assert (kl[valid].abs() > 1e-4).float().mean() > 0.5  # the reference really differs
    rewards = buf.rewards.clone()
    stats = apply_kl_penalty(buf, trainer.policy, reference, beta, estimator)
    torch.testing.assert_close(buf.rewards[valid], rewards[valid] - beta * kl[valid])
    assert torch.equal(buf.rewards[~valid], rewards[~valid])
    assert stats["kl_per_step"] == pytest.approx(float(kl[valid].mean()), rel=1e-5)
    assert stats["beta"] == beta
    # the trainer's own reference (an unmodified copy) still gives no penalty
    rewards = buf.rewards.clone()
    stats = apply_kl_penalty(buf, trainer.policy, trainer.reference, beta, estimator)
    assert abs(stats["kl_to_ref"]) < 1e-5
    torch.testing.assert_close(buf.rewards, rewards, atol=1e-6, rtol=0)
    trainer.env.close()


def test_async_vectorization_runs_the_same_iteration_as_sync(cartpole_yaml):
    """Worker processes step the same seeded envs: the rollout and the update equal sync's."""
    overrides = [*SMALL, "env.num_envs=2", "ppo.n_steps=16", "ppo.batch_size=32"]
    results = {}
    for mode in ("async", "sync"):
        trainer = Trainer(load_config(cartpole_yaml, [*overrides, f"env.vectorization={mode}"]))
        try:
            assert type(trainer.env).__name__ == f"{mode.capitalize()}VectorEnv"
            metrics = trainer.iterate()
            assert trainer.global_step == 32 and trainer.buffer.obs.shape == (16, 2, 4)
            buffer = {k: getattr(trainer.buffer, k).clone() for k in ("obs", "actions", "rewards",
                                                                        "valid", "terminated")}  # fmt: skip
            params = [p.detach().clone() for p in trainer.policy.parameters()]
            results[mode] = metrics, buffer, params
        finally:
            trainer.env.close()
    (m_async, b_async, p_async), (m_sync, b_sync, p_sync) = results["async"], results["sync"]
    for key, value in b_sync.items():
        assert torch.equal(b_async[key], value), key
    assert b_sync["terminated"].any() and not b_sync["valid"].all()  # episodes ended and reset
    assert all(torch.equal(a, b) for a, b in zip(p_async, p_sync))
    for key in ("train/policy_loss", "train/value_loss", "train/approx_kl", "rollout/ep_return"):
        assert m_async[key] == m_sync[key], key
    assert m_sync["train/value_loss"] > 1.0  # returns far from V at init: measured 12.2
