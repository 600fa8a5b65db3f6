"""The training loop: collect -> (KL penalty) -> GAE -> PPO update -> log -> checkpoint.

trainer = Trainer(load_config("configs/cartpole.yaml"), run_dir)
summary = trainer.learn()
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.core.advantages import CRITIC_FREE, episode_returns, outcome_advantages
from agents.core.buffer import RolloutBuffer
from agents.core.distributed import LOCAL, Distributed, RowShard, init_distributed
from agents.core.kl import apply_kl_penalty, make_kl_controller
from agents.core.ppo import PPO
from agents.core.rollout import LOCKSTEP, EpisodeLog, RolloutCollector, autoreset_mode
from agents.core.scores import ScoreNormalizer
from agents.policies import make_policy, make_reference, policy_class
from agents.run import checkpoint as ckpt
from agents.run.config import (
    Config,
    config_changes,
    config_warnings,
    save_config,
    step_budget,
    to_dict,
)
from agents.run.envs import make_eval_env, make_train_env
from agents.run.evaluation import check_pinned, pinned_folders, run_evaluation
from agents.run.interrupt import signal_label, stop_on_first_interrupt
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

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path | None = None,
        resume: bool = False,
        dist: Distributed = LOCAL,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # data-parallel (agents/core/distributed.py): env.num_envs and ppo.batch_size are GLOBAL;
        # this rank steps its share of the rows, every statistic is reduced over ranks
        self.dist = dist
        if dist.is_main:
            for line in config_warnings(cfg):
                print(f"warning: {line}", file=sys.stderr)
        num_envs = dist.check_divides("env.num_envs", cfg.env.num_envs)
        dist.check_divides("ppo.batch_size", cfg.ppo.batch_size)
        torch.set_num_threads(cfg.run.torch_threads)
        seed_everything(cfg.seed)  # the same on every rank: identical initial weights
        self.device = resolve_device(cfg.run.device, dist)
        check_sizes(cfg)  # before any env allocates its buffers
        self.env = make_train_env(cfg, num_envs)
        check_rollout_memory(cfg, self.env.single_observation_space, self.env.single_action_space)
        # built now, not after training: a bad eval setting fails before the first step
        self.eval_env = make_eval_env(cfg) if cfg.eval.episodes > 0 and dist.is_main else None
        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        self.policy = make_policy(cfg.policy, obs_space, act_space).to(self.device)
        # the model folders the checkpoints need but do not hold (a LoRA base), hashed once
        self.pinned = ckpt.pin_folders(pinned_folders(cfg))
        set_dtype = getattr(self.policy, "set_compute_dtype", None)
        if set_dtype is not None:
            set_dtype(cfg.run.dtype)
        elif cfg.run.dtype != "float32":
            raise ValueError(
                f"run.dtype={cfg.run.dtype!r} is for LM policies; policy.type "
                f"{cfg.policy.type!r} runs in float32 (set run.dtype: float32)"
            )
        dist.broadcast_module(self.policy)  # rank 0's weights, whatever the init did
        # the reference policy for the KL penalty: the policy's frozen start (its business how)
        self.reference = make_reference(self.policy) if cfg.kl.enabled else None
        self.kl_controller = make_kl_controller(cfg.kl)
        self.score_normalizer = ScoreNormalizer(cfg.score.normalize, cfg.score.clip, dist)
        self.buffer = RolloutBuffer(cfg.ppo.n_steps, num_envs, obs_space, act_space, self.device)
        row_seed = cfg.seed
        if dist.active:
            # sampling and env seeds differ by rank (rows seeded by their global index, as a
            # 1-rank sync vector env seeds row i with seed + i); minibatch permutations do not
            seed_everything(cfg.seed + dist.rank)
            row_seed = cfg.seed + dist.rank * num_envs
            shuffle = torch.Generator().manual_seed(cfg.seed)
            self.buffer.shard = RowShard(dist.rank * num_envs, cfg.env.num_envs, shuffle)
        check_group_rollouts(cfg, self.env, num_envs)
        K = self.buffer.group_size = cfg.advantage.group_size
        self.collector = RolloutCollector(
            self.env, self.policy, self.buffer, seed=row_seed, device=self.device,
            reset_options={"repeat": K} if K > 1 else None,
        )  # fmt: skip
        self.steps_per_iteration = cfg.ppo.n_steps * cfg.env.num_envs
        self.num_iterations = step_budget(cfg) // self.steps_per_iteration
        bucket_mb = cfg.run.allreduce_bucket_mb  # float32 elements; 0: one bucket, no overlap
        bucket_numel = max(int(bucket_mb * 2**20) // 4, 1) if bucket_mb > 0 else 0
        self.ppo = PPO(self.policy, cfg.ppo, self.num_iterations, dist, bucket_numel)
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

    def _rank_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """This rank's env, rollout carry-over (JSON + tensors; the RNGs are added by the
        caller)."""
        meta: dict[str, Any] = {}
        tensors: dict[str, torch.Tensor] = {}
        snapshot = ckpt.env_state(self.env)
        if snapshot is not None:
            meta["env"], env_tensors = snapshot
            tensors.update(env_tensors)
        tensors.update(
            {f"rollout/{k}": torch.from_numpy(np.ascontiguousarray(v))
             for k, v in self.collector.runner.state_arrays().items()}
        )  # fmt: skip
        return meta, tensors

    def _rank_file(self, step: int, rank: int) -> Path:
        return self.run_dir / "checkpoints" / f"{step}.rank{rank}.json"

    def save(self) -> Path:
        """Checkpoint at an iteration boundary: everything needed for a bit-exact resume.

        Data-parallel: ranks >= 1 first write their own RNG + env state next to it
        (`<step>.rank<r>.json/.safetensors`), then rank 0 writes the weights, its own state and
        `latest.json`, so `latest.json` only ever names a complete checkpoint."""
        dist = self.dist
        if dist.active and not dist.is_main:
            meta, tensors = self._rank_state()
            meta["rng"], rng_tensors = ckpt.rng_state()
            tensors.update(rng_tensors)
            path = self._rank_file(self.global_step, dist.rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            weights = path.with_suffix(".safetensors")
            meta.update(format_version=ckpt.FORMAT_VERSION, step=self.global_step, rank=dist.rank)
            meta["weights_file"] = weights.name
            meta["weights_sha256"] = ckpt.atomic_save_tensors(tensors, weights)
            ckpt.atomic_save_json(meta, path)
        dist.barrier()
        self.saved_step = self.global_step
        if not dist.is_main:
            return self._rank_file(self.global_step, dist.rank)
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
        if self.pinned:
            meta["pinned_folders"] = self.pinned
        rank_meta, rank_tensors = self._rank_state()
        meta.update(rank_meta)
        tensors.update(rank_tensors)
        if dist.active:
            meta["world_size"] = dist.world_size
            tensors["rng/minibatch_shuffle"] = self.buffer.shard.generator.get_state()
        if self.reference is not None:
            tensors.update({f"reference/{k}": v for k, v in self.reference.state_dict().items()})
        path = ckpt.save_checkpoint(
            self.run_dir / "checkpoints", self.global_step, self.policy, self.ppo.optimizer,
            meta, tensors,
        )  # fmt: skip
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
        check_pinned(self.cfg, meta, path)  # a LoRA run's base model is still the same
        ckpt.load_policy_weights(self.policy, tensors, path)
        ckpt.load_optimizer(self.ppo.optimizer, meta["optimizer"], tensors, path)
        if self.reference is not None:
            ref = {
                k[len("reference/") :]: v for k, v in tensors.items() if k.startswith("reference/")
            }
            # checkpoints before 2026-11-30 also hold the LM reference's unused critic and value
            # head: its `critic_model` and `value_head` are None now, and torch skips their keys
            self.reference.load_state_dict(ref)
        self.iteration, self.global_step = meta["iteration"], meta["global_step"]
        self.transitions = meta["transitions"]
        self.episodes, self.wall_time = meta["episodes"], meta["wall_time"]
        self.best_return, self.recent_returns = meta["best_return"], meta["recent_returns"]
        self.kl_controller.beta = meta["kl_beta"]
        self.score_normalizer.load_state_dict(meta["score_normalizer"])
        saved_world = meta.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise ckpt.CheckpointError(
                f"checkpoint {path} was written by {saved_world} ranks; resume it with the same "
                f"number of processes (--nproc {saved_world}), not {self.dist.world_size}"
            )
        if self.dist.active:
            self.buffer.shard.generator.set_state(tensors["rng/minibatch_shuffle"])
            if not self.dist.is_main:  # this rank's own env and RNG state
                meta, tensors = ckpt.read_checkpoint(self._rank_file(meta["step"], self.dist.rank))
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
            self.collector.seed = self.collector.seed + self.global_step  # cfg.seed at 1 rank
        ckpt.set_rng_state(meta["rng"], tensors)

    # -- training ---------------------------------------------------------------------------

    def evaluate(self, episodes: int | None = None) -> Any:
        """The run's evaluation (`run_evaluation`); it does not change the training run."""
        env = self.eval_env if episodes in (None, self.cfg.eval.episodes) else None
        return run_evaluation(self.policy, self.cfg, env, episodes, device=self.device)

    def _eval_return(self) -> float | None:
        """Mean held-out return (None on ranks > 0); the means of the episodes' numeric infos
        (e.g. a tool-use fraction, per-turn scores) are kept in `eval_metrics` as `eval/<key>`.

        Every rank calls it at the same point. Rank 0 evaluates alone (it holds the eval env);
        the other ranks wait for it in `wait_for_main`, whose timeout covers an evaluation, not
        in their next training collective, whose timeout is meant for a hung peer."""
        value = None
        if self.dist.is_main:
            log = self.evaluate()
            value = float(np.mean(log.returns))
            self.eval_metrics = {f"eval/{k}": float(np.mean(v)) for k, v in log.metrics.items()}
            self._best(value)
        self.dist.wait_for_main()
        return value

    def learn(
        self, stop_at: int | None = None, log: bool = True, stop_on_interrupt: bool = False
    ) -> dict[str, Any]:
        """Train until total_timesteps (or `stop_at` env steps, then checkpoint and return).

        The run folder is locked while this process writes it. With `log=False` no run folder is
        touched (benchmarks). `stop_on_interrupt`: the first Ctrl-C (under torchrun: the SIGINT
        the launcher passes on to every rank) stops at the end of the iteration, with a
        checkpoint and `interrupted: true` in the summary (agents.run.interrupt)."""
        if self.run_dir is None or not log:
            return self._learn(stop_at, False, stop_on_interrupt)
        summary_file = self.run_dir / "summary.json"
        if self.iteration >= self.num_iterations and summary_file.is_file():
            return json.loads(summary_file.read_text())  # a finished run: nothing to do
        if not self.dist.is_main:  # rank 0 holds the lock for the whole job
            return self._learn(stop_at, True, stop_on_interrupt)
        self.run_dir.mkdir(parents=True, exist_ok=True)  # a folder given to Trainer directly
        with RunLock(self.run_dir):
            return self._learn(stop_at, True, stop_on_interrupt)

    def _learn(self, stop_at: int | None, log: bool, stop_on_interrupt: bool) -> dict[str, Any]:
        cfg = self.cfg
        save = log  # every rank saves (its own state); rank 0 alone logs and evaluates
        log = log and self.dist.is_main
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
        # async vector envs: Ctrl-C also reaches their worker processes, which then end
        graceful = stop_on_interrupt and cfg.env.vectorization != "async"
        stopping = False
        try:
            # from here on, the first Ctrl-C/SIGTERM ends the run at an iteration boundary with
            # a checkpoint (also during the initial evaluation: then at step 0)
            with stop_on_first_interrupt(graceful, announce=self.dist.is_main) as stop:
                # evaluations: rank 0 evaluates, every rank that saves (logs) takes part
                periodic_eval = save and cfg.eval.every > 0 and cfg.eval.episodes > 0
                if self.global_step == 0 and periodic_eval:
                    initial_eval = last_eval = self._eval_return()  # the start, e.g. the SFT level
                    last_eval_step = 0
                    if logger is not None:
                        initial_eval_metrics = dict(self.eval_metrics)
                        logger.log(
                            0,
                            {"eval/return": initial_eval, **initial_eval_metrics,
                             "time/elapsed": self._elapsed()},
                        )  # fmt: skip
                while self.iteration < self.num_iterations:
                    stopping = self.dist.any(bool(stop)) if graceful else False  # all ranks stop
                    if stopping or (stop_at is not None and self.global_step >= stop_at):
                        break
                    metrics = self.iterate()
                    evaluating = save and self.global_step >= next_eval and cfg.eval.episodes > 0
                    if evaluating:
                        last_eval = self._eval_return()
                        last_eval_step = self.global_step
                        next_eval = _next_multiple(self.global_step, cfg.eval.every)
                    if logger is not None:
                        if evaluating:
                            metrics["eval/return"] = last_eval
                            metrics.update(self.eval_metrics)
                        metrics["time/elapsed"] = self._elapsed()  # training + evaluation seconds
                        logger.log(self.global_step, metrics)
                        logger.samples(self.global_step, self.last_episodes.samples)
                        recent = (
                            float(np.mean(self.recent_returns)) if self.recent_returns else None
                        )
                        logger.progress(self.global_step, recent, metrics["time/sps"])
                    if save and self.global_step >= next_ckpt:
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
                # stopped early by Ctrl-C or SIGTERM; `--resume` continues
                "interrupted": stopping and self.iteration < self.num_iterations,
                "stop_signal": None,
                "train_return_last100": float(np.mean(self.recent_returns))
                if self.recent_returns
                else None,
            }
            if summary["interrupted"]:  # this rank may not have been signalled itself
                summary["stop_signal"] = signal_label(stop.signum) if stop else "a stop signal"
            if save and self.saved_step != self.global_step:  # never rewrite one in place
                self.save()
            done = self.iteration >= self.num_iterations
            final_eval = save and done and cfg.eval.episodes > 0
            final_eval = final_eval and last_eval_step != self.global_step  # not twice
            if final_eval:
                last_eval = self._eval_return()
            if logger is not None:
                if final_eval:
                    logger.log(
                        self.global_step,
                        {"eval/return": last_eval, **self.eval_metrics,
                         "time/elapsed": self._elapsed()},
                    )  # fmt: skip
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

    def _elapsed(self) -> float:
        """Seconds of this run so far: earlier processes (resume) plus this one."""
        return self.wall_time + (time.perf_counter() - self._start)

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
        if self.dist.active:
            episodes = self._all_episodes(episodes)
        buf = self.buffer
        score_stats = self.score_normalizer(buf.rewards, buf.terminated | buf.truncated, buf.valid)
        metrics: dict[str, float] = {f"score/{k}": v for k, v in score_stats.items()}
        scores = None  # (N,) the task's returns, for critic-free estimators with the KL in them
        if self.reference is not None:
            if cfg.kl.placement == "reward" and cfg.advantage.estimator in CRITIC_FREE:
                scores = episode_returns(buf.rewards, buf.valid)  # before the KL penalty
            beta = self.kl_controller.beta
            kl_stats = apply_kl_penalty(
                self.buffer,
                self.policy,
                self.reference,
                beta,
                cfg.kl.estimator,
                cfg.kl.placement,
                self.dist,
            )
            # the KL term of the loss uses the beta the penalty was measured with
            self.ppo.kl_coef = beta if cfg.kl.placement == "loss" else 0.0
            self.kl_controller.update(kl_stats["kl_to_ref"], kl_stats["kl_segments"])
            metrics.update({f"kl/{k}": v for k, v in kl_stats.items() if k != "kl_segments"})
        if cfg.advantage.estimator == "gae":
            self.buffer.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
        else:
            adv = cfg.advantage
            adv_stats = outcome_advantages(
                self.buffer, adv.estimator, adv.group_size, adv.scale_std, self.dist,
                adv.reinforce_pp_form, scores,
            )  # fmt: skip
            metrics.update({f"advantage/{k}": v for k, v in adv_stats.items()})
        if cfg.ppo.loss_aggregation == "sequence":
            self.buffer.set_episode_weights()
        train_stats = self.ppo.update(self.buffer, self.iteration)
        t2 = time.perf_counter()

        transitions = int(self.dist.sum_floats(int(self.buffer.valid.sum()))[0])
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

    def _all_episodes(self, episodes: EpisodeLog) -> EpisodeLog:
        """The episodes of every rank (returns, lengths, numeric infos; text samples stay this
        rank's own), so that logged means and counts are the whole run's."""
        lists = {f"info/{k}": v for k, v in episodes.metrics.items()}
        lists.update(returns=episodes.returns, lengths=episodes.lengths)
        everything = self.dist.gather_lists(lists)  # two collectives for all of it
        combined = EpisodeLog(
            returns=everything.get("returns", []),
            lengths=[int(v) for v in everything.get("lengths", [])],
            samples=episodes.samples,
        )
        for key, values in everything.items():
            if key.startswith("info/"):
                combined.metrics[key[len("info/") :]] = values
        return combined


def resolve_device(device: str, dist: Distributed = LOCAL) -> torch.device:
    """run.device -> a torch device: "auto" is CUDA when this machine has it, else CPU; in a
    data-parallel run on CUDA each rank takes cuda:LOCAL_RANK."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if dist.active and resolved.type == "cuda":
        resolved = torch.device("cuda", dist.local_rank)
    return resolved


def check_group_rollouts(cfg: Config, env: gym.vector.VectorEnv, local_rows: int) -> None:
    """Critic-free estimators need one whole episode per env row in each rollout (a lockstep
    env), and groups need K rows that start from the same state (reset option "repeat"), all on
    one rank (`local_rows`: this rank's env rows)."""
    adv = cfg.advantage
    if local_rows % adv.group_size:
        raise ValueError(
            f"each process holds {local_rows} env rows (env.num_envs / number of processes), "
            f"not a multiple of advantage.group_size={adv.group_size}: a group must sit on one "
            "process"
        )
    if adv.estimator in CRITIC_FREE and autoreset_mode(env) != LOCKSTEP:
        raise ValueError(
            f"advantage.estimator={adv.estimator!r} scores whole episodes: it needs an env whose "
            "rollouts hold one whole episode per row (autoreset_mode 'lockstep', e.g. "
            f"textenv:TextRLHF-v0 with env.vectorization: vector_entry_point); {cfg.env.id} with "
            f"vectorization {cfg.env.vectorization!r} has autoreset mode {autoreset_mode(env)!r}"
        )
    if adv.group_size > 1 and (
        autoreset_mode(env) != LOCKSTEP or "repeat" not in env.metadata.get("reset_options", ())
    ):
        raise ValueError(
            f"advantage.group_size={adv.group_size} needs K env rows that start from the same "
            "state: a lockstep vector env that takes reset(options={'repeat': K}) (textenv's "
            f"TextRLHFVectorEnv does); {cfg.env.id} with vectorization "
            f"{cfg.env.vectorization!r} cannot"
        )


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
    stop_on_interrupt: bool = False,
) -> Path:
    """Create (or resume) a run folder and train. Returns the run folder.

    `stop_on_interrupt` (the `textrlhf train` command): the first Ctrl-C ends the run at the end
    of its iteration, with a checkpoint, instead of at once (`Trainer.learn`)."""
    dist = init_distributed(resolve_device(cfg.run.device).type)  # LOCAL outside torchrun
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "checkpoints" / "latest.json").is_file():
            raise FileNotFoundError(f"cannot resume {run_dir}: no checkpoints/latest.json in it")
        Trainer(cfg, run_dir, resume=True, dist=dist).learn(stop_on_interrupt=stop_on_interrupt)
        dist.close()
        return run_dir
    # rank 0 creates the run folder (atomically, under its own name) and tells the others
    run_dir = new_run_dir(cfg, name, overwrite) if dist.is_main else None
    run_dir = Path(dist.broadcast_str(str(run_dir) if run_dir else None))
    try:
        trainer = Trainer(cfg, run_dir, dist=dist)  # bad envs, rewards and policies fail here
    except BaseException:
        if dist.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was written to it yet
        raise
    trainer.learn(stop_on_interrupt=stop_on_interrupt)
    dist.close()
    return run_dir
