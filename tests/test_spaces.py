"""Any standard Gymnasium space: observation encoding, action distributions, rollout storage,
training, checkpoint resume and a user env given as `module:EnvId`.

The toy env `ToySpaces-v0` shows a hidden bit k (new every step) inside an observation of the
chosen kind and pays the fraction of action dimensions that equal k: a policy that reads k out of
any of the observation kinds scores 1 per step, a random one about 0.5.
"""

from __future__ import annotations

import json
import math
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from helpers import CONFIGS

from agents.core.buffer import RolloutBuffer
from agents.core.rollout import EnvRunner, flatten_arrays, obs_to_tensor, unflatten_arrays
from agents.policies import Minibatch
from agents.policies.mlp import MLPActorCritic
from agents.policies.spaces import ObsEncoder, flat_dim
from agents.run.config import load_config
from agents.run.trainer import Trainer, new_run_dir

# ----------------------------------------------------------------------------- the toy env

NESTED_DICT = spaces.Dict(
    {
        "pos": spaces.Tuple((spaces.Discrete(3), spaces.Discrete(2, start=-1))),
        "vel": spaces.Box(-1.0, 1.0, (2,), np.float32),
        "more": spaces.Dict({"bits": spaces.MultiBinary(2), "cell": spaces.Discrete(4)}),
    }
)
OBS_SPACES = {
    "discrete": spaces.Discrete(2),
    "multidiscrete": spaces.MultiDiscrete([2, 3]),
    "multibinary": spaces.MultiBinary(3),
    "box": spaces.Box(-1.0, 1.0, (2,), np.float32),
    "tuple": spaces.Tuple((spaces.Discrete(2), spaces.Box(-1.0, 1.0, (1,), np.float32))),
    "dict": NESTED_DICT,
}
ACTION_SPACES = {
    "discrete": spaces.Discrete(2),
    "box": spaces.Box(-1.0, 1.0, (2,), np.float32),
    "multidiscrete": spaces.MultiDiscrete([2, 3, 2]),
    "multibinary": spaces.MultiBinary(3),
}


class ToySpacesEnv(gym.Env):
    """Observation: the bit k hidden among random parts; reward: the fraction of action
    dimensions equal to k (Box: the sign of each dimension); 8 steps per episode."""

    def __init__(self, obs: str = "tuple", act: str | gym.Space = "discrete"):
        self.obs_kind = obs
        self.observation_space = OBS_SPACES[obs]
        self.action_space = ACTION_SPACES[act] if isinstance(act, str) else act
        self.k, self.t = 0, 0

    def _obs(self):
        k, rng = self.k, self.np_random
        noise = rng.uniform(-1, 1, 2).astype(np.float32)
        return {
            "discrete": k,
            "multidiscrete": np.array([k, rng.integers(3)]),
            "multibinary": np.array([rng.integers(2), k, rng.integers(2)], dtype=np.int8),
            "box": np.array([2 * k - 1, noise[0]], dtype=np.float32),
            "tuple": (k, noise[:1]),
            "dict": {
                "pos": (int(rng.integers(3)), k - 1),
                "vel": noise,
                "more": {"bits": rng.integers(2, size=2).astype(np.int8), "cell": 3},
            },
        }[self.obs_kind]

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.k, self.t = int(self.np_random.integers(2)), 0
        return self._obs(), {}

    def step(self, action):
        box = isinstance(self.action_space, spaces.Box)
        chosen = np.asarray(action) > 0 if box else np.asarray(action)
        reward = float(np.mean(chosen.astype(np.int64) == self.k))
        self.k, self.t = int(self.np_random.integers(2)), self.t + 1
        return self._obs(), reward, self.t >= 8, False, {}


if "ToySpaces-v0" not in gym.registry:
    gym.register("ToySpaces-v0", entry_point=ToySpacesEnv)


def batch_of(space: gym.Space, n: int, seed: int = 0):
    """n samples of `space` batched as a vector env returns them (numpy), and the samples."""
    space.seed(seed)
    samples = [space.sample() for _ in range(n)]
    out = gym.vector.utils.create_empty_array(space, n)
    return gym.vector.utils.concatenate(space, samples, out), samples


def minibatch(obs, actions) -> Minibatch:
    n = actions.shape[0]
    zeros = torch.zeros(n)
    return Minibatch(obs, actions, zeros, zeros, zeros, zeros, torch.ones(n, dtype=torch.bool))


# ----------------------------------------------------------------------------- observations


@pytest.mark.parametrize("kind", list(OBS_SPACES))
def test_observations_of_every_kind_act_and_evaluate(kind):
    torch.manual_seed(0)
    space = OBS_SPACES[kind]
    policy = MLPActorCritic(space, spaces.Discrete(3))
    obs, _ = batch_of(space, 16)
    obs = obs_to_tensor(obs)
    action, log_prob, value, state = policy.act(obs, None)
    assert action.shape == log_prob.shape == value.shape == (16,) and state is None
    new_log_prob, entropy, new_value = policy.evaluate(minibatch(obs, action))
    torch.testing.assert_close(new_log_prob, log_prob)
    torch.testing.assert_close(new_value, value)
    assert entropy.shape == (16,) and (entropy > 0).all()
    assert policy.predict_value(obs, None).shape == (16,)


@pytest.mark.parametrize("kind", list(OBS_SPACES))
def test_encoding_equals_gymnasium_flatten(kind):
    """One batched torch call == gymnasium.spaces.flatten sample by sample (Discrete and
    MultiDiscrete one-hot, Dict keys in the space's (sorted) order)."""
    space = OBS_SPACES[kind]
    obs, samples = batch_of(space, 32, seed=1)
    encoded = ObsEncoder(space)(obs_to_tensor(obs))
    expected = np.stack([spaces.flatten(space, s) for s in samples]).astype(np.float32)
    assert encoded.dtype == torch.float32 and encoded.shape == (32, flat_dim(space))
    np.testing.assert_array_equal(encoded.numpy(), expected)


def test_one_hot_encoding_against_hand_built_vectors():
    blackjack = spaces.Tuple((spaces.Discrete(32), spaces.Discrete(11), spaces.Discrete(2)))
    obs = (torch.tensor([13, 0]), torch.tensor([5, 10]), torch.tensor([1, 0]))
    expected = torch.zeros(2, 45)
    expected[0, [13, 32 + 5, 43 + 1]] = 1.0
    expected[1, [0, 32 + 10, 43 + 0]] = 1.0
    assert torch.equal(ObsEncoder(blackjack)(obs), expected)

    # MultiDiscrete with a start: dimension j's block is nvec[j] long, value v at v - start[j]
    md = spaces.MultiDiscrete([3, 2], start=[1, -1])
    assert torch.equal(
        ObsEncoder(md)(torch.tensor([[3, -1], [1, 0]])),
        torch.tensor([[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]], dtype=torch.float32),
    )
    # nested Dict: keys sorted (more, pos, vel), Tuples in order, MultiBinary and Box as floats
    obs = {
        "pos": (torch.tensor([2]), torch.tensor([-1])),
        "vel": torch.tensor([[0.5, -0.25]]),
        "more": {"bits": torch.tensor([[1, 0]], dtype=torch.int8), "cell": torch.tensor([3])},
    }
    more = [1, 0] + [0, 0, 0, 1]  # bits, cell one-hot (4)
    pos = [0, 0, 1] + [1, 0]  # Discrete(3) = 2, Discrete(2, start=-1) = -1
    expected = torch.tensor([more + pos + [0.5, -0.25]])
    assert torch.equal(ObsEncoder(NESTED_DICT)(obs), expected)
    # leading batch dims: (T, B, ...) encodes like its (T*B, ...) flattening
    seq = (torch.randint(32, (3, 4)), torch.randint(11, (3, 4)), torch.randint(2, (3, 4)))
    flat = tuple(x.reshape(12) for x in seq)
    assert torch.equal(
        ObsEncoder(blackjack)(seq, batch_dims=2).reshape(12, 45), ObsEncoder(blackjack)(flat)
    )


def test_unsupported_observation_space_names_what_is_supported():
    with pytest.raises(TypeError, match=r"cannot encode the observation space Text.*Tuple / Dict"):
        MLPActorCritic(spaces.Text(5), spaces.Discrete(2))


# ----------------------------------------------------------------------------- actions


@pytest.mark.parametrize(
    "space",
    [
        spaces.Discrete(3),
        spaces.Discrete(3, start=-1),
        spaces.Box(-1.0, 1.0, (2,), np.float32),
        spaces.Box(-1.0, 1.0, (2, 2), np.float32),
        spaces.MultiDiscrete([3, 3]),
        spaces.MultiDiscrete([3, 2, 4]),
        spaces.MultiDiscrete([[2, 3], [4, 2]]),
        spaces.MultiDiscrete([3, 2], start=[1, -1]),
        spaces.MultiBinary(3),
        spaces.MultiBinary([2, 2]),
    ],
    ids=str,
)
def test_actions_of_every_kind(space):
    torch.manual_seed(0)
    obs_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    policy = MLPActorCritic(obs_space, space)
    obs = torch.randn(64, 4)
    action, log_prob, value, _ = policy.act(obs, None)
    assert action.shape == (64, *space.shape) and log_prob.shape == value.shape == (64,)
    new_log_prob, entropy, _ = policy.evaluate(minibatch(obs, action))
    torch.testing.assert_close(new_log_prob, log_prob)
    assert entropy.shape == (64,)
    # what the env gets is in the space (Discrete/MultiDiscrete starts added, dtypes exact)
    env = gym.make_vec("ToySpaces-v0", num_envs=64, vectorization_mode="sync", act=space)
    env_action = EnvRunner(env, policy).env_action(action)
    assert env_action.dtype == space.dtype
    assert all(space.contains(a) for a in env_action)
    env.reset(seed=0)
    env.step(env_action)
    env.close()
    # the buffer stores the policy's action in the space's dtype, unchanged
    buffer = RolloutBuffer(2, 64, obs_space, space)
    buffer.actions[0] = action
    assert str(buffer.actions.dtype) == f"torch.{np.dtype(space.dtype).name}"
    assert torch.equal(buffer.actions[0].to(action.dtype), action)


def test_multi_discrete_log_prob_and_entropy_by_hand():
    torch.manual_seed(1)
    space = spaces.MultiDiscrete([3, 2, 4])
    policy = MLPActorCritic(spaces.Box(-1.0, 1.0, (4,), np.float32), space)
    with torch.no_grad():  # a non-trivial actor output
        policy.actor[-1].weight.normal_()
    obs = torch.randn(8, 4)
    action, log_prob, _, _ = policy.act(obs, None)
    _, entropy, _ = policy.evaluate(minibatch(obs, action))
    logits, _ = policy.forward(obs)
    blocks = torch.split(logits.detach(), [3, 2, 4], dim=-1)
    want_log_prob = torch.zeros(8)
    want_entropy = torch.zeros(8)
    for j, block in enumerate(blocks):
        p = torch.softmax(block, -1)
        want_log_prob += torch.log(p.gather(-1, action[:, j : j + 1]).squeeze(-1))
        want_entropy += -(p * torch.log(p)).sum(-1)
    torch.testing.assert_close(log_prob, want_log_prob)
    torch.testing.assert_close(entropy.detach(), want_entropy)
    # deterministic: the argmax of each block
    det, _, _, _ = policy.act(obs, None, deterministic=True)
    assert torch.equal(det, torch.stack([b.argmax(-1) for b in blocks], dim=-1))
    # sampling follows the probabilities and never picks a padding category
    many = policy.act(obs[:1].expand(20_000, 4), None)[0]
    for j, block in enumerate(blocks):
        freq = torch.bincount(many[:, j], minlength=space.nvec[j]).float() / 20_000
        assert len(freq) == space.nvec[j]
        torch.testing.assert_close(freq, torch.softmax(block[0], -1), atol=0.015, rtol=0)


def test_multi_binary_log_prob_and_entropy_by_hand():
    torch.manual_seed(2)
    policy = MLPActorCritic(spaces.Box(-1.0, 1.0, (4,), np.float32), spaces.MultiBinary(3))
    with torch.no_grad():
        policy.actor[-1].weight.normal_()
    obs = torch.randn(8, 4)
    action, log_prob, _, _ = policy.act(obs, None)
    assert action.dtype == torch.int8 and set(action.unique().tolist()) <= {0, 1}
    _, entropy, _ = policy.evaluate(minibatch(obs, action))
    p = torch.sigmoid(policy.forward(obs)[0].detach())  # (8, 3)
    a = action.float()
    want_log_prob = (a * p.log() + (1 - a) * (1 - p).log()).sum(-1)
    want_entropy = -(p * p.log() + (1 - p) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(log_prob, want_log_prob)
    torch.testing.assert_close(entropy.detach(), want_entropy)
    det = policy.act(obs, None, deterministic=True)[0]
    assert torch.equal(det, (p > 0.5).to(torch.int8))
    many = policy.act(obs[:1].expand(20_000, 4), None)[0].float().mean(0)
    torch.testing.assert_close(many, p[0], atol=0.015, rtol=0)


# ----------------------------------------------------------------------------- storage


def test_buffer_keeps_the_structure_and_dtypes_of_the_spaces():
    buffer = RolloutBuffer(4, 2, NESTED_DICT, spaces.MultiBinary(3))
    assert isinstance(buffer.obs["pos"], tuple) and buffer.obs["pos"][0].dtype == torch.int64
    assert buffer.obs["more"]["bits"].dtype == torch.int8
    assert buffer.obs["vel"].shape == (4, 2, 2) and buffer.actions.dtype == torch.int8
    buffer.obs["pos"][0][:] = torch.arange(8).reshape(4, 2)
    batches = list(buffer.minibatches(4, sequence=False))
    assert len(batches) == 2 and isinstance(batches[0].obs["pos"], tuple)
    seen = torch.cat([b.obs["pos"][0] for b in batches])
    assert sorted(seen.tolist()) == list(range(8))


def test_next_observation_round_trips_through_flat_string_keys():
    obs, _ = batch_of(NESTED_DICT, 3)
    flat = flatten_arrays(obs)
    assert sorted(flat) == ["more/bits", "more/cell", "pos/0", "pos/1", "vel"]
    back = unflatten_arrays(NESTED_DICT, flat)
    assert isinstance(back["pos"], tuple) and set(back) == set(obs)
    for key, value in flatten_arrays(back).items():
        np.testing.assert_array_equal(value, flat[key])
    assert list(flatten_arrays(np.zeros(3))) == [""]  # a plain array: key "obs/" as before


# ----------------------------------------------------------------------------- training


def toy_config(tmp_path, obs: str, act: str, *extra):
    return load_config(
        CONFIGS / "cartpole.yaml",
        [
            "env.id=ToySpaces-v0",
            f"env.kwargs={{obs: {obs}, act: {act}}}",
            "env.num_envs=4",
            "ppo.n_steps=16",
            "ppo.batch_size=32",
            "ppo.n_epochs=4",
            "ppo.gamma=0.0",
            "total_timesteps=640",
            "eval.episodes=4",
            "run.progress=false",
            f"run.root={tmp_path}",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    "obs, act",
    [
        ("discrete", "discrete"),
        ("multidiscrete", "multibinary"),
        ("multibinary", "multidiscrete"),
        ("tuple", "multidiscrete"),
        ("dict", "multibinary"),
        ("dict", "box"),
    ],
)
def test_short_training_runs_on_every_observation_kind(tmp_path, obs, act):
    """640 steps lift the per-step reward from about 0.5 (random) towards 1."""
    trainer = Trainer(toy_config(tmp_path, obs, act))
    assert trainer.learn(log=False)["steps"] == 640
    assert np.mean(trainer.evaluate().returns) / 8 > 0.6


@pytest.mark.parametrize(
    "env_id, kwargs",
    [("FrozenLake-v1", "{is_slippery: false}"), ("Taxi-v4", "{}"), ("Blackjack-v1", "{}")],
)
def test_toy_text_envs_train(tmp_path, env_id, kwargs):
    cfg = load_config(
        CONFIGS / "cartpole.yaml",
        [f"env.id={env_id}", f"env.kwargs={kwargs}", "total_timesteps=512", "ppo.n_epochs=2",
         "eval.episodes=4", "run.progress=false", f"run.root={tmp_path}"],
    )  # fmt: skip
    trainer = Trainer(cfg)
    assert trainer.learn(log=False)["steps"] == 512
    assert math.isfinite(np.mean(trainer.evaluate().returns))


@pytest.fixture
def no_plots(monkeypatch):
    """training_curves.png costs seconds of matplotlib per run and is tested elsewhere."""
    monkeypatch.setattr("agents.run.logger.plot_curves", lambda rows, path: None)


@pytest.mark.parametrize(
    "config, extra, obs_type",
    [
        ("blackjack.yaml", [], tuple),
        (
            "cartpole.yaml",
            ["env.id=ToySpaces-v0", "env.kwargs={obs: dict, act: multibinary}"],
            dict,
        ),
    ],
    ids=["Blackjack-Tuple", "ToySpaces-nested-Dict"],
)
def test_resume_after_half_equals_an_uninterrupted_run(tmp_path, no_plots, config, extra, obs_type):
    """Tuple and nested Dict observations in the checkpoint (the next observation, leaf by leaf)
    and Blackjack's state (its hands are lists): a run stopped halfway and resumed is
    bit-exact."""
    cfg = load_config(
        CONFIGS / config,
        [*extra, "env.num_envs=4", "total_timesteps=1024", "ppo.n_steps=32", "ppo.batch_size=64",
         "ppo.n_epochs=2", "eval.episodes=20", "run.progress=false", f"run.root={tmp_path}"],
    )  # fmt: skip
    full = Trainer(cfg, new_run_dir(cfg, "full"))
    full.learn()
    half = Trainer(cfg, new_run_dir(cfg, "half"))
    half.learn(stop_at=512)
    assert half.global_step == 512
    torch.manual_seed(123)
    np.random.seed(123)
    resumed = Trainer(cfg, half.run_dir, resume=True)
    assert isinstance(resumed.collector.runner.obs, obs_type)
    resumed.learn()
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = json.loads((full.run_dir / "summary.json").read_text())
    sb = json.loads((half.run_dir / "summary.json").read_text())
    assert sa["final_return"] == sb["final_return"] and sa["episodes"] == sb["episodes"]


# ----------------------------------------------------------------------------- a user's env

USER_MODULE = '''
"""A user's env package: registers its env on import, as Gymnasium packages do."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Lights(gym.Env):
    """Tuple observation (which light is on, a noise value); MultiDiscrete action: a switch
    position per panel; reward 1 per panel set to the lit light."""

    observation_space = spaces.Tuple((spaces.Discrete(3), spaces.Box(-1, 1, (1,), np.float32)))
    action_space = spaces.MultiDiscrete([3, 3])

    def _obs(self):
        return (self.light, self.np_random.uniform(-1, 1, 1).astype(np.float32))

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.light, self.t = int(self.np_random.integers(3)), 0
        return self._obs(), {}

    def step(self, action):
        reward = float(np.sum(np.asarray(action) == self.light))
        self.light, self.t = int(self.np_random.integers(3)), self.t + 1
        return self._obs(), reward, False, self.t >= 10, {}


gym.register("Lights-v0", entry_point=Lights)
'''


def test_user_env_from_the_cli_as_module_colon_id(tmp_path, monkeypatch, no_plots):
    from agents.cli import main

    (tmp_path / "user_lights.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "lights.yaml"
    config.write_text("env: {id: 'user_lights:Lights-v0', num_envs: 4}\n")
    sets = ["ppo.n_steps=16", "ppo.batch_size=32", "ppo.n_epochs=4", "total_timesteps=640",
            "eval.episodes=4", "run.progress=false", f"run.root={tmp_path / 'runs'}"]  # fmt: skip
    assert main(["train", str(config), "--set", *sets, "--name", "lights"]) in (0, None)
    summary = json.loads((tmp_path / "runs" / "lights" / "summary.json").read_text())
    assert summary["steps"] == 640
    assert isinstance(summary["final_return"], float) and summary["final_return"] > 0


# ----------------------------------------------------------------------------- SB3 side of compare


def test_sb3_gets_tuple_observations_flattened_and_the_report_says_so(tmp_path):
    from agents.run.compare import RunResult, SB3Adapter, run_sb3, write_report

    cfg = load_config(
        CONFIGS / "blackjack.yaml",
        ["total_timesteps=512", "ppo.n_steps=32", "ppo.batch_size=64", "ppo.n_epochs=1",
         "eval.episodes=16", "run.progress=false"],
    )  # fmt: skip
    result = run_sb3(cfg)
    assert result.flattened_obs and result.steps == 512 and -1 <= result.final_return <= 1

    class Echo:  # an SB3-like model that records what predict() receives
        def predict(self, obs, deterministic):
            self.obs = obs
            return np.zeros(2, dtype=np.int64), None

    model = Echo()
    nested = obs_to_tensor(batch_of(NESTED_DICT, 2)[0])
    SB3Adapter(model).act(nested, None)
    assert isinstance(model.obs["pos"], tuple) and isinstance(model.obs["pos"][0], np.ndarray)

    ours = RunResult("ours", "Blackjack-v1", 1, -0.05, 1.0, 512)
    write_report([ours, result], tmp_path, {"Blackjack-v1": None})
    md = (tmp_path / "compare.md").read_text()
    assert "for Blackjack-v1 its env is wrapped in Gymnasium's FlattenObservation" in md
    assert "| Blackjack-v1 | ours | 1 | -0.050 ± 0.000 | -0.050 |" in md  # returns of order 1
