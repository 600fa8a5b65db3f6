"""PPO core: GAE by hand, first-minibatch ratio, KL penalty, config and env errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import edit_similarity
from pydantic import Field

from agents.core.buffer import RolloutBuffer
from agents.core.kl import AdaptiveKLController, kl_estimate
from agents.core.ppo import PPO
from agents.run.config import Section, load_config
from agents.run.envs import make_env
from agents.run.trainer import Trainer

SMALL = ["run.progress=false", "total_timesteps=2048", "ppo.n_epochs=2"]


def test_gae_matches_hand_computed_values_with_truncation_and_invalid_steps():
    space = gym.spaces.Box(-1, 1, (1,), np.float32)
    buf = RolloutBuffer(3, 2, space, gym.spaces.Discrete(2))
    buf.clear_flags()
    # row 0: no done; row 1: truncated at t=0, t=1 is the (invalid) NEXT_STEP reset step whose
    # observation is the truncated episode's final one (V = 2.0), terminated at t=2
    buf.rewards[:] = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    buf.values[:] = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 0.5]])
    buf.valid[:] = torch.tensor([[True, True], [True, False], [True, True]])
    buf.truncated[0, 1] = True
    buf.terminated[2, 1] = True
    buf.last_value[:] = torch.tensor([4.0, 10.0])
    buf.compute_gae(gamma=0.5, gae_lambda=0.5)
    # row 0: deltas (1+0.5*2-1, 1+0.5*3-2, 1+0.5*4-3) = (1, 0.5, 0); A_t = delta_t + 0.25 A_{t+1}
    # row 1: t=2 terminated: 1 - 0.5 = 0.5; t=1 invalid: 0; t=0 truncated: 1 + 0.5*2 - 1 = 1
    expected = torch.tensor([[1.125, 1.0], [0.5, 0.0], [0.0, 0.5]])
    torch.testing.assert_close(buf.advantages, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(buf.returns, expected + buf.values, rtol=0, atol=1e-7)


def test_gae_bootstraps_truncation_at_the_last_step_from_last_value():
    space = gym.spaces.Box(-1, 1, (1,), np.float32)
    buf = RolloutBuffer(1, 2, space, gym.spaces.Discrete(2))
    buf.clear_flags()
    buf.rewards[:] = 1.0
    buf.values[:] = 0.0
    buf.valid[:] = True
    buf.truncated[0, 0] = True  # truncated: bootstrap V(final obs) = last_value
    buf.terminated[0, 1] = True  # terminated: nothing to bootstrap
    buf.last_value[:] = torch.tensor([2.0, 2.0])
    buf.compute_gae(gamma=0.9, gae_lambda=0.95)
    torch.testing.assert_close(buf.advantages[0], torch.tensor([1.0 + 0.9 * 2.0, 1.0]))


def test_first_minibatch_has_ratio_one_and_zero_approx_kl(cartpole_yaml):
    cfg = load_config(cartpole_yaml, SMALL)
    trainer = Trainer(cfg)
    trainer.collector.collect()
    trainer.buffer.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
    mb = next(trainer.buffer.minibatches(cfg.ppo.batch_size, sequence=False))
    log_prob, _, value = trainer.policy.evaluate(mb)
    ratio = (log_prob - mb.log_probs).exp()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-6)
    torch.testing.assert_close(value, mb.values, rtol=0, atol=1e-6)
    inputs = trainer.ppo.prepare(mb, clip=0.2)
    _, stats = trainer.ppo.loss(mb, inputs, clip=0.2)
    assert abs(float(stats[3])) < 1e-10  # approx_kl
    assert float(stats[4]) == 0.0  # clipfrac
    # after one update the policy has moved: the same check now fails
    trainer.ppo.update(trainer.buffer, 0)
    _, stats = trainer.ppo.loss(mb, inputs, clip=0.2)
    assert float(stats[3]) > 1e-6
    trainer.env.close()


def test_kl_penalty_is_zero_when_reference_equals_policy(cartpole_yaml):
    cfg = load_config(cartpole_yaml, [*SMALL, "kl.enabled=true", "kl.beta=0.5", "kl.estimator=k1"])
    trainer = Trainer(cfg)
    first = trainer.iterate()  # reference == policy: the penalty is 0
    # 0 up to float32 rounding: the KL pass evaluates the whole rollout in one batch, the rollout
    # row by row, and the BLAS kernels for the two shapes may round differently on another CPU
    assert abs(first["kl/kl_to_ref"]) < 1e-6
    assert first["kl/beta"] == 0.5
    second = trainer.iterate()  # the policy has been updated once: now it differs
    assert abs(second["kl/kl_to_ref"]) > 1e-4, second["kl/kl_to_ref"]
    trainer.env.close()


def test_kl_estimators_and_adaptive_controller():
    logp, ref = torch.tensor([-0.5, -1.0]), torch.tensor([-1.0, -1.0])
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([0.5, 0.0]))
    r = -0.5
    torch.testing.assert_close(
        kl_estimate(logp, ref, "k3"), torch.tensor([np.exp(r) - 1 - r, 0.0], dtype=torch.float32)
    )
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(logp, ref, "k2")
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(kl=12.0, n_episodes=10)  # error clipped to +0.2 -> beta * (1 + 0.2 * 10/100)
    assert ctl.beta == pytest.approx(0.1 * 1.02)
    ctl.update(kl=3.0, n_episodes=10)  # error -0.5 clipped to -0.2
    assert ctl.beta == pytest.approx(0.1 * 1.02 * 0.98)


def test_adaptive_kl_beta_stays_positive_with_more_episodes_than_the_horizon():
    controller = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10)
    controller.update(kl=0.0, n_episodes=64)  # n / H = 6.4: the uncapped factor is 1 - 1.28 < 0
    assert controller.beta == pytest.approx(0.1 * 0.8)
    controller.update(kl=100.0, n_episodes=64)
    assert controller.beta == pytest.approx(0.1 * 0.8 * 1.2)
    controller.update(kl=6.6, n_episodes=5)  # error 0.1, half a horizon: the usual rule
    assert controller.beta == pytest.approx(0.1 * 0.8 * 1.2 * 1.05)


def test_box_actions_train_and_are_clipped_only_for_the_env():
    cfg = load_config(
        {"env": {"id": "Pendulum-v1", "num_envs": 2}, "ppo": {"n_steps": 16, "batch_size": 8}},
        ["run.progress=false", "total_timesteps=64", "policy.log_std_init=1.0"],
    )
    trainer = Trainer(cfg)
    trainer.iterate()
    actions = trainer.buffer.actions
    assert actions.shape == (16, 2, 1)
    assert actions.abs().max() > 2.0  # stored unclipped (std e^1 around ~0 means)
    trainer.env.close()


def test_config_typo_is_an_error_with_a_suggestion(cartpole_yaml):
    with pytest.raises(ValueError, match=r"'ppo.n_epoch'.*did you mean 'n_epochs'"):
        load_config(cartpole_yaml, ["ppo.n_epoch=3"])
    with pytest.raises(ValueError, match=r"'lerning_rate'|did you mean 'learning_rate'"):
        load_config({"ppo": {"lerning_rate": 1e-3}})


def test_invalid_values_are_errors(cartpole_yaml):
    with pytest.raises(ValueError, match=r"batch_size=100 must divide .* 256"):
        load_config(cartpole_yaml, ["ppo.batch_size=100"])
    with pytest.raises(ValueError, match="kl.estimator must be one of"):
        load_config(cartpole_yaml, ["kl.estimator=k2"])
    with pytest.raises(ValueError, match="ppo.n_epochs' = 'ten'.*valid integer"):
        load_config(cartpole_yaml, ["ppo.n_epochs=ten"])
    with pytest.raises(ValueError, match="gamma"):
        load_config(cartpole_yaml, ["ppo.gamma=1.5"])
    with pytest.raises(ValueError, match=r"total_timesteps=100 is less than one PPO iteration"):
        load_config(cartpole_yaml, ["total_timesteps=100"])  # 8 envs x 32 steps = 256
    for bad in (".nan", ".inf", "-1e-3"):  # YAML's NaN and infinity are not learning rates
        with pytest.raises(ValueError, match=r"ppo.learning_rate.*(finite number|greater than 0)"):
            load_config(cartpole_yaml, [f"ppo.learning_rate={bad}"])


def test_unknown_env_id_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown env id 'CartPol-v1'.*'CartPole-v1'"):
        make_env("CartPol-v1", 2)


def test_masked_steps_do_not_change_the_loss(cartpole_yaml):
    """Invalid steps are excluded by masked means: garbage in them changes nothing."""
    cfg = load_config(cartpole_yaml, SMALL)
    trainer = Trainer(cfg)
    trainer.collector.collect()
    buf = trainer.buffer
    buf.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
    buf.valid[:4, :] = False
    mb = buf.full_batch(sequence=False)
    ppo: PPO = trainer.ppo
    loss1, _ = ppo.loss(mb, ppo.prepare(mb, 0.2), clip=0.2)
    buf.advantages[:4] = 1e6
    buf.returns[:4] = -1e6
    mb = buf.full_batch(sequence=False)
    loss2, _ = ppo.loss(mb, ppo.prepare(mb, 0.2), clip=0.2)
    torch.testing.assert_close(loss1, loss2)
    trainer.env.close()


def test_lockstep_text_env_rollout_masks_finished_rows_and_reports_infos():
    """The generic core on textenv's lockstep vector env (an MLP reads the token ids)."""
    cfg = load_config(
        {
            "env": {"id": "textenv:TextRLHF-v0", "num_envs": 4, "kwargs": {"max_new_tokens": 5}},
            "ppo": {"n_steps": 8, "batch_size": 32, "n_epochs": 1},
        },
        ["run.progress=false", "total_timesteps=64"],
    )
    trainer = Trainer(cfg)
    assert trainer.collector.runner.mode == "lockstep"
    log = trainer.collector.collect()
    valid = trainer.buffer.valid
    assert valid[:1].all() and not valid[5:].any()  # every row is done after <= 5 tokens
    lengths = valid.sum(0)
    assert sorted(lengths.tolist()) == sorted(log.lengths)
    assert len(log.returns) == 4 and "score" in log.metrics
    assert "reward_components/edit_distance" in log.metrics
    assert {"prompt", "response", "reference"} <= set(log.samples[0])
    assert len(log.samples) == 4
    for sample in log.samples:  # the env's score is the edit similarity to the reversed word
        word = sample["prompt"].removeprefix("reverse: ").removesuffix("\n")
        assert sample["reference"] == word[::-1]
        expected = edit_similarity(sample["response"], sample["reference"])
        assert (
            sample["score"] == sample["reward_components/edit_distance"] == pytest.approx(expected)
        )
    assert sorted(log.returns) == sorted(log.metrics["score"])  # no KL: the return is the score
    metrics = trainer.iterate()
    assert metrics["episode/score"] == pytest.approx(metrics["rollout/ep_return"])
    trainer.env.close()


def test_sequence_minibatches_are_whole_env_columns():
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    buf = RolloutBuffer(4, 6, space, gym.spaces.Discrete(2))
    buf.obs[:] = torch.arange(6).float().view(1, 6, 1)  # obs value = env column index
    batches = list(buf.minibatches(batch_size=8, sequence=True))  # 8 // 4 = 2 columns each
    assert len(batches) == 3 == buf.num_minibatches(8, sequence=True)
    seen = []
    for mb in batches:
        assert mb.obs.shape == (4, 2, 3) and mb.advantages.shape == (4, 2)
        columns = mb.obs[:, :, 0]
        assert (columns == columns[0]).all()  # each column holds one env over all T steps
        seen += columns[0].long().tolist()
    assert sorted(seen) == list(range(6))
    flat = list(buf.minibatches(batch_size=12, sequence=False))
    assert len(flat) == 2 and flat[0].obs.shape == (12, 3)


def test_linear_annealing_and_target_kl_early_stop(cartpole_yaml):
    cfg = load_config(cartpole_yaml, [*SMALL, "ppo.n_epochs=20", "ppo.target_kl=1e-9"])
    trainer = Trainer(cfg)
    assert trainer.ppo.schedules(0) == (1e-3, 0.2)
    lr, clip = trainer.ppo.schedules(trainer.num_iterations // 2)
    assert lr == pytest.approx(0.5e-3) and clip == pytest.approx(0.1)
    trainer.collector.collect()
    trainer.buffer.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
    stats = trainer.ppo.update(trainer.buffer, 0)
    # the first step always happens (approx_kl = 0), the second exceeds 1.5 * target_kl
    assert stats["early_stop"] == 1.0 and stats["n_minibatch_steps"] == 1
    trainer.env.close()


class Inner(Section):
    steps: int = 10


class Outer(Section):
    name: str = "x"
    inner: Inner = Field(default_factory=Inner)


def test_load_config_is_reusable_for_other_section_configs():
    assert load_config({"inner": {"steps": 3}}, cls=Outer).inner.steps == 3
    with pytest.raises(ValueError, match=r"'inner.stesp'.*did you mean 'steps'"):
        load_config({"inner": {"stesp": 3}}, cls=Outer)


def test_same_step_autoreset_bootstraps_truncation_from_final_obs():
    from gymnasium.vector import AutoresetMode

    from agents.core.rollout import RolloutCollector
    from agents.policies.mlp import MLPActorCritic

    env = gym.make_vec(
        "CartPole-v1", 2, vectorization_mode="sync", max_episode_steps=20,
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )  # fmt: skip
    policy = MLPActorCritic(env.single_observation_space, env.single_action_space)
    buf = RolloutBuffer(64, 2, env.single_observation_space, env.single_action_space)
    RolloutCollector(env, policy, buf, seed=0).collect()
    assert buf.valid.all()  # SAME_STEP has no reset steps
    assert buf.truncated.any()
    assert torch.equal(buf.has_final_value, buf.truncated)
    t, i = buf.truncated.nonzero()[0].tolist()
    assert buf.final_values[t, i] != 0.0
    env.close()


def test_clipped_surrogate_equals_the_textbook_form_with_gradients(cartpole_yaml):
    """loss() uses -A * clamp(r, lo, hi); check it against max(-A r, -A clip(r)) and its grad."""
    cfg = load_config(cartpole_yaml, SMALL)
    trainer = Trainer(cfg)
    trainer.collector.collect()
    trainer.buffer.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
    mb = trainer.buffer.full_batch(sequence=False)
    ppo, clip = trainer.ppo, 0.2
    inputs = ppo.prepare(mb, clip)
    g = torch.Generator().manual_seed(0)
    mb = mb._replace(log_probs=mb.log_probs + 0.3 * torch.randn(mb.log_probs.shape, generator=g))
    cfg.ppo.vf_coef = 0.0

    def textbook() -> torch.Tensor:
        log_prob = trainer.policy.evaluate(mb)[0]
        ratio = (log_prob - mb.log_probs).exp()
        adv = inputs.advantages
        surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
        return (surrogate * inputs.weights).sum()

    params = list(trainer.policy.actor.parameters())
    ours = ppo.loss(mb, inputs, clip)[0]
    ref = textbook()
    torch.testing.assert_close(ours, ref)
    clipped = ((mb.log_probs - trainer.policy.evaluate(mb)[0]).exp() - 1).abs() > clip
    assert clipped.any() and not clipped.all()  # both branches are exercised
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b)
    trainer.env.close()
