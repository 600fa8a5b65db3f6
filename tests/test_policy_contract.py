"""The policy contract (`agents.policies.base.Policy`): a new policy type is one class and one
`register_policy` line, every optional method has a default, and the harness hands a policy the
env's own defaults instead of the policy knowing the env."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from agents.policies import Minibatch, Policy, PolicyConfig, base, make_policy, register_policy
from agents.policies import policy_class as lookup
from agents.run import checkpoint as ckpt
from agents.run.config import load_config
from agents.run.envs import env_kwargs_with_defaults
from agents.run.trainer import Trainer, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class LinearConfig(PolicyConfig):
    type: Literal["linear"] = "linear"


class LinearPolicy(Policy):
    """The smallest useful policy: linear logits and a linear value on a flat Box observation,
    Discrete actions. Only the four required methods; every other one is the base's default."""

    Config = LinearConfig

    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()
        self.actor, self.critic = nn.Linear(obs_dim, n_actions), nn.Linear(obs_dim, 1)

    @classmethod
    def from_config(cls, policy_cfg: Any, observation_space: Any, action_space: Any) -> Policy:
        return cls(int(observation_space.shape[0]), int(action_space.n))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: Any, deterministic: bool = False):
        logp = F.log_softmax(self.actor(obs.float()), -1)
        action = logp.argmax(-1) if deterministic else torch.multinomial(logp.exp(), 1)[:, 0]
        value = self.critic(obs.float())[:, 0]
        return action, logp.gather(1, action[:, None])[:, 0], value, state

    @torch.no_grad()
    def predict_value(self, obs: torch.Tensor, state: Any) -> torch.Tensor:
        return self.critic(obs.float())[:, 0]

    def evaluate(self, batch: Minibatch):
        logp = F.log_softmax(self.actor(batch.obs.float()), -1)
        log_prob = logp.gather(1, batch.actions.long()[:, None])[:, 0]
        return log_prob, -(logp.exp() * logp).sum(-1), self.critic(batch.obs.float())[:, 0]


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the policy registry: registrations in a test do not leak."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


def linear_yaml(tmp_path) -> Path:
    data = yaml.safe_load((CONFIGS / "cartpole.yaml").read_text())
    data["policy"] = {"type": "linear"}
    path = tmp_path / "linear.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_new_policy_type_is_one_class_and_one_register_line(registry, tmp_path):
    register_policy("linear", LinearPolicy)
    cfg = load_config(linear_yaml(tmp_path), [
        "total_timesteps=512", "ppo.n_epochs=1", "eval.episodes=2", "run.progress=false",
        f"run.root={tmp_path}", "kl.enabled=true",  # the reference: the default frozen copy
    ])  # fmt: skip
    run = train(cfg, name="linear")
    meta, tensors = ckpt.read_checkpoint(ckpt.latest_checkpoint(run / "checkpoints"))
    assert meta["global_step"] == 512
    assert {"policy/actor.weight", "policy/critic.bias", "reference/actor.weight"} <= set(tensors)


def test_every_optional_method_has_a_default():
    policy = LinearPolicy(4, 2)
    assert policy.initial_state(3) is None
    state = object()
    assert policy.reset_state(state, torch.zeros(3, dtype=torch.bool).numpy()) is state
    assert policy.has_critic and not policy.values_after_rollout
    with pytest.raises(NotImplementedError):
        policy.rollout_values(None)
    reference = policy.reference()  # a frozen copy
    assert reference is not policy and not any(p.requires_grad for p in reference.parameters())
    assert torch.equal(reference.actor.weight, policy.actor.weight)
    assert policy.checkpoint_state_dict().keys() == policy.state_dict().keys()
    assert LinearPolicy.pinned_folders(LinearConfig()) == {}
    LinearPolicy.check_env_kwargs(LinearConfig(), {"anything": 1})  # no check
    policy.set_compute_dtype("float32")
    with pytest.raises(ValueError, match=r"run.dtype='bfloat16' is for LM policies"):
        policy.set_compute_dtype("bfloat16")
    with pytest.raises(TypeError, match="eval.sampling needs a policy with sampling settings"):
        policy.sampling(temperature=0.5)
    with pytest.raises(TypeError, match="no pretrained format"):
        policy.save_pretrained("unused")
    assert LinearConfig().critic_choice() is None


def test_a_policy_without_the_required_methods_cannot_be_built():
    class NoEvaluate(Policy):
        @classmethod
        def from_config(cls, policy_cfg, observation_space, action_space):
            return cls()

        def act(self, obs, state, deterministic=False): ...

        def predict_value(self, obs, state): ...

    with pytest.raises(TypeError, match="evaluate"):
        NoEvaluate()


def test_the_registry_takes_policy_classes_only(registry):
    with pytest.raises(TypeError, match="not a subclass of Policy"):
        register_policy("linear-layer", nn.Linear)
    register_policy("linear-layer", "torch.nn:Linear")  # lazy: checked on first use
    with pytest.raises(TypeError, match=r"torch.nn:Linear, which is not a subclass"):
        lookup("linear-layer")
    register_policy("linear", LinearPolicy)
    env = gym.make("CartPole-v1")
    assert isinstance(make_policy(LinearConfig(), env.observation_space, env.action_space),
                      LinearPolicy)  # fmt: skip
    assert lookup("mlp").__name__ == "MLPActorCritic" and issubclass(lookup("lm"), Policy)


def test_env_kwargs_with_defaults_reads_the_env_not_the_policy():
    assert env_kwargs_with_defaults("CartPole-v1", None) == {
        "sutton_barto_reward": False, "render_mode": None}  # fmt: skip
    kwargs = env_kwargs_with_defaults("textenv:TextRLHF-v0", {"max_new_tokens": 8})
    assert kwargs["max_new_tokens"] == 8 and kwargs["max_prompt_tokens"] == 32


def test_the_lm_size_check_sees_the_envs_own_defaults():
    """An env registered with other defaults than TextRLHF-v0's is checked with ITS sizes
    before any env exists (the LM policy knows no env)."""
    env_id = "LongTextForContractTest-v0"
    gym.register(env_id, entry_point="textenv.env:TextRLHFEnv", kwargs={"max_new_tokens": 400})
    try:
        cfg = load_config(CONFIGS / "text_edit_distance.yaml",
                          [f"env.id={env_id}", "env.kwargs={}", "env.vectorization=sync",
                           "run.progress=false"])  # fmt: skip
        with pytest.raises(ValueError, match=r"32 \+ 400 = 432 tokens exceeds .*320"):
            Trainer(cfg)
    finally:
        del gym.registry[env_id]
