"""The training loop: collect -> (KL penalty) -> GAE -> PPO update -> log -> checkpoint.

trainer = Trainer(load_config("configs/cartpole.yaml"), run_dir)
summary = trainer.learn()
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.core.buffer import RolloutBuffer
from agents.core.kl import apply_kl_penalty, make_kl_controller
from agents.core.ppo import PPO
from agents.core.rollout import EpisodeLog, RolloutCollector
from agents.core.scores import ScoreNormalizer
from agents.policies import frozen_copy, make_policy, policy_class
from agents.run import checkpoint as ckpt
from agents.run.config import Config, config_changes, save_config, step_budget, to_dict
from agents.run.envs import make_eval_env, make_train_env
from agents.run.evaluation import run_evaluation
from agents.run.logger import RunLogger
from agents.run.rundir import RunLock, new_run_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# config keys a resumed run may change (everything else shapes the training run)
RESUME_MAY_CHANGE = ("run.", "eval.", "name")


def check_sizes(cfg: Config) -> None:
    """Let the policy type check the env sizes against its model before the envs exist (the
    optional hook `check_env_kwargs` of the policy protocol)."""
    check = getattr(policy_class(cfg.policy.type), "check_env_kwargs", None)
    if check is not None:
        check(cfg.policy, cfg.env.kwargs)
        check(cfg.policy, {**cfg.env.kwargs, **cfg.eval.env_kwargs})


# metadata every checkpoint of a Trainer holds (see `Trainer.save`)
CHECKPOINT_KEYS = [
    "iteration", "global_step", "transitions", "episodes", "wall_time", "best_return",
    "recent_returns", "kl_beta", "score_normalizer", "config", "optimizer", "rng",
]  # fmt: skip


class Trainer:
    """Builds env, policy, buffer, collector and PPO from a config; runs and checkpoints them."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        torch.set_num_threads(cfg.run.torch_threads)
        seed_everything(cfg.seed)
        self.device = torch.device(cfg.run.device)
        check_sizes(cfg)  # before any env allocates its buffers
        self.env = make_train_env(cfg)
        check_rollout_memory(cfg, self.env.single_observation_space, self.env.single_action_space)
        # built now, not after training: a bad eval setting fails before the first step
        self.eval_env = make_eval_env(cfg) if cfg.eval.episodes > 0 else None
        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        self.policy = make_policy(cfg.policy, obs_space, act_space).to(self.device)
        # the reference policy for the KL penalty: a frozen deep copy of the initial policy
        self.reference = frozen_copy(self.policy) if cfg.kl.enabled else None
        self.kl_controller = make_kl_controller(cfg.kl)
        self.score_normalizer = ScoreNormalizer(cfg.score.normalize, cfg.score.clip)
        self.buffer = RolloutBuffer(
            cfg.ppo.n_steps, cfg.env.num_envs, obs_space, act_space, self.device
        )
        self.collector = RolloutCollector(
            self.env, self.policy, self.buffer, seed=cfg.seed, device=self.device
        )
        self.steps_per_iteration = cfg.ppo.n_steps * cfg.env.num_envs
        self.num_iterations = step_budget(cfg) // self.steps_per_iteration
        self.ppo = PPO(self.policy, cfg.ppo, self.num_iterations)
        self.iteration = 0
        self.global_step = 0  # n_steps * num_envs per iteration (the budget, the x-axis)
        self.transitions = 0  # valid steps: fewer when lockstep rollouts end early (text)
        self.episodes = 0
        self.saved_step = -1  # the step of the newest checkpoint this process wrote
        self.wall_time = 0.0  # training seconds before this process (resume)
        self.best_return: float | None = None
        self.recent_returns: list[float] = []
        self.last_episodes = EpisodeLog()  # what finished during the last iteration
        self.phase_seconds = {"rollout": 0.0, "update": 0.0}  # this process, for profiling
        self._start = time.perf_counter()
        if resume:
            if self.run_dir is None:
                raise ValueError("resume needs a run folder")
            self.load(ckpt.latest_checkpoint(self.run_dir / "checkpoints"))

    # -- checkpoints ------------------------------------------------------------------------

    def save(self) -> Path:
        """Checkpoint at an iteration boundary: everything needed for a bit-exact resume."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {
            "iteration": self.iteration,
            "global_step": self.global_step,
            "transitions": self.transitions,
            "episodes": self.episodes,
            "wall_time": self.wall_time + (time.perf_counter() - self._start),
            "best_return": self.best_return,
            "recent_returns": self.recent_returns[-100:],
            "kl_beta": self.kl_controller.beta,
            "score_normalizer": self.score_normalizer.state_dict(),
            "config": to_dict(self.cfg),
        }
        snapshot = ckpt.env_state(self.env)
        if snapshot is not None:
            meta["env"], env_tensors = snapshot
            tensors.update(env_tensors)
        tensors.update(
            {f"rollout/{k}": torch.from_numpy(np.ascontiguousarray(v))
             for k, v in self.collector.runner.state_arrays().items()}
        )  # fmt: skip
        if self.reference is not None:
            tensors.update({f"reference/{k}": v for k, v in self.reference.state_dict().items()})
        path = ckpt.save_checkpoint(
            self.run_dir / "checkpoints", self.global_step, self.policy, self.ppo.optimizer,
            meta, tensors,
        )  # fmt: skip
        self.saved_step = self.global_step
        return path

    def load(self, path: Path) -> None:
        meta, tensors = ckpt.read_checkpoint(path)
        ckpt.require(meta, CHECKPOINT_KEYS, path)
        # everything that shapes the training run must match; run.* and eval.* may change
        changed = config_changes(
            meta["config"], to_dict(self.cfg), lambda key: not key.startswith(RESUME_MAY_CHANGE)
        )
        if changed:
            raise ckpt.CheckpointError(
                f"checkpoint {path} does not match the config: " + "; ".join(changed)
            )
        ckpt.load_policy_weights(self.policy, tensors, path)
        ckpt.load_optimizer(self.ppo.optimizer, meta["optimizer"], tensors, path)
        if self.reference is not None:
            ref = {
                k[len("reference/") :]: v for k, v in tensors.items() if k.startswith("reference/")
            }
            self.reference.load_state_dict(ref)
        self.iteration, self.global_step = meta["iteration"], meta["global_step"]
        self.transitions = meta["transitions"]
        self.episodes, self.wall_time = meta["episodes"], meta["wall_time"]
        self.best_return, self.recent_returns = meta["best_return"], meta["recent_returns"]
        self.kl_controller.beta = meta["kl_beta"]
        self.score_normalizer.load_state_dict(meta["score_normalizer"])
        # the env: exact when its state was captured; otherwise a fresh reset, seeded from
        # the seed and the step count (documented in docs/agents.md)
        rollout = {
            k[len("rollout/") :]: v.numpy() for k, v in tensors.items() if k.startswith("rollout/")
        }
        if "env" in meta:
            env_tensors = {k: v for k, v in tensors.items() if k.startswith("env/")}
            ckpt.set_env_state(self.env, meta["env"], env_tensors)
            self.collector.runner.load_state_arrays(rollout)
        else:
            self.collector.seed = self.cfg.seed + self.global_step
        ckpt.set_rng_state(meta["rng"], tensors)

    # -- training ---------------------------------------------------------------------------

    def evaluate(self, episodes: int | None = None) -> Any:
        """The run's evaluation (`run_evaluation`); it does not change the training run."""
        env = self.eval_env if episodes in (None, self.cfg.eval.episodes) else None
        return run_evaluation(self.policy, self.cfg, env, episodes, device=self.device)

    def _eval_return(self) -> float:
        """Mean held-out return; the means of the episodes' numeric infos (e.g. a tool-use
        fraction, per-turn scores) are kept in `eval_metrics` as `eval/<key>`."""
        log = self.evaluate()
        value = float(np.mean(log.returns))
        self.eval_metrics = {f"eval/{k}": float(np.mean(v)) for k, v in log.metrics.items()}
        self._best(value)
        return value

    def learn(self, stop_at: int | None = None, log: bool = True) -> dict[str, Any]:
        """Train until total_timesteps (or `stop_at` env steps, then checkpoint and return).

        The run folder is locked while this process writes it. With `log=False` no run folder is
        touched (benchmarks)."""
        if self.run_dir is None or not log:
            return self._learn(stop_at, log=False)
        summary_file = self.run_dir / "summary.json"
        if self.iteration >= self.num_iterations and summary_file.is_file():
            return json.loads(summary_file.read_text())  # a finished run: nothing to do
        with RunLock(self.run_dir):
            return self._learn(stop_at, log=True)

    def _learn(self, stop_at: int | None, log: bool) -> dict[str, Any]:
        cfg = self.cfg
        logger = (
            RunLogger(self.run_dir, self.num_iterations * self.steps_per_iteration,
                      self.global_step, cfg.run.progress)
            if log else None
        )  # fmt: skip
        if log and self.global_step == 0:
            save_config(cfg, self.run_dir / "config.yaml")
        self._start = time.perf_counter()
        start_transitions = self.transitions
        next_eval = _next_multiple(self.global_step, cfg.eval.every)
        next_ckpt = _next_multiple(self.global_step, cfg.run.checkpoint_every)
        last_eval: float | None = None
        last_eval_step = -1
        initial_eval: float | None = None
        initial_eval_metrics: dict[str, float] = {}
        try:
            periodic_eval = cfg.eval.every > 0 and cfg.eval.episodes > 0
            if logger is not None and self.global_step == 0 and periodic_eval:
                initial_eval = last_eval = self._eval_return()  # the start, e.g. the SFT level
                last_eval_step = 0
                initial_eval_metrics = dict(self.eval_metrics)
                logger.log(0, {"eval/return": initial_eval, **initial_eval_metrics})
            while self.iteration < self.num_iterations:
                if stop_at is not None and self.global_step >= stop_at:
                    break
                metrics = self.iterate()
                if logger is not None:
                    if self.global_step >= next_eval and cfg.eval.episodes > 0:
                        last_eval = metrics["eval/return"] = self._eval_return()
                        metrics.update(self.eval_metrics)
                        last_eval_step = self.global_step
                        next_eval = _next_multiple(self.global_step, cfg.eval.every)
                    logger.log(self.global_step, metrics)
                    logger.samples(self.global_step, self.last_episodes.samples)
                    recent = float(np.mean(self.recent_returns)) if self.recent_returns else None
                    logger.progress(self.global_step, recent, metrics["time/sps"])
                    if self.global_step >= next_ckpt:
                        self.save()
                        next_ckpt = _next_multiple(self.global_step, cfg.run.checkpoint_every)
            elapsed = time.perf_counter() - self._start
            summary: dict[str, Any] = {
                "steps": self.global_step,
                "transitions": self.transitions,
                "iterations": self.iteration,
                "episodes": self.episodes,
                "wall_time_s": self.wall_time + elapsed,
                "sps": (self.transitions - start_transitions) / max(elapsed, 1e-9),
                "train_return_last100": float(np.mean(self.recent_returns))
                if self.recent_returns
                else None,
            }
            if logger is not None:
                done = self.iteration >= self.num_iterations
                if done and cfg.eval.episodes > 0 and last_eval_step != self.global_step:
                    last_eval = self._eval_return()
                    logger.log(self.global_step, {"eval/return": last_eval, **self.eval_metrics})
                if self.saved_step != self.global_step:  # never rewrite a checkpoint in place
                    self.save()
                summary.update(
                    final_return=last_eval
                    if last_eval is not None
                    else summary["train_return_last100"],
                    best_return=self.best_return,
                    initial_return=initial_eval,
                    initial_eval_metrics=initial_eval_metrics,
                    final_eval_metrics=getattr(self, "eval_metrics", {}),
                    finished=done,
                    run_dir=str(self.run_dir),
                )
                logger.write_summary(summary)
            return summary
        finally:
            if logger is not None:
                logger.close()
            self.close()

    def close(self) -> None:
        """Close the training and evaluation envs."""
        self.env.close()
        if self.eval_env is not None:
            self.eval_env.close()

    def _best(self, value: float) -> None:
        if self.best_return is None or value > self.best_return:
            self.best_return = value

    def iterate(self) -> dict[str, float]:
        """One PPO iteration; returns its metrics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        episodes = self.collector.collect()
        t1 = time.perf_counter()
        buf = self.buffer
        score_stats = self.score_normalizer(buf.rewards, buf.terminated | buf.truncated, buf.valid)
        metrics: dict[str, float] = {f"score/{k}": v for k, v in score_stats.items()}
        if self.reference is not None:
            beta = self.kl_controller.beta
            kl_stats = apply_kl_penalty(
                self.buffer, self.policy, self.reference, beta, cfg.kl.estimator
            )
            self.kl_controller.update(kl_stats["kl_to_ref"], kl_stats["kl_segments"])
            metrics.update({f"kl/{k}": v for k, v in kl_stats.items() if k != "kl_segments"})
        self.buffer.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
        train_stats = self.ppo.update(self.buffer, self.iteration)
        t2 = time.perf_counter()

        transitions = int(self.buffer.valid.sum())
        self.iteration += 1
        self.global_step += self.steps_per_iteration
        self.transitions += transitions
        self.episodes += len(episodes.returns)
        self.recent_returns = (self.recent_returns + episodes.returns)[-100:]
        self.last_episodes = episodes
        metrics.update({f"train/{k}": v for k, v in train_stats.items()})
        if episodes.returns:
            metrics["rollout/ep_return"] = float(np.mean(episodes.returns))
            metrics["rollout/ep_length"] = float(np.mean(episodes.lengths))
        for key, values in episodes.metrics.items():
            metrics[f"episode/{key}"] = float(np.mean(values))
        metrics["rollout/episodes"] = self.episodes
        metrics["rollout/transitions"] = self.transitions
        self.phase_seconds["rollout"] += t1 - t0
        self.phase_seconds["update"] += t2 - t1
        metrics["time/rollout_time"] = t1 - t0
        metrics["time/update_time"] = t2 - t1
        metrics["time/sps"] = transitions / max(t2 - t0, 1e-9)  # real env steps per second
        return metrics


def _space_bytes(space: Any) -> int:
    """Bytes one sample of `space` takes in the rollout buffer (an upper bound)."""
    if isinstance(space, gym.spaces.Dict):
        return sum(_space_bytes(s) for s in space.spaces.values())
    if isinstance(space, gym.spaces.Tuple):
        return sum(_space_bytes(s) for s in space.spaces)
    itemsize = np.dtype(space.dtype).itemsize if space.dtype is not None else 8
    return int(np.prod(space.shape or (), dtype=np.int64)) * itemsize


def check_rollout_memory(cfg: Config, obs_space: Any, act_space: Any) -> None:
    """The rollout buffer holds ppo.n_steps * env.num_envs transitions; refuse sizes that cannot
    fit in this machine's memory before allocating them (torch's allocation error names no
    setting, and the OS may kill the process instead)."""
    transitions = cfg.ppo.n_steps * cfg.env.num_envs
    need = transitions * (_space_bytes(obs_space) + _space_bytes(act_space) + 64)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on this OS: no check
        return
    if need > total:
        raise ValueError(
            f"the rollout buffer needs about {need / 2**30:,.1f} GiB for ppo.n_steps * "
            f"env.num_envs = {cfg.ppo.n_steps} * {cfg.env.num_envs} = {transitions:,} "
            f"transitions, more than this machine's {total / 2**30:,.1f} GiB of memory; lower "
            "env.num_envs or ppo.n_steps"
        )


def _next_multiple(step: int, every: int) -> float:
    """The next step count > step that is a multiple of `every` (inf if every == 0)."""
    return float("inf") if every <= 0 else (step // every + 1) * every


def train(
    cfg: Config,
    name: str | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
) -> Path:
    """Create (or resume) a run folder and train. Returns the run folder."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "checkpoints" / "latest.json").is_file():
            raise FileNotFoundError(f"cannot resume {run_dir}: no checkpoints/latest.json in it")
        Trainer(cfg, run_dir, resume=True).learn()
        return run_dir
    run_dir = new_run_dir(cfg, name, overwrite)  # created atomically, under its own name
    try:
        trainer = Trainer(cfg, run_dir)  # bad envs, rewards and policies fail here
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing was written to it yet
        raise
    trainer.learn()
    return run_dir
