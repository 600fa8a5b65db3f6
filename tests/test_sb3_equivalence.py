"""Our PPO core against Stable-Baselines3's on the very same data and weights.

SB3 collects one rollout; its weights are copied into our MLPActorCritic and its rollout into our
RolloutBuffer; the SB3 side is the very model `textrlhf compare` builds from the same config.
Then:
- our log-probs and values on that data equal the ones SB3 stored;
- our GAE on SB3's rewards and episode starts equals SB3's advantages;
- one PPO update (4 epochs of one full-batch minibatch, so no shuffling order is involved) moves
  our weights exactly as SB3's `train()` moves its own.
Any difference in the loss, the advantage normalization, the clipping, the gradient clipping or
Adam shows up here as a parameter mismatch.
"""

from __future__ import annotations

import pytest
import torch

from agents.core.buffer import RolloutBuffer
from agents.core.ppo import PPO
from agents.policies.mlp import MLPActorCritic
from agents.run.compare import sb3_model
from agents.run.config import Config, load_config

sb3 = pytest.importorskip("stable_baselines3")

N, T = 4, 256  # CartPole episodes end (terminated) and Pendulum's are truncated at 200


def sb3_rollout(cfg: Config):
    """The SB3 PPO that `textrlhf compare` builds from `cfg`, with one collected rollout (its
    buffer holds advantages and returns)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class Nothing(BaseCallback):
        def _on_step(self) -> bool:
            return True

    env = make_vec_env(cfg.env.id, n_envs=N, seed=cfg.seed)
    model = sb3_model(cfg, env)
    callback = Nothing()
    callback.init_callback(model)
    model._setup_learn(N * T, callback)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=T)
    return model


def layer_pairs(ours: MLPActorCritic, policy) -> list[tuple[torch.nn.Linear, torch.nn.Linear]]:
    pi, vf = policy.mlp_extractor.policy_net, policy.mlp_extractor.value_net
    return [
        (ours.actor[0], pi[0]),
        (ours.actor[1], pi[2]),
        (ours.actor[2], policy.action_net),
        (ours.critic[0], vf[0]),
        (ours.critic[1], vf[2]),
        (ours.critic[2], policy.value_net),
    ]


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])  # Discrete and Box actions
def test_one_update_matches_sb3_on_the_same_data(env_id):
    torch.manual_seed(0)
    full = load_config({
        "seed": 0,
        "env": {"id": env_id, "num_envs": N},
        "ppo": {"n_steps": T, "batch_size": N * T, "n_epochs": 4, "gamma": 0.99,
                "gae_lambda": 0.95, "learning_rate": 3e-4, "anneal_lr": False,
                "anneal_clip": False, "ent_coef": 0.01},
    })  # fmt: skip
    cfg = full.ppo
    model = sb3_rollout(full)
    rb, env = model.rollout_buffer, model.env
    ours = MLPActorCritic.from_config(full.policy, env.observation_space, env.action_space)
    pairs = layer_pairs(ours, model.policy)
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        if ours.continuous:
            ours.log_std.copy_(model.policy.log_std)

    buf = RolloutBuffer(T, N, env.observation_space, env.action_space)
    buf.obs.copy_(torch.as_tensor(rb.observations).reshape(buf.obs.shape))
    buf.actions.copy_(torch.as_tensor(rb.actions).reshape(buf.actions.shape))
    for name in ("log_probs", "values", "rewards"):
        getattr(buf, name).copy_(torch.as_tensor(getattr(rb, name)).reshape(T, N))
    buf.valid.fill_(True)

    # same weights, same data: same log-probs and values as SB3 stored during its rollout
    batch = buf.full_batch(sequence=False)
    with torch.no_grad():
        log_prob, _, value = ours.evaluate(batch)
    assert torch.allclose(log_prob, batch.log_probs, atol=1e-5)
    assert torch.allclose(value, batch.values, atol=1e-5)

    # GAE: SB3 folds the truncation bootstrap into the reward and marks every end as a start
    starts = torch.as_tensor(rb.episode_starts).bool()  # (T, N)
    last_dones = torch.as_tensor(model._last_episode_starts).bool()  # (N,)
    buf.terminated.copy_(torch.cat([starts[1:], last_dones[None]]))
    with torch.no_grad():
        obs = torch.as_tensor(model._last_obs).float()
        buf.last_value.copy_(model.policy.predict_values(obs).squeeze(-1))
    buf.compute_gae(cfg.gamma, cfg.gae_lambda)
    sb3_advantages = torch.as_tensor(rb.advantages).reshape(T, N)
    assert torch.allclose(buf.advantages, sb3_advantages, atol=1e-4, rtol=1e-5)
    assert buf.terminated.any()  # the data holds episode ends

    before = [mine.weight.detach().clone() for mine, _ in pairs]
    ppo = PPO(ours, cfg, num_iterations=10)
    stats = ppo.update(buf, iteration=0)
    model.train()
    logged = model.logger.name_to_value
    assert stats["value_loss"] == pytest.approx(logged["train/value_loss"], rel=1e-4)
    assert stats["policy_loss"] == pytest.approx(logged["train/policy_gradient_loss"], abs=1e-6)
    for (mine, theirs), start in zip(pairs, before):
        moved = (mine.weight - start).abs().max().item()
        gap = (mine.weight - theirs.weight).abs().max().item()
        assert moved > 1e-5  # the update did change the weights...
        assert gap < 1e-3 * moved  # ...exactly as SB3's, up to float rounding
        assert (mine.bias - theirs.bias).abs().max().item() < 1e-7
    if ours.continuous:
        assert (ours.log_std - model.policy.log_std).abs().max().item() < 1e-6
