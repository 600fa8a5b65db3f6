"""Critic-free advantage estimators (GRPO, RLOO, REINFORCE++), group rollouts, the KL in the
loss and per-sequence loss aggregation."""

from __future__ import annotations

import math
import statistics

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import text_config

from agents.core.advantages import group_advantages, outcome_advantages
from agents.core.buffer import RolloutBuffer
from agents.policies import make_policy
from agents.run import checkpoint as ckpt
from agents.run.config import load_config
from agents.run.trainer import Trainer

G, K = 8, 4  # 8 prompts x 4 samples


def fixed_returns() -> list[list[float]]:
    rng = np.random.default_rng(0)
    groups = rng.uniform(-1, 2, size=(G, K)).round(3).tolist()
    groups[5] = [0.25] * K  # a zero-variance group
    return groups


def brute_force(estimator: str, groups: list[list[float]], scale_std: bool = True) -> list[float]:
    out: list[float] = []
    if estimator == "grpo":
        for g in groups:
            mean, std = statistics.fmean(g), statistics.stdev(g)
            out += [(r - mean) / (std + 1e-6) if scale_std else r - mean for r in g]
    elif estimator == "rloo":
        for g in groups:
            out += [r - sum(g[j] for j in range(len(g)) if j != i) / (len(g) - 1) for i, r in enumerate(g)]  # fmt: skip
    else:  # reinforce_pp: group baseline (K > 1), then whitening over the batch
        centered = [r - statistics.fmean(g) if len(g) > 1 else r for g in groups for r in g]
        mean, std = statistics.fmean(centered), statistics.stdev(centered)
        out = [(c - mean) / (std + 1e-6) for c in centered]
    return out


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_estimators_equal_a_brute_force_computation(estimator):
    groups = fixed_returns()
    returns = torch.tensor([r for g in groups for r in g])
    adv, zero_var = group_advantages(returns, estimator, K)
    expected = torch.tensor(brute_force(estimator, groups), dtype=torch.float64)
    torch.testing.assert_close(adv.double(), expected, atol=1e-6, rtol=0)
    assert zero_var == pytest.approx(1 / G)
    if estimator != "reinforce_pp":  # the zero-variance group gets exactly 0
        assert torch.all(adv[5 * K : 6 * K] == 0)


def test_grpo_without_std_scaling_and_reinforce_pp_without_groups():
    groups = fixed_returns()
    returns = torch.tensor([r for g in groups for r in g])
    adv, _ = group_advantages(returns, "grpo", K, scale_std=False)
    expected = torch.tensor(brute_force("grpo", groups, scale_std=False), dtype=torch.float64)
    torch.testing.assert_close(adv.double(), expected, atol=1e-6, rtol=0)
    singles = [[r] for g in groups for r in g]
    adv, zero_var = group_advantages(returns, "reinforce_pp", 1)
    expected = torch.tensor(brute_force("reinforce_pp", singles), dtype=torch.float64)
    torch.testing.assert_close(adv.double(), expected, atol=1e-6, rtol=0)
    assert zero_var == 0.0


def test_group_estimators_refuse_groups_of_one(gpt2_ctx64_path, tmp_path):
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.zeros(8), "grpo", 1)
    data = text_config(gpt2_ctx64_path, str(tmp_path))
    data["advantage"] = {"estimator": "rloo", "group_size": 1}
    with pytest.raises(ValueError, match=r"advantage.group_size >= 2, got 1"):
        load_config(data)
    data["advantage"] = {"estimator": "grpo", "group_size": 3}  # 8 rows are not groups of 3
    with pytest.raises(ValueError, match="multiple of advantage.group_size=3"):
        load_config(data)
    data["advantage"] = {"estimator": "grpoo", "group_size": 4}
    with pytest.raises(ValueError, match="grpo"):
        load_config(data)


def test_outcome_advantages_give_each_valid_step_its_episode_advantage():
    space = gym.spaces.Box(-1, 1, (1,))
    buf = RolloutBuffer(3, 4, space, gym.spaces.Discrete(2))
    buf.valid[:] = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)
    buf.rewards[:] = torch.tensor([[0.0, 0.0, -0.1, 0.0], [1.0, 9.0, 0.0, 0.5], [0, 0, 2.0, 0]])
    stats = outcome_advantages(buf, "rloo", 2)
    # row returns 1.0, 0.0 (the 9.0 is on an invalid step), 1.9, 0.5
    expected_adv = [1.0 - 0.0, 0.0 - 1.0, 1.9 - 0.5, 0.5 - 1.9]
    for i, a in enumerate(expected_adv):
        col = buf.advantages[:, i]
        assert torch.allclose(col[buf.valid[:, i]], torch.tensor(a)), i
        assert torch.all(col[~buf.valid[:, i]] == 0)
    assert stats["zero_variance_groups"] == 0.0


def test_group_rollouts_repeat_each_prompt_k_times(gpt2_ctx64_path, tmp_path):
    data = text_config(gpt2_ctx64_path, str(tmp_path))
    data["advantage"] = {"estimator": "grpo", "group_size": 4}
    trainer = Trainer(load_config(data))
    trainer.collector.collect()
    prompts = trainer.env._prompts  # (8,) the prompts of this rollout's rows
    assert prompts[0:4] == [prompts[0]] * 4 and prompts[4:8] == [prompts[4]] * 4
    assert prompts[0] != prompts[4]
    trainer.close()


def test_critic_free_policy_has_no_value_parameters_and_checkpoint_no_value_weights(
    gpt2_ctx64_path, tmp_path
):
    data = text_config(gpt2_ctx64_path, str(tmp_path))
    data["advantage"] = {"estimator": "rloo", "group_size": 2}
    cfg = load_config(data)
    assert cfg.policy.critic == "none"  # chosen for the user: no value head is built
    trainer = Trainer(cfg, tmp_path / "run")
    assert not trainer.policy.has_critic
    assert not any("value" in name for name, _ in trainer.policy.named_parameters())
    metrics = trainer.iterate()
    assert "train/value_loss" not in metrics and "train/explained_variance" not in metrics
    assert math.isfinite(metrics["train/policy_loss"])
    _, tensors = ckpt.read_checkpoint(trainer.save())
    assert not any("value" in key for key in tensors)
    trainer.close()
    # asking for a critic with a critic-free estimator is a clear error
    data["policy"]["critic"] = "separate"
    with pytest.raises(ValueError, match="trains without a critic"):
        load_config(data)
    # and a policy without a critic cannot run GAE
    data["policy"]["critic"] = "none"
    data["advantage"] = {"estimator": "gae"}
    with pytest.raises(ValueError, match="needs one"):
        load_config(data)


def test_mlp_policy_without_critic_has_no_value_parameters(cartpole_yaml):
    with pytest.raises(ValueError, match="needs one"):
        load_config(cartpole_yaml, ["policy.critic=none"])  # the default estimator is GAE
    cfg = load_config(cartpole_yaml, ["policy.critic=none", "advantage.estimator=reinforce_pp"])
    env = gym.make("CartPole-v1")
    policy = make_policy(cfg.policy, env.observation_space, env.action_space)
    assert not policy.has_critic
    assert not any(name.startswith("critic") for name, _ in policy.named_parameters())


def test_group_estimators_need_a_lockstep_env(cartpole_yaml):
    cfg = load_config(cartpole_yaml, ["advantage.estimator=reinforce_pp"])
    with pytest.raises(ValueError, match="lockstep"):
        Trainer(cfg)


@pytest.mark.parametrize("placement", ["reward", "loss"])
def test_kl_placement(gpt2_ctx64_path, tmp_path, placement):
    """Before the first update the policy equals the reference: the KL term is 0 (to float
    rounding) either way; with `loss`, the rewards are untouched and the loss carries beta * k3."""
    data = text_config(gpt2_ctx64_path, str(tmp_path))
    data["advantage"] = {"estimator": "grpo", "group_size": 4}
    data["kl"]["placement"] = placement
    trainer = Trainer(load_config(data))
    metrics = trainer.iterate()
    assert abs(metrics["kl/kl_to_ref"]) < 1e-5
    if placement == "loss":
        assert trainer.ppo.kl_coef == 0.1
        assert torch.equal(
            trainer.buffer.ref_log_probs[trainer.buffer.valid],
            trainer.buffer.log_probs[trainer.buffer.valid],
        ) or torch.allclose(
            trainer.buffer.ref_log_probs[trainer.buffer.valid],
            trainer.buffer.log_probs[trainer.buffer.valid],
            atol=1e-5,
        )
        assert 0.0 <= metrics["train/kl_loss"] < 0.5  # grows from 0 as the policy moves
        # a second rollout: the policy moved, the loss KL matches a hand computation
        trainer.collector.collect()
        buf = trainer.buffer
        from agents.core.kl import apply_kl_penalty

        rewards = buf.rewards.clone()
        apply_kl_penalty(buf, trainer.policy, trainer.reference, 0.1, "k1", "loss")
        assert torch.equal(buf.rewards, rewards)
        batch = buf.full_batch(True)
        with torch.no_grad():
            log_prob = trainer.policy.evaluate(batch)[0]
            ref = trainer.reference.evaluate(batch)[0]
        v = buf.valid
        by_hand = (torch.exp(ref - log_prob) - 1 - (ref - log_prob))[v].mean()
        trainer.ppo.kl_coef = 0.1
        inputs = trainer.ppo.prepare(batch, 0.2)
        _, stats = trainer.ppo.loss(batch, inputs, 0.2)
        assert float(stats[5]) == pytest.approx(float(by_hand), rel=1e-4, abs=1e-7)
    else:
        assert "train/kl_loss" not in metrics
    trainer.close()


def test_episode_weights_and_sequence_aggregation():
    space = gym.spaces.Box(-1, 1, (1,))
    buf = RolloutBuffer(4, 2, space, gym.spaces.Discrete(2))
    # row 0: one episode of 4 steps; row 1: an episode of 1 step, then one of 2, then invalid
    buf.valid[:] = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]], dtype=torch.bool)
    buf.terminated[:] = torch.tensor([[0, 1], [0, 0], [0, 1], [1, 0]], dtype=torch.bool)
    buf.set_episode_weights()
    expected = torch.tensor([[0.25, 1.0], [0.25, 0.5], [0.25, 0.5], [0.25, 1.0]])
    torch.testing.assert_close(buf.episode_weights, expected)


def test_sequence_aggregation_weighs_each_episode_equally(gpt2_ctx64_path, tmp_path):
    data = text_config(gpt2_ctx64_path, str(tmp_path), loss_aggregation="sequence")
    trainer = Trainer(load_config(data))
    trainer.collector.collect()
    buf = trainer.buffer
    buf.compute_gae(1.0, 0.95)
    buf.set_episode_weights()
    batch = buf.full_batch(True)
    inputs = trainer.ppo.prepare(batch, 0.2)
    weights = inputs.weights.view(buf.n_steps, buf.num_envs)  # (T, N), columns = episodes
    per_episode = weights.sum(0)
    torch.testing.assert_close(per_episode, torch.full_like(per_episode, 1 / buf.num_envs))
    lengths = buf.valid.sum(0)
    assert lengths.min() < lengths.max(), "the test needs episodes of different lengths"
    trainer.close()


# ----------------------------------------------------------------------------- review fixes


def _ppo_inputs(cartpole_yaml, overrides: list[str], advantages, valid):
    """`PPO.prepare`'s loss inputs for hand-made (B,) advantages (an MLP policy: flat batches)."""
    from agents.core.ppo import PPO
    from agents.policies.base import Minibatch

    cfg = load_config(cartpole_yaml, overrides)
    env = gym.make("CartPole-v1")
    policy = make_policy(cfg.policy, env.observation_space, env.action_space)
    ppo = PPO(policy, cfg.ppo, num_iterations=1)
    zeros = torch.zeros(len(advantages))
    mb = Minibatch(
        None, None, zeros, zeros, torch.tensor(advantages), zeros, torch.tensor(valid),
        zeros, torch.ones(len(advantages)),
    )  # fmt: skip
    return ppo.prepare(mb, 0.2)


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_normalize_advantage_only_scales_critic_free_advantages(cartpole_yaml, estimator):
    """ppo.normalize_advantage on a critic-free estimator divides by the std and subtracts
    nothing: a zero-variance group keeps advantage exactly 0, and no baseline is added back."""
    # two episodes of a tied group (0), then episodes with advantages +-1 and +-0.5 of different
    # lengths; the invalid steps carry junk that must not count
    adv = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, -1.0, 0.5, -0.5, -0.5, 7.0]
    valid = [True] * 11 + [False]
    overrides = ["policy.critic=none", f"advantage.estimator={estimator}", "advantage.group_size=2"]
    inputs = _ppo_inputs(cartpole_yaml, [*overrides, "ppo.normalize_advantage=true"], adv, valid)
    a = torch.tensor(adv[:11], dtype=torch.float64)
    expected = a / (a.std() + 1e-8)
    torch.testing.assert_close(inputs.advantages[:11].double(), expected, rtol=1e-6, atol=1e-7)
    assert torch.all(inputs.advantages[:3] == 0) and inputs.advantages[11] == 0
    # with a critic (GAE) it still whitens: mean 0, std 1 over the valid steps
    gae = _ppo_inputs(cartpole_yaml, ["ppo.normalize_advantage=true"], adv, valid).advantages
    assert abs(float(gae[:11].mean())) < 1e-6 and float(gae[:11].std()) == pytest.approx(1.0)


def test_grpo_std_comes_from_the_task_scores_not_the_kl_penalty(gpt2_ctx64_path, tmp_path):
    """GRPO, scale_std, KL in the reward: in a group whose task scores tie, the only spread is
    the KL penalty; it keeps its reward scale (centered), it is not blown up to unit size."""
    data = text_config(gpt2_ctx64_path, str(tmp_path))
    data["advantage"] = {"estimator": "grpo", "group_size": 4, "scale_std": True}
    data["kl"].update(placement="reward", beta=0.1)
    trainer = Trainer(load_config(data))
    with torch.no_grad():  # move the policy away from the reference: a visible KL
        for p in trainer.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    buf, collect = trainer.buffer, trainer.collector.collect
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 0.25, 0.75])  # group 0 ties
    by_hand = {}

    def collect_with_scores():
        log = collect()
        last = buf.valid.cumsum(0) == buf.valid.sum(0)  # (T, N) each row's last valid step
        buf.rewards.copy_((last & buf.valid) * scores)
        with torch.no_grad():  # the per-episode k1 KL, before the update moves the policy
            batch = buf.full_batch(True)
            log_ratio = trainer.policy.evaluate(batch)[0] - trainer.reference.evaluate(batch)[0]
        by_hand["penalty"] = (-0.1 * (log_ratio * buf.valid).sum(0)).double()  # (N,)
        return log

    trainer.collector.collect = collect_with_scores
    metrics = trainer.iterate()
    penalty = by_hand["penalty"]  # the KL part of each return
    adv = buf.advantages[0].double()  # every row's first step is valid
    tied = penalty[:4] - penalty[:4].mean()
    assert float(tied.abs().max()) > 1e-3, "the test needs a visible KL spread"
    torch.testing.assert_close(adv[:4], tied, rtol=1e-4, atol=1e-5)
    s = scores[4:].double()
    expected = (s - s.mean()) / (s.std() + 1e-6) + penalty[4:] - penalty[4:].mean()
    torch.testing.assert_close(adv[4:], expected, rtol=1e-4, atol=1e-5)
    assert metrics["advantage/zero_variance_groups"] == 0.5  # counted on the task scores
    trainer.close()


SCORES = torch.tensor([1.0, 1.0, 0.5, 2.0])  # (N,) the task scores of `_reinforce_pp_buffer`


def _reinforce_pp_buffer() -> RolloutBuffer:
    """3 steps x 4 rows, one episode per row (lengths 3, 2, 3, 1); a task score at each row's last
    step (`SCORES`) plus per-step KL penalties in the rewards."""
    space = gym.spaces.Box(-1, 1, (1,))
    buf = RolloutBuffer(3, 4, space, gym.spaces.Discrete(2))
    buf.valid[:] = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 0]], dtype=torch.bool)
    penalty = torch.tensor([[-0.1, -0.2, 0.0, -0.3], [-0.1, -0.4, -0.2, 0], [-0.3, 0, -0.1, 0]])
    scores = torch.tensor([[0, 0, 0, 2.0], [0, 1.0, 0, 0], [1.0, 0, 0.5, 0]])
    buf.rewards[:] = scores + penalty
    return buf


@pytest.mark.parametrize("group_size", [1, 2])
def test_reinforce_pp_whitens_per_token_reward_to_go(group_size):
    """The paper's REINFORCE++: each token's advantage is its reward-to-go (the KL penalties of
    this and later tokens plus the score), minus the group's mean score when K > 1, whitened
    over every valid token of the batch."""
    buf = _reinforce_pp_buffer()
    if group_size == 1:  # no baseline: the per-step rewards are all it reads
        outcome_advantages(buf, "reinforce_pp", group_size)
    else:  # the baseline is the group's mean task score (the returns before the KL penalty)
        outcome_advantages(buf, "reinforce_pp", group_size, scores=SCORES)
    rewards = buf.rewards.tolist()
    valid = buf.valid.tolist()
    task = SCORES.tolist()
    to_go: dict[tuple[int, int], float] = {}
    for i in range(4):
        base = statistics.fmean(task[i - i % 2 : i - i % 2 + 2]) if group_size == 2 else 0.0
        for t in range(3):
            if valid[t][i]:
                to_go[t, i] = sum(rewards[u][i] for u in range(t, 3) if valid[u][i]) - base
    mean, std = statistics.fmean(to_go.values()), statistics.stdev(to_go.values())
    for (t, i), g in to_go.items():
        assert float(buf.advantages[t, i]) == pytest.approx((g - mean) / (std + 1e-6), abs=1e-5)
    assert torch.all(buf.advantages[~buf.valid] == 0)
    # the first step of row 0 differs from its last: credit follows the per-token KL
    assert float(buf.advantages[0, 0]) != pytest.approx(float(buf.advantages[2, 0]))


def test_reinforce_pp_episode_form_whitens_one_number_per_episode():
    buf = _reinforce_pp_buffer()
    outcome_advantages(buf, "reinforce_pp", 2, reinforce_pp_form="episode")
    returns = (buf.rewards * buf.valid).sum(0).tolist()
    expected = brute_force("reinforce_pp", [returns[:2], returns[2:]])
    for i in range(4):
        col = buf.advantages[:, i][buf.valid[:, i]]
        torch.testing.assert_close(col, torch.full_like(col, expected[i]), atol=1e-5, rtol=0)


def test_token_sum_aggregation_divides_by_a_constant(cartpole_yaml):
    """Dr. GRPO's loss normalization: every valid step weighs 1 / (steps in the minibatch, valid
    or not), a constant, not 1 / (valid steps)."""
    adv = [1.0, -1.0, 0.5, 0.0, 2.0, 0.0]
    valid = [True, True, True, False, True, False]
    overrides = ["policy.critic=none", "advantage.estimator=reinforce_pp"]
    inputs = _ppo_inputs(cartpole_yaml, [*overrides, "ppo.loss_aggregation=token_sum"], adv, valid)
    expected = torch.tensor([1, 1, 1, 0, 1, 0]) / 6.0
    torch.testing.assert_close(inputs.weights, expected.float())
    token = _ppo_inputs(cartpole_yaml, overrides, adv, valid).weights
    torch.testing.assert_close(token, torch.tensor([1, 1, 1, 0, 1, 0]) / 4.0)


@pytest.mark.parametrize(
    "policy, adaptive, warns",
    [({"top_p": 0.9}, True, True), ({"top_k": 20}, True, True), ({}, True, False),
     ({"top_p": 0.9}, False, False)],
)  # fmt: skip
def test_adaptive_kl_with_truncated_sampling_warns_once(
    gpt2_ctx64_path, tmp_path, capsys, policy, adaptive, warns
):
    """Top-k / top-p sampling puts a floor under the measured KL (the reference scores the
    full distribution): an adaptive target below it keeps raising beta, so the run says so."""
    data = text_config(gpt2_ctx64_path, str(tmp_path))
    data["policy"].update(policy)
    data["kl"].update(adaptive=adaptive, target=0.5)
    Trainer(load_config(data)).close()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "kl.adaptive" in line]
    assert len(lines) == (1 if warns else 0), err
    if warns:
        assert "warning:" in lines[0] and ("top_p" in lines[0] or "top_k" in lines[0])


@pytest.mark.parametrize("sharded", [False, True])
def test_sequence_minibatches_hold_whole_groups(sharded):
    """With groups of K rows, sequence minibatches take whole groups: the estimator's baseline
    then balances each minibatch, which no longer needs a mean subtracted (normalize_advantage
    only scales critic-free advantages). Both the 1-process and the data-parallel sampler."""
    from agents.core.distributed import RowShard

    T, N, K = 2, 16, 4
    buf = RolloutBuffer(T, N, gym.spaces.Box(-1, 1, (1,)), gym.spaces.Discrete(2))
    buf.advantages.copy_(torch.arange(N, dtype=torch.float32).expand(T, N))  # column ids
    buf.group_size = K
    if sharded:
        buf.shard = RowShard(0, N, torch.Generator().manual_seed(3))
    seen = []
    for _ in range(5):  # epochs: different orders, always whole groups
        rows = [mb.advantages[0].long().tolist() for mb in buf.minibatches(T * 8, True)]
        assert len(rows) == 2 and sorted(sum(rows, [])) == list(range(N))
        for part in rows:
            groups = {r // K for r in part}
            assert sorted(part) == sorted(g * K + k for g in groups for k in range(K)), part
        seen.append(rows)
    assert len({str(r) for r in seen}) > 1  # shuffled


def test_minibatches_that_split_groups_are_warned_about(gpt2_ctx64_path, tmp_path, capsys):
    data = text_config(gpt2_ctx64_path, str(tmp_path))  # 8 rows, n_steps 8, batch 32: 4 columns
    data["advantage"] = {"estimator": "grpo", "group_size": 8}
    Trainer(load_config(data)).close()
    err = capsys.readouterr().err
    assert "warning: ppo.batch_size" in err and "advantage.group_size=8" in err, err
    data["advantage"]["group_size"] = 4
    Trainer(load_config(data)).close()
    assert "group_size" not in capsys.readouterr().err
