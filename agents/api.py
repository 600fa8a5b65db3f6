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

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.callbacks import BaseCallback, as_callback
from agents.core.rollout import EnvRunner, EpisodeLog, obs_to_tensor, to_env_action
from agents.run import checkpoint as ckpt
from agents.run.config import Config, config_text, load_config, to_dict
from agents.run.config_types import MAX_STEPS
from agents.run.env_objects import make_vector_env, spec_env_kwargs, vector_factory
from agents.run.evaluation import evaluate_policy as run_episodes
from agents.run.files import atomic_write_text
from agents.run.keywords import SECTIONS, config_data, update_section
from agents.run.space_codec import space_from_json, space_to_json

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
            kwargs = spec_env_kwargs(env.spec)
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
            update_section(data, key, value)
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
    replay: str | Path | None = None,
) -> Run:
    """What `textrlhf train CONFIG --set ...` does: load the config (a YAML path, a dict or a
    `Config`) with `overrides` ("key=value"), train into a new run folder (or continue `resume`),
    and return the folder and its summary. The first Ctrl-C/SIGTERM stops at the end of an
    iteration with a checkpoint (`summary["interrupted"]`; `resume=run.dir` continues).
    `replay`: an asynchronous run's folder whose schedule this run follows (docs/async.md)."""
    from agents.run.trainer import train as train_run

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    if isinstance(config, Config) and overrides:
        cfg = load_config(to_dict(config), overrides)
    run_dir = train_run(cfg, name=name, overwrite=overwrite, resume=resume,
                        stop_on_interrupt=stop_on_interrupt, replay=replay)  # fmt: skip
    from agents.run.jsonio import read_json

    return Run(run_dir, read_json(run_dir / "summary.json"))


def report(runs: str | Path | list[str | Path], out: str | Path | None = None) -> Path:
    """What `textrlhf report RUN ...` does: write the self-contained report page of one or more
    run folders (curves overlaid, episode viewer, config and summary; docs/report.md), by
    default RUN/report.html of the first run. Returns the file written."""
    from agents.run.report import write_report

    folders = [runs] if isinstance(runs, (str, Path)) else list(runs)
    return write_report(folders, out)


def export_trajectories(run: str | Path, out: str | Path) -> Path:
    """What `textrlhf export-trajectories RUN OUT` does: the run's logged episodes as one record
    each, to OUT.jsonl or OUT.parquet (pyarrow); docs/report.md lists the fields. Returns OUT."""
    from agents.run.trajectories import export_trajectories as export

    return export(run, out)
