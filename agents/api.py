"""The Python API: Stable-Baselines3's shape over the one training path.

    import gymnasium as gym
    from agents import PPO, evaluate_policy

    model = PPO("mlp", "CartPole-v1", seed=1).learn(100_000)
    mean, std = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=20)

`PPO(policy, env, **kwargs)` builds the same pydantic `Config` a YAML file builds (SB3's keyword
names map onto the `ppo:` section, our other sections are dicts) and drives the same `Trainer`
that `textrlhf train` drives; `train(config, overrides)` is that command. Nothing is written to
disk unless asked for (`run=dict(root=...)` or `tensorboard_log=`): then `learn` writes the same
run folder as the CLI.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.core.rollout import EnvRunner, EpisodeLog, obs_to_tensor, to_env_action
from agents.policies import policy_class
from agents.run import checkpoint as ckpt
from agents.run.config import Config, PPOConfig, config_text, load_config, to_dict
from agents.run.config_types import MAX_STEPS
from agents.run.evaluation import evaluate_policy as run_episodes
from agents.run.files import atomic_write_text
from agents.run.space_codec import space_from_json, space_to_json

# SB3's PPO keywords that are keys of our `ppo:` section, under the same name
SB3_PPO_KEYWORDS = (
    "learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range",
    "clip_range_vf", "ent_coef", "vf_coef", "max_grad_norm", "target_kl", "normalize_advantage",
)  # fmt: skip
# SB3 keywords that have no counterpart here: an error that says so, not "unexpected keyword"
SB3_ONLY = {
    "use_sde": "state-dependent exploration is not implemented",
    "sde_sample_freq": "state-dependent exploration is not implemented",
    "rollout_buffer_class": "the rollout buffer is fixed (agents/core/buffer.py)",
    "rollout_buffer_kwargs": "the rollout buffer is fixed (agents/core/buffer.py)",
    "stats_window_size": "episode statistics always cover the last 100 episodes",
    "_init_setup_model": "the model is always built in the constructor",
}
# our config sections other than ppo:, given as dicts
SECTIONS = ("advantage", "kl", "score", "eval", "run")


class BaseCallback:
    """SB3-style callback: subclass it and override what you need. `on_step` is called after
    every PPO iteration (one rollout + one update); returning False stops training cleanly (with
    a run folder: a checkpoint and the summary, as Ctrl-C does).

    Attributes while training: `model` (the PPO), `num_timesteps`, `locals` (the iteration's
    `metrics` dict, `iteration`, `num_timesteps`)."""

    def __init__(self) -> None:
        self.model: PPO | None = None
        self.num_timesteps = 0
        self.locals: dict[str, Any] = {}

    def init_callback(self, model: PPO) -> None:
        self.model = model

    def on_training_start(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        """Before the first iteration of a `learn` call."""

    def on_rollout_end(self) -> None:
        """After each rollout, before its update."""

    def on_step(self) -> bool:
        """After each iteration; False stops training."""
        return True

    def on_training_end(self) -> None:
        """After the last iteration of a `learn` call (also after a stop)."""


class FunctionCallback(BaseCallback):
    """A plain callable `(locals_dict) -> bool` as a callback: called after each iteration with
    the iteration's `metrics`, `iteration` and `num_timesteps`; False stops training."""

    def __init__(self, fn: Callable[[dict[str, Any]], bool | None]):
        super().__init__()
        self.fn = fn

    def on_step(self) -> bool:
        return self.fn(self.locals) is not False


def as_callback(callback: Any) -> BaseCallback | None:
    """None, a `BaseCallback`, or a callable -> a callback object (TypeError otherwise)."""
    if callback is None or isinstance(callback, BaseCallback):
        return callback
    if callable(callback):
        return FunctionCallback(callback)
    raise TypeError(
        f"callback must be a BaseCallback or a callable (locals) -> bool, got {callback!r}"
    )


# ----------------------------------------------------------------------------- envs


def env_label(env: Any) -> str:
    """The name a config records for an env object: its registered id, or its class."""
    spec = env.spec if isinstance(env, (gym.Env, gym.vector.VectorEnv)) else None
    if spec is not None:
        return spec.id
    kind = type(env)
    return f"{kind.__module__}.{kind.__qualname__}"


def spec_settings(env: Any) -> dict[str, Any]:
    """The `env:` config keys that remake an env object from its registered spec (a VectorEnv
    from gym.make_vec, an Env from gym.make): its kwargs and vectorization mode, so that a saved
    model can be evaluated and continued from its config. Empty when there is no spec or its
    kwargs are not plain data (a reward function object): the config then records the id only."""
    spec = env.spec if isinstance(env, (gym.Env, gym.vector.VectorEnv)) else None
    if spec is None:
        return {}
    kwargs = {k: v for k, v in spec.kwargs.items()
              if k not in ("num_envs", "vectorization_mode", "render_mode")}  # fmt: skip
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError):
        return {}
    mode = spec.kwargs.get("vectorization_mode") if isinstance(env, gym.vector.VectorEnv) else None
    return {"kwargs": kwargs, **({"vectorization": mode} if mode else {})}


def vector_factory(env: Any) -> Callable[[int], gym.vector.VectorEnv] | None:
    """A function that makes more vector envs like `env` (for evaluation and `generate`), or
    None when `env` cannot be copied: an env id, a callable that returns an Env, an Env
    instance (deep copies), or a VectorEnv that `gym.make_vec` built (its spec holds the
    arguments)."""
    if isinstance(env, str):
        return None  # the Trainer makes its envs from the config
    if isinstance(env, gym.vector.VectorEnv):
        spec = env.spec
        if spec is None:
            return None
        kwargs = {k: v for k, v in spec.kwargs.items() if k != "num_envs"}
        return lambda n: gym.make_vec(spec.id, num_envs=n, **kwargs)
    if isinstance(env, gym.Env):
        return lambda n: gym.vector.SyncVectorEnv([lambda: copy.deepcopy(env)] * n)
    if callable(env):
        return lambda n: gym.vector.SyncVectorEnv([env] * n)
    return None


def make_vector_env(env: Any, n_envs: int) -> gym.vector.VectorEnv:
    """The training vector env for an env object (see `vector_factory`)."""
    if isinstance(env, gym.vector.VectorEnv):
        return env
    if isinstance(env, gym.Env):
        try:
            copies = [copy.deepcopy(env) for _ in range(n_envs)]
        except Exception as err:
            raise TypeError(
                f"PPO needs {n_envs} copies of the env {env_label(env)}, and it cannot be "
                f"copied ({type(err).__name__}: {err}); pass a function that makes one, e.g. "
                "PPO(policy, lambda: MyEnv(), ...), or a gymnasium VectorEnv"
            ) from None
        return gym.vector.SyncVectorEnv([lambda e=e: e for e in copies])
    if callable(env):
        return gym.vector.SyncVectorEnv([env] * n_envs)
    raise TypeError(
        "env must be an env id (str), a gymnasium.Env, a callable that returns one, or a "
        f"gymnasium.vector.VectorEnv; got {type(env).__name__}"
    )


# ----------------------------------------------------------------------------- config


def _update(data: dict[str, Any], key: str, value: Any) -> None:
    """data[key] = value for a section given as a dict (merged into what is there)."""
    if not isinstance(value, dict):
        raise TypeError(f"{key}= takes a dict of config keys, e.g. {key}=dict(...), got {value!r}")
    data.setdefault(key, {}).update(value)


def config_data(
    policy: str, env: Any, n_envs: int | None, seed: int | None, device: str | None,
    policy_kwargs: dict[str, Any] | None, kwargs: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """PPO's keyword arguments -> the data of a `Config` (what a YAML file holds)."""
    if not isinstance(policy, str):
        raise TypeError(
            f"policy must be a registered policy type (str), got {policy!r}; see "
            "agents.register_policy for your own"
        )
    fields = policy_class(policy).Config.model_fields
    data: dict[str, Any] = {"policy": {"type": policy, **(policy_kwargs or {})}, "env": {}}
    data["env"]["id"] = env if isinstance(env, str) else env_label(env)
    data["env"].update(spec_settings(env))
    if isinstance(env, gym.vector.VectorEnv):
        if n_envs is not None and n_envs != env.num_envs:
            raise ValueError(f"n_envs={n_envs}, but the VectorEnv has {env.num_envs} envs")
        n_envs = env.num_envs
    if n_envs is not None:
        data["env"]["num_envs"] = n_envs
    if seed is not None:
        data["seed"] = seed
    if device is not None:
        data.setdefault("run", {})["device"] = device
    for key, value in kwargs.items():
        if key in SECTIONS:
            _update(data, key, value)
        elif key == "env_kwargs":  # the kwargs of the env the Trainer makes from an id
            _update(data["env"], "kwargs", value)
        elif key == "ppo":
            _update(data, "ppo", value)
        elif key in PPOConfig.model_fields:
            if callable(value):
                raise TypeError(
                    f"{key} takes a number; schedules are config keys here (ppo.anneal_lr, "
                    "ppo.anneal_clip: linear decay to 0, on by default)"
                )
            data.setdefault("ppo", {})[key] = value
        elif key in fields and key != "type":
            data["policy"][key] = value
        elif key in ("name", "total_timesteps"):
            data[key] = value
        elif key in SB3_ONLY:
            raise TypeError(f"PPO() got SB3's keyword {key!r}, which textrlhf does not have: "
                            f"{SB3_ONLY[key]}")  # fmt: skip
        else:
            allowed = [*PPOConfig.model_fields, *SECTIONS, *fields, "name", "env_kwargs"]
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"PPO() got an unexpected keyword argument {key!r}{hint}")
    return data


# ----------------------------------------------------------------------------- the model


class PPO:
    """PPO with SB3's interface, over the same Trainer as `textrlhf train`.

    policy: a registered policy type ("mlp", "lm", or your own: `agents.register_policy`).
    env: an env id (registered, or "module:EnvId"), a `gymnasium.Env` (copied `n_envs` times),
        a callable that returns an Env, or a `gymnasium.vector.VectorEnv`.
    n_envs: env copies (default: the policy type's default, e.g. 8 for "mlp"); a VectorEnv
        brings its own.
    kwargs: SB3's PPO names (`learning_rate`, `n_steps`, `batch_size`, ... every key of the
        config's `ppo:` section), the policy type's own keys (e.g. `model_path` for "lm"), and
        the other sections as dicts (`kl=`, `advantage=`, `score=`, `eval=`, `run=`).
        `env_kwargs=`: kwargs for an env made from an id. All validated like a YAML config.
    tensorboard_log: a folder: `learn` writes the run folder (TensorBoard events, metrics.csv,
        summary.json, curves, checkpoints) under it. Without it (or `run=dict(root=...)`)
        nothing is written to disk.
    """

    trainer: Any  # agents.run.trainer.Trainer, or None for a loaded model without an env

    def __init__(
        self,
        policy: str,
        env: Any,
        *,
        n_envs: int | None = None,
        seed: int | None = None,
        device: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | Path | None = None,
        verbose: int = 0,
        **kwargs: Any,
    ):
        data = config_data(policy, env, n_envs, seed, device, policy_kwargs, kwargs)
        if tensorboard_log is not None:
            data.setdefault("run", {})["root"] = str(tensorboard_log)
        self.write_run = tensorboard_log is not None or "root" in data.get("run", {})
        data.setdefault("run", {}).setdefault("progress", False)
        data.setdefault("eval", {}).setdefault("episodes", 0)  # SB3: evaluate_policy, not learn
        self.verbose = verbose
        self.env = env
        if "total_timesteps" not in data:  # `learn` sets the budget; any valid number until then
            data["total_timesteps"] = MAX_STEPS
        self.cfg = load_config(data)
        self._eval_factory = vector_factory(env)
        self.run_dir: Path | None = None
        self.summary: dict[str, Any] | None = None
        self._build_trainer()

    def _build_trainer(self) -> None:
        """The Trainer for `self.cfg` and `self.env` (an id: made from the config)."""
        from agents.run.trainer import Trainer

        cfg, env = self.cfg, self.env
        train_env = None if isinstance(env, str) else make_vector_env(env, cfg.env.num_envs)
        eval_env = None
        if cfg.eval.episodes > 0 and self._eval_factory is not None:
            eval_env = self._eval_factory(max(1, min(cfg.eval.episodes, cfg.env.num_envs)))
        self.trainer: Trainer | None = Trainer(cfg, env=train_env, eval_env=eval_env)
        self.policy = self.trainer.policy
        self.device = self.trainer.device
        self.observation_space = self.trainer.observation_space
        self.action_space = self.trainer.action_space

    # -- training ---------------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        """Env steps trained so far (n_steps * n_envs per iteration)."""
        return self.trainer.global_step if self.trainer is not None else self._loaded_step

    def learn(self, total_timesteps: int, callback: Any = None, progress_bar: bool = False) -> PPO:
        """Train for `total_timesteps` more env steps (whole iterations of n_steps * n_envs);
        a second call continues where the first stopped (optimizer, env, counters: two calls
        equal one call of the summed budget when no schedule depends on the budget). Returns
        the model."""
        from agents.run.rundir import new_run_dir

        if self.trainer is None:
            raise ValueError(
                f"this model was loaded without an env, and its env {self.cfg.env.id!r} is not "
                "one that can be made from its name; pass env= to PPO.load to train it"
            )
        per = self.trainer.steps_per_iteration
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, (int, np.integer)):
            raise TypeError(f"total_timesteps must be an int, got {total_timesteps!r}")
        if total_timesteps < per:
            raise ValueError(
                f"total_timesteps={total_timesteps} is less than one PPO iteration, n_steps * "
                f"n_envs = {per}"
            )
        self.trainer.extend_budget(int(total_timesteps))
        if self.write_run and self.run_dir is None:
            self.run_dir = new_run_dir(self.cfg, None, False)
            self.trainer.run_dir = self.run_dir
        callback = as_callback(callback)
        if callback is not None:
            callback.init_callback(self)
            callback.on_training_start({"total_timesteps": total_timesteps}, {})
        self.trainer.cfg = self.trainer.cfg.model_copy(update={
            "run": self.trainer.cfg.run.model_copy(update={"progress": bool(progress_bar)})
        })  # fmt: skip
        try:
            self.summary = self.trainer.learn(
                log=self.run_dir is not None, callback=self._hooks(callback), close=False
            )
        finally:
            if callback is not None:
                callback.on_training_end()
        return self

    def _hooks(self, callback: BaseCallback | None) -> Callable[[str, dict], bool] | None:
        """The Trainer's per-iteration hook: `verbose` printing and the user's callback."""
        if callback is None and not self.verbose:
            return None

        def hook(event: str, metrics: dict[str, Any]) -> bool:
            if callback is not None and event == "rollout_end":
                callback.on_rollout_end()
            if event != "iteration_end":
                return True
            if self.verbose:
                ret = metrics.get("rollout/ep_return")
                shown = f"{ret:.3f}" if ret is not None else "n/a"
                print(f"steps {self.num_timesteps:,}  return {shown}", flush=True)
            if callback is None:
                return True
            callback.num_timesteps = self.num_timesteps
            callback.locals = {
                "metrics": metrics, "iteration": self.trainer.iteration,
                "num_timesteps": self.num_timesteps, "self": self,
            }  # fmt: skip
            return callback.on_step()

        return hook

    # -- using the policy -------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """The policy's action for `observation` (one observation, or a batch with a leading
        axis), and its next recurrent state (None for MLPs), as SB3's `predict`."""
        space = self.observation_space
        single = _is_single(observation, space)
        obs = _batched(observation) if single else observation
        rows = _rows(obs)
        if state is None:
            state = self.policy.initial_state(rows)
        elif episode_start is not None:
            state = self.policy.reset_state(state, np.asarray(episode_start, dtype=bool))
        action, _, _, state = self.policy.act(obs_to_tensor(obs, self.device), state, deterministic)
        action = to_env_action(action, self.action_space)
        return (action[0] if single else action), state

    def generate(
        self, prompts: list[str], max_new_tokens: int | None = None, deterministic: bool = False
    ) -> list[str]:
        """LM policies: text in, text out. Each prompt runs as one episode of the env (the
        env's tokenizer and format), sampled as the policy samples (`deterministic`: greedy);
        returns the responses."""
        if not self.policy.is_sequence_policy:
            raise TypeError(f"generate is for LM policies; this model's policy is "
                            f"{self.cfg.policy.type!r}")  # fmt: skip
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of str, got {prompts!r}")
        env = self._generation_env(len(prompts), max_new_tokens)
        try:
            runner = EnvRunner(env, self.policy, self.device,
                               reset_options={"prompts": list(prompts)})  # fmt: skip
            responses: list[str | None] = [None] * len(prompts)
            log, t = EpisodeLog(), 0
            while any(r is None for r in responses):
                step = runner.step(log, deterministic, t=t)
                info = step.info.get("final_info", step.info)
                for row in np.flatnonzero(step.terminated | step.truncated):
                    if responses[row] is None:
                        responses[row] = str(info["response"][row])
                t += 1
            return [r or "" for r in responses]
        finally:
            env.close()

    def _generation_env(self, rows: int, max_new_tokens: int | None) -> gym.vector.VectorEnv:
        """The env `generate` runs: the training env's id and kwargs (from the config, or from
        the spec of a VectorEnv that gym.make_vec built), with a reward that needs no reference
        (free-form prompts have none; the responses are what is asked for)."""
        from agents.run.envs import make_env

        cfg, env = self.cfg, self.env
        if isinstance(env, gym.vector.VectorEnv) and env.spec is not None:
            env_id, mode = env.spec.id, env.spec.kwargs.get("vectorization_mode", "auto")
            kwargs = {k: v for k, v in env.spec.kwargs.items()
                      if k not in ("num_envs", "vectorization_mode")}  # fmt: skip
        elif isinstance(env, str) or env is None:
            env_id, mode = cfg.env.id, cfg.env.vectorization
            kwargs = {**cfg.env.kwargs, **cfg.eval.env_kwargs}
        else:
            raise ValueError(
                "generate makes an env like the training env, and this model's env object "
                "cannot be remade; train on an env id or on a VectorEnv from gym.make_vec"
            )
        kwargs["reward_fn"] = _no_reward
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        return make_env(env_id, rows, mode, kwargs)

    # -- saving -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the model to folder `path`: config.yaml, spaces.json and a checkpoint
        (safetensors weights and optimizer state + JSON metadata; no pickle). `PPO.load`
        reads it back, and so does `textrlhf eval` when the env can be made from the config."""
        if self.trainer is None:
            raise ValueError("a model loaded without an env has no optimizer state to save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / "config.yaml", config_text(self.trainer.cfg))
        spaces = {
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
        }
        atomic_write_text(path / "spaces.json", json.dumps(spaces, indent=2) + "\n")
        self.trainer.save(run_dir=path)
        return path

    @classmethod
    def load(cls, path: str | Path, env: Any = None, **kwargs: Any) -> PPO:
        """A model saved with `save`, or a `textrlhf train` run folder (its latest checkpoint).

        With `env` (or when the saved env id can be made), `learn` continues with the saved
        optimizer state and counters (the env starts fresh); without, `predict` and `generate`
        work from the saved spaces. `kwargs`: sections to change, e.g. `run=dict(root=...)`."""
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"{path} is not a saved model or run folder: no config.yaml")
        data = to_dict(load_config(path / "config.yaml"))
        for key, value in kwargs.items():
            if key not in SECTIONS:
                raise TypeError(f"PPO.load takes env= and the sections {list(SECTIONS)}, "
                                f"got {key!r}")  # fmt: skip
            _update(data, key, value)
        model = cls.__new__(cls)
        model.verbose, model.run_dir, model.summary = 0, None, None
        model.cfg = load_config(data)
        model.write_run = "root" in kwargs.get("run", {})
        checkpoint = ckpt.latest_checkpoint(path / "checkpoints")
        if env is None and _can_make(model.cfg.env.id):
            env = model.cfg.env.id
        model.env = env
        model._eval_factory = vector_factory(env) if env is not None else None
        if env is not None:
            model._build_trainer()
            model.trainer.load(checkpoint, restore_env=False)
            return model
        model._load_policy_only(path, checkpoint)
        return model

    def _load_policy_only(self, folder: Path, checkpoint: Path) -> None:
        """The policy of a saved model, for `predict`/`generate`, without an env (spaces.json)."""
        from agents.run.evaluation import load_run_policy
        from agents.run.jsonio import read_json
        from agents.run.trainer import resolve_device

        spaces_file = folder / "spaces.json"
        try:
            spaces = read_json(spaces_file)
            obs_space = space_from_json(spaces["observation_space"])
            act_space = space_from_json(spaces["action_space"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"cannot rebuild the model's spaces from {spaces_file} ({err}); pass env= to "
                "PPO.load"
            ) from None
        self.trainer = None
        self.device = resolve_device(self.cfg.run.device)
        policy, _ = load_run_policy(self.cfg, folder, checkpoint, (obs_space, act_space))
        self.policy = policy.to(self.device)
        self.observation_space, self.action_space = obs_space, act_space
        self._loaded_step = int(ckpt.read_checkpoint(checkpoint)[0].get("global_step", 0))


def _no_reward(prompt: str, response: str) -> float:
    """The reward of `generate`'s episodes: none is needed."""
    return 0.0


def _can_make(env_id: str) -> bool:
    """Whether an env id names a registered env (a saved model of a custom env object records
    its class name instead, which cannot be made)."""
    from agents.run.envs import find_spec

    try:
        find_spec(env_id)
    except ValueError:
        return False
    return True


def _is_single(observation: Any, space: gym.Space) -> bool:
    """Whether `observation` is one observation of `space` (not a batch)."""
    if isinstance(space, gym.spaces.Dict):
        key = next(iter(space.spaces))
        return _is_single(observation[key], space.spaces[key])
    if isinstance(space, gym.spaces.Tuple):
        return _is_single(observation[0], space.spaces[0])
    return np.asarray(observation).shape == tuple(space.shape or ())


def _batched(observation: Any) -> Any:
    if isinstance(observation, dict):
        return {k: _batched(v) for k, v in observation.items()}
    if isinstance(observation, tuple):
        return tuple(_batched(v) for v in observation)
    return np.asarray(observation)[None]


def _rows(observation: Any) -> int:
    if isinstance(observation, dict):
        return _rows(next(iter(observation.values())))
    if isinstance(observation, tuple):
        return _rows(observation[0])
    return int(np.asarray(observation).shape[0])


# ----------------------------------------------------------------------------- functions


def evaluate_policy(
    model: PPO,
    env: Any,
    n_eval_episodes: int = 10,
    deterministic: bool = True,
    return_episode_rewards: bool = False,
    seed: int | None = None,
) -> tuple[float, float] | tuple[list[float], list[int]]:
    """SB3's `evaluate_policy`: run `n_eval_episodes` whole episodes of `env` (an Env, a
    VectorEnv, a callable or an env id) with the model's policy; returns (mean, std) of the
    episode returns, or (returns, lengths) with `return_episode_rewards`."""
    if not isinstance(model, PPO):
        raise TypeError(f"evaluate_policy takes a PPO model, got {type(model).__name__}")
    if isinstance(env, str):
        from agents.run.envs import make_env

        env = make_env(env, 1)
    elif not isinstance(env, gym.vector.VectorEnv):
        env = make_vector_env(env, 1)
    log = run_episodes(model.policy, env, n_eval_episodes, deterministic, seed,
                       model.trainer.device)  # fmt: skip
    if return_episode_rewards:
        return log.returns, log.lengths
    return float(np.mean(log.returns)), float(np.std(log.returns))


@dataclass
class Run:
    """What `train` returns: the run folder and its summary.json."""

    dir: Path
    summary: dict[str, Any]


def train(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    name: str | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    stop_on_interrupt: bool = True,
) -> Run:
    """What `textrlhf train CONFIG --set ...` does: load the config (a YAML path, a dict or a
    `Config`) with `overrides` ("key=value"), train into a new run folder (or continue `resume`),
    and return the folder and its summary. The first Ctrl-C/SIGTERM stops at the end of an
    iteration with a checkpoint (`summary["interrupted"]`; `resume=run.dir` continues)."""
    from agents.run.trainer import train as train_run

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    if isinstance(config, Config) and overrides:
        cfg = load_config(to_dict(config), overrides)
    run_dir = train_run(cfg, name=name, overwrite=overwrite, resume=resume,
                        stop_on_interrupt=stop_on_interrupt)  # fmt: skip
    from agents.run.jsonio import read_json

    return Run(run_dir, read_json(run_dir / "summary.json"))
