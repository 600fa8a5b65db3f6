"""The training loop: collect -> (KL penalty) -> GAE -> PPO update -> log -> checkpoint.

trainer = Trainer(load_config("configs/cartpole.yaml"), run_dir)
summary = trainer.learn()
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.core.advantages import CRITIC_FREE, episode_returns, outcome_advantages
from agents.core.buffer import RolloutBuffer
from agents.core.diagnostics import update_diagnostics
from agents.core.distributed import LOCAL, Distributed, RowShard, init_distributed
from agents.core.kl import apply_kl_penalty, make_kl_controller
from agents.core.ppo import PPO
from agents.core.rollout import EpisodeLog, RolloutCollector
from agents.core.scores import ScoreNormalizer
from agents.policies import make_policy, make_reference
from agents.run import checkpoint as ckpt
from agents.run.config import (
    Config,
    config_warnings,
    step_budget,
    to_dict,
)
from agents.run.dtype import dtype_line, recorded_dtype, resolve_dtype
from agents.run.envs import make_eval_env, make_train_env
from agents.run.evaluation import pinned_folders, run_evaluation
from agents.run.interrupt import signal_label, stop_on_first_interrupt
from agents.run.jsonio import read_json
from agents.run.logger import RunLogger
from agents.run.preflight import check_config, check_env
from agents.run.provenance import code_version
from agents.run.report import write_report_or_warn
from agents.run.resume import load_trainer, save_trainer, write_run_config
from agents.run.rundir import RunLock, new_run_dir
from agents.run.trajectories import EvalRecorder, is_text, logs_iteration, trajectory_records

# the diagnostics' warning (`Trainer._warn_diagnostics`): a policy whose act and evaluate agree
# drifts ~1e-7 in float32 and has no ratio outside the clip band before the first optimizer step
DRIFT_WARN = 1e-3
CLIP_BAND_WARN = 0.01


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class LearnState:
    """What one `learn` call tracks between iterations: where the next evaluation and checkpoint
    fall, the evaluations so far, and whether a stop was asked for."""

    save: bool  # this process writes checkpoints (every rank of a logged run)
    logger: RunLogger | None  # rank 0 of a logged run
    start_transitions: int
    next_eval: float
    next_ckpt: float
    last_eval: float | None = None
    last_eval_step: int = -1
    initial_eval: float | None = None
    initial_eval_metrics: dict[str, float] = field(default_factory=dict)
    stopping: bool = False  # a stop signal (agreed by all ranks)
    halted: bool = False  # the callback returned False


class Trainer:
    """Builds env, policy, buffer, collector and PPO from a config; runs and checkpoints them."""

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path | None = None,
        resume: bool = False,
        dist: Distributed = LOCAL,
        env: gym.vector.VectorEnv | None = None,
        eval_env: gym.vector.VectorEnv | None = None,
    ):
        """`env` / `eval_env`: vector envs to train / evaluate on instead of making them from
        `cfg.env` (the Python API's env objects); `cfg.env.num_envs` must match."""
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # data-parallel (agents/core/distributed.py): env.num_envs and ppo.batch_size are GLOBAL;
        # this rank steps its share of the rows, every statistic is reduced over ranks
        self.dist = dist
        if dist.is_main:
            for line in config_warnings(cfg):
                print(f"warning: {line}", file=sys.stderr)
        # before any env allocates its buffers
        num_envs = check_config(cfg, dist.world_size, env_given=env is not None)
        torch.set_num_threads(cfg.run.torch_threads)
        seed_everything(cfg.seed)  # the same on every rank: identical initial weights
        self.device = resolve_device(cfg.run.device, dist)
        # a resumed run.dtype: auto takes the dtype its checkpoints record (agents/run/dtype.py)
        recorded = recorded_dtype(self.run_dir) if resume and cfg.run.dtype == "auto" else None
        # in this order: each step draws from the seeded RNGs
        self._build_envs(env, eval_env, num_envs)
        self._build_policy(recorded)
        self._build_update(num_envs)
        self.iteration = 0
        self.global_step = 0  # n_steps * num_envs per iteration (the budget, the x-axis)
        self.transitions = 0  # valid steps: fewer when lockstep rollouts end early (text)
        self.episodes = 0
        self.saved_step = -1  # the step of the newest checkpoint this process wrote
        self.wall_time = 0.0  # training seconds before this process (resume)
        self.best_return: float | None = None
        # the evaluation before the first update (the start, e.g. the SFT level): kept in the
        # checkpoints, so a resumed run's summary still has it
        self.initial_eval: float | None = None
        self.initial_eval_metrics: dict[str, float] = {}
        self.recent_returns: list[float] = []
        self.last_episodes = EpisodeLog()  # what finished during the last iteration
        self.eval_metrics: dict[str, float] = {}  # the last evaluation's `eval/<info>` means
        self.phase_seconds = {"rollout": 0.0, "update": 0.0}  # this process, for profiling
        self.code_version = code_version() if dist.is_main else None  # git describe, or unknown
        # trajectories.jsonl (agents/run/trajectories.py): written by a logged run's rank 0
        self.log_trajectories = False
        self.last_trajectories: list[dict[str, Any]] = []  # the last iteration's records
        self.eval_trajectories: list[dict[str, Any]] = []  # the last evaluation's, to write
        self._start = time.perf_counter()
        self._callback: Callable[[str, dict[str, Any]], bool] | None = None  # during `learn`
        self._close_envs = True
        if resume:
            if self.run_dir is None:
                raise ValueError("resume needs a run folder")
            self.load(ckpt.latest_checkpoint(self.run_dir / "checkpoints"))

    def _build_envs(
        self, env: gym.vector.VectorEnv | None, eval_env: gym.vector.VectorEnv | None, rows: int
    ) -> None:
        """The training env (`rows` rows: this rank's share) and, on rank 0, the evaluation env:
        built now, not after training, so a bad eval setting fails before the first step."""
        cfg = self.cfg
        self.env = make_train_env(cfg, rows) if env is None else given_env(env, rows)
        check_env(cfg, self.env)
        self.eval_env = eval_env
        if eval_env is None and cfg.eval.episodes > 0 and self.dist.is_main:
            if env is not None:
                raise ValueError(
                    f"eval.episodes={cfg.eval.episodes} needs an evaluation env, and only a "
                    "training env object was given; pass an env id, an env factory, or set "
                    "eval.episodes: 0 (and evaluate with agents.evaluate_policy)"
                )
            self.eval_env = make_eval_env(cfg)
        self.observation_space = self.env.single_observation_space
        self.action_space = self.env.single_action_space

    def _build_policy(self, recorded: tuple[str, str] | None = None) -> None:
        """The policy (rank 0's weights on every rank) in its resolved compute dtype
        (`recorded`: a resumed run's (dtype, reason)), its frozen reference for the KL penalty
        (the policy's business how), the KL controller and the score normalizer."""
        cfg, dist = self.cfg, self.dist
        self.policy = make_policy(cfg.policy, self.observation_space, self.action_space)
        self.policy = self.policy.to(self.device)
        # the model folders the checkpoints need but do not hold (a LoRA base), hashed once
        self.pinned = ckpt.pin_folders(pinned_folders(cfg))
        dtype, reason = recorded or resolve_dtype(cfg.run.dtype, self.policy, self.device)
        if dist.active:  # one dtype on every rank: rank 0's
            chosen = dist.broadcast_str(dtype)
            if chosen != dtype:
                dtype, reason = chosen, "rank 0's choice"
        self.set_dtype(dtype, reason)  # float32 only, unless an LM
        dist.broadcast_module(self.policy)  # rank 0's weights, whatever the init did
        self.reference = make_reference(self.policy) if cfg.kl.enabled else None
        self.kl_controller = make_kl_controller(cfg.kl)
        self.score_normalizer = ScoreNormalizer(cfg.score.normalize, cfg.score.clip, dist)

    def _build_update(self, rows: int) -> None:
        """The rollout buffer and collector for this rank's `rows`, the iteration budget and the
        PPO update."""
        cfg, dist = self.cfg, self.dist
        self.buffer = RolloutBuffer(
            cfg.ppo.n_steps, rows, self.observation_space, self.action_space, self.device
        )
        row_seed = cfg.seed
        if dist.active:
            # sampling and env seeds differ by rank (rows seeded by their global index, as a
            # 1-rank sync vector env seeds row i with seed + i); minibatch permutations do not
            seed_everything(cfg.seed + dist.rank)
            row_seed = cfg.seed + dist.rank * rows
            shuffle = torch.Generator().manual_seed(cfg.seed)
            self.buffer.shard = RowShard(dist.rank * rows, cfg.env.num_envs, shuffle)
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
        self.ppo.record_first_epoch = cfg.run.diagnostics
        self.diagnostics_warned = False  # the diagnostics' warning is printed once per run

    def set_dtype(self, dtype: str, reason: str) -> None:
        """Run the policy (and a copied reference) in the resolved `dtype`; rank 0 prints the
        choice when `run.dtype` is auto."""
        self.dtype, self.dtype_reason = dtype, reason
        self.policy.set_compute_dtype(dtype)
        reference = getattr(self, "reference", None)
        if reference is not None and hasattr(reference, "set_compute_dtype"):
            reference.set_compute_dtype(dtype)  # a LoRA reference runs in the policy's
        if self.cfg.run.dtype == "auto" and self.dist.is_main:
            print(dtype_line(self.cfg.run.dtype, dtype, reason), flush=True)

    # -- checkpoints ------------------------------------------------------------------------

    def save(self, run_dir: Path | None = None) -> Path:
        """Checkpoint at an iteration boundary: everything a bit-exact resume needs
        (`agents.run.resume.save_trainer`). `run_dir`: another folder than the run's."""
        return save_trainer(self, run_dir)

    def load(self, path: Path, restore_env: bool = True) -> None:
        """Restore a checkpoint (`agents.run.resume.load_trainer`); without `restore_env` the
        env starts fresh (`PPO.load` with a new env object)."""
        load_trainer(self, path, restore_env)

    def extend_budget(self, steps: int) -> None:
        """Train `steps` more env steps (whole iterations) from where the run stands: the API's
        `learn`, called again. The learning-rate and clip schedules then run to the new end."""
        self.num_iterations = self.iteration + steps // self.steps_per_iteration
        self.ppo.num_iterations = max(self.num_iterations, 1)
        total = self.num_iterations * self.steps_per_iteration
        self.cfg = self.cfg.model_copy(update={"total_timesteps": total})

    def evaluate(self, episodes: int | None = None, recorder: Any = None) -> Any:
        """The run's evaluation (`run_evaluation`); it does not change the training run."""
        env = self.eval_env if episodes in (None, self.cfg.eval.episodes) else None
        return run_evaluation(
            self.policy, self.cfg, env, episodes, device=self.device, recorder=recorder
        )

    def _eval_return(self) -> float | None:
        """Mean held-out return (None on ranks > 0); the means of the episodes' numeric infos
        (e.g. a tool-use fraction, per-turn scores) are kept in `eval_metrics` as `eval/<key>`.

        Every rank calls it at the same point. Rank 0 evaluates alone (it holds the eval env);
        the other ranks wait for it in `wait_for_main`, whose timeout covers an evaluation, not
        in their next training collective, whose timeout is meant for a hung peer."""
        value = None
        if self.dist.is_main:
            recorder = EvalRecorder() if self.log_trajectories else None
            log = self.evaluate(recorder=recorder)
            value = float(np.mean(log.returns))
            self.eval_metrics = {f"eval/{k}": float(np.mean(v)) for k, v in log.metrics.items()}
            self._best(value)
            if recorder is not None:  # written with the evaluation's metrics row
                self.eval_trajectories = recorder.records(
                    self.cfg.run.trajectory_episodes, self.policy.token_texts, self.iteration,
                    self.global_step,
                )  # fmt: skip
        self.dist.wait_for_main()
        return value

    def learn(
        self,
        stop_at: int | None = None,
        log: bool = True,
        stop_on_interrupt: bool = False,
        callback: Callable[[str, dict[str, Any]], bool] | None = None,
        close: bool = True,
    ) -> dict[str, Any]:
        """Train until total_timesteps (or `stop_at` env steps, then checkpoint and return).

        The run folder is locked while this process writes it. With `log=False` no run folder is
        touched (benchmarks). `stop_on_interrupt`: the first Ctrl-C (under torchrun: the SIGINT
        the launcher passes on to every rank) stops at the end of the iteration, with a
        checkpoint and `interrupted: true` in the summary (agents.run.interrupt).
        `callback(event, metrics)`: called with "rollout_end" after each rollout and with
        "iteration_end" after each iteration; False at an iteration's end stops there, like a
        stop signal. `close`: close the envs at the end (the API keeps them for another call)."""
        self._callback, self._close_envs = callback, close
        if self.run_dir is None or not log:
            return self._learn(stop_at, False, stop_on_interrupt)
        summary_file = self.run_dir / "summary.json"
        if self.iteration >= self.num_iterations and summary_file.is_file():
            try:  # a finished run: nothing to do
                return read_json(summary_file)
            except ValueError as err:
                raise ValueError(f"run summary {summary_file} cannot be read: {err}") from None
        if not self.dist.is_main:  # rank 0 holds the lock for the whole job
            return self._learn(stop_at, True, stop_on_interrupt)
        self.run_dir.mkdir(parents=True, exist_ok=True)  # a folder given to Trainer directly
        with RunLock(self.run_dir):
            return self._learn(stop_at, True, stop_on_interrupt)

    def _learn(self, stop_at: int | None, log: bool, stop_on_interrupt: bool) -> dict[str, Any]:
        cfg = self.cfg
        # every rank saves (its own state); rank 0 alone logs and evaluates
        logger = (
            RunLogger(self.run_dir, self.num_iterations * self.steps_per_iteration,
                      self.global_step, cfg.run.progress)
            if log and self.dist.is_main else None
        )  # fmt: skip
        if logger is not None:
            write_run_config(cfg, self.run_dir, self.global_step)
        self.log_trajectories = logger is not None and cfg.run.trajectory_episodes > 0
        self._start = time.perf_counter()
        state = LearnState(
            save=log, logger=logger, start_transitions=self.transitions,
            next_eval=_next_multiple(self.global_step, cfg.eval.every),
            next_ckpt=_next_multiple(self.global_step, cfg.run.checkpoint_every),
            initial_eval=self.initial_eval, initial_eval_metrics=dict(self.initial_eval_metrics),
        )  # fmt: skip
        # async vector envs: Ctrl-C also reaches their worker processes, which then end
        graceful = stop_on_interrupt and cfg.env.vectorization != "async"
        try:
            # from here on, the first Ctrl-C/SIGTERM ends the run at an iteration boundary with
            # a checkpoint (also during the initial evaluation: then at step 0)
            with stop_on_first_interrupt(graceful, announce=self.dist.is_main) as stop:
                self._initial_evaluation(state)
                while self.iteration < self.num_iterations:
                    state.stopping = self.dist.any(bool(stop)) if graceful else False  # all ranks
                    if state.stopping or state.halted:
                        break
                    if stop_at is not None and self.global_step >= stop_at:
                        break
                    self._after_iteration(state, self.iterate())
            return self._finish(state, stop)
        finally:
            if logger is not None:
                logger.close()
                write_report_or_warn(self.run_dir)  # report.html; a failure is a warning
            if self._close_envs:
                self.close()

    def _initial_evaluation(self, state: LearnState) -> None:
        """A run with periodic evaluations first evaluates its start (e.g. the SFT level);
        rank 0 evaluates, every rank that saves takes part."""
        cfg = self.cfg
        periodic = state.save and cfg.eval.every > 0 and cfg.eval.episodes > 0
        if self.global_step != 0 or not periodic:
            return
        state.initial_eval = state.last_eval = self._eval_return()
        state.last_eval_step = 0
        self.initial_eval = state.initial_eval
        if state.logger is not None:
            state.initial_eval_metrics = dict(self.eval_metrics)
            self.initial_eval_metrics = dict(self.eval_metrics)
            state.logger.log(
                0,
                {"eval/return": state.initial_eval, **state.initial_eval_metrics,
                 "time/elapsed": self._elapsed()},
            )  # fmt: skip
            self._write_eval_trajectories(state.logger)

    def _after_iteration(self, state: LearnState, metrics: dict[str, float]) -> None:
        """What follows an iteration: its evaluation when one is due, its log row, samples and
        progress, a periodic checkpoint, and the callback (which may ask to stop)."""
        cfg, logger = self.cfg, state.logger
        evaluating = state.save and self.global_step >= state.next_eval and cfg.eval.episodes > 0
        if evaluating:
            state.last_eval = self._eval_return()
            state.last_eval_step = self.global_step
            state.next_eval = _next_multiple(self.global_step, cfg.eval.every)
        if logger is not None:
            if evaluating:
                metrics["eval/return"] = state.last_eval
                metrics.update(self.eval_metrics)
            metrics["time/elapsed"] = self._elapsed()  # training + evaluation seconds
            logger.log(self.global_step, metrics)
            logger.samples(self.global_step, self.last_episodes.samples)
            logger.trajectories(self.last_trajectories)
            self._write_eval_trajectories(logger)
            recent = float(np.mean(self.recent_returns)) if self.recent_returns else None
            logger.progress(self.global_step, recent, metrics["time/sps"])
        if state.save and self.global_step >= state.next_ckpt:
            self.save()
            state.next_ckpt = _next_multiple(self.global_step, cfg.run.checkpoint_every)
        if self._callback is not None:
            state.halted = self._callback("iteration_end", metrics) is False

    def _finish(self, state: LearnState, stop: Any) -> dict[str, Any]:
        """The end of a `learn` call: a checkpoint of the last step, the final evaluation of a
        finished run, and the summary (summary.json on rank 0)."""
        cfg = self.cfg
        elapsed = time.perf_counter() - self._start
        done = self.iteration >= self.num_iterations
        interrupted = (state.stopping or state.halted) and not done
        summary: dict[str, Any] = {
            "steps": self.global_step,
            "transitions": self.transitions,
            "iterations": self.iteration,
            "episodes": self.episodes,
            "wall_time_s": self.wall_time + elapsed,
            "sps": (self.transitions - state.start_transitions) / max(elapsed, 1e-9),
            "dtype": self.dtype,  # run.dtype resolved (auto: agents/run/dtype.py)
            # the code that trained this process's part of the run (results pages cite it)
            "code_version": self.code_version,
            # stopped early by Ctrl-C, SIGTERM or the callback; `--resume` continues
            "interrupted": interrupted,
            "stop_signal": None,
            "train_return_last100": float(np.mean(self.recent_returns))
            if self.recent_returns
            else None,
        }
        if interrupted and state.halted:
            summary["stop_signal"] = "callback"
        elif interrupted:  # this rank may not have been signalled itself
            summary["stop_signal"] = signal_label(stop.signum) if stop else "a stop signal"
        if state.save and self.saved_step != self.global_step:  # never rewrite one in place
            self.save()
        final_eval = state.save and done and cfg.eval.episodes > 0
        final_eval = final_eval and state.last_eval_step != self.global_step  # not twice
        if final_eval:
            state.last_eval, state.last_eval_step = self._eval_return(), self.global_step
        if state.logger is None:
            return summary
        if final_eval:
            state.logger.log(
                self.global_step,
                {"eval/return": state.last_eval, **self.eval_metrics,
                 "time/elapsed": self._elapsed()},
            )  # fmt: skip
            self._write_eval_trajectories(state.logger)
        if state.last_eval is not None:  # `textrlhf eval RUN` reproduces it with these
            summary["final_eval"] = {
                "step": state.last_eval_step, "seed": 10_000 + cfg.seed, **to_dict(cfg)["eval"]
            }  # fmt: skip
        summary.update(
            final_return=state.last_eval
            if state.last_eval is not None
            else summary["train_return_last100"],
            best_return=self.best_return,
            initial_return=state.initial_eval,
            initial_eval_metrics=state.initial_eval_metrics,
            final_eval_metrics=self.eval_metrics,
            finished=done,
            run_dir=str(self.run_dir),
        )
        state.logger.write_summary(summary)
        return summary

    def _write_eval_trajectories(self, logger: RunLogger) -> None:
        """Append the last evaluation's trajectory records (if any) to trajectories.jsonl."""
        logger.trajectories(self.eval_trajectories)
        self.eval_trajectories = []

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

    def collect_rollout(self) -> EpisodeLog:
        """Fill the buffer with this iteration's rollout (an asynchronous run's learner
        receives it from an actor instead: agents/run/async_train.py)."""
        return self.collector.collect()

    def iterate(self) -> dict[str, float]:
        """One PPO iteration; returns its metrics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        episodes = self.collect_rollout()
        if self._callback is not None:
            self._callback("rollout_end", {})
        t1 = time.perf_counter()
        local_episodes = episodes  # this rank's rows (the trajectory log)
        if self.dist.active:
            episodes = self._all_episodes(episodes)
        buf = self.buffer
        trajectories = (
            self.log_trajectories
            and is_text(buf)
            and logs_iteration(self.iteration + 1, self.num_iterations, cfg.run.trajectory_every)
        )
        # the env's own rewards, before the score normalization and the KL penalty change them
        env_rewards = buf.rewards.clone() if trajectories else None
        score_stats = self.score_normalizer(buf.rewards, buf.terminated | buf.truncated, buf.valid)
        metrics: dict[str, float] = {f"score/{k}": v for k, v in score_stats.items()}
        kl_coef = 0.0  # beta of a KL term in the loss (kl.placement: loss)
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
            kl_coef = beta if cfg.kl.placement == "loss" else 0.0
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
        train_stats = self.ppo.update(self.buffer, self.iteration, kl_coef)
        if self.ppo.first_epoch is not None:
            estimator = cfg.kl.estimator if self.reference is not None else None
            diagnostics = update_diagnostics(
                self.buffer, self.ppo.first_epoch, train_stats["clip_range"], estimator, self.dist
            )
            metrics.update({f"diagnostics/{k}": v for k, v in diagnostics.items()})
            self._warn_diagnostics(diagnostics)
        t2 = time.perf_counter()

        transitions = int(self.dist.sum_floats(int(self.buffer.valid.sum()))[0])
        self.iteration += 1
        self.global_step += self.steps_per_iteration
        self.transitions += transitions
        self.episodes += len(episodes.returns)
        self.recent_returns = (self.recent_returns + episodes.returns)[-100:]
        self.last_episodes = episodes
        self.last_trajectories = []
        if trajectories:
            self.last_trajectories = trajectory_records(
                buf, env_rewards, local_episodes, cfg.run.trajectory_episodes,
                self.policy.token_texts, self.iteration, self.global_step,
                has_reference=self.reference is not None,
            )  # fmt: skip
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

    def _warn_diagnostics(self, diagnostics: dict[str, float]) -> None:
        """One warning line per run (rank 0) when the update's first evaluate disagrees with
        the rollout: log-prob drift max > DRIFT_WARN, or a fraction > CLIP_BAND_WARN of the
        ratios evaluated before any optimizer step outside the clip band. (The epoch-0 fraction
        over every minibatch also counts the earlier minibatches' steps: 1-2.5% in the main
        job, a healthy run; agents/core/diagnostics.py.)"""
        drift = diagnostics["logprob_drift_max"]
        band = diagnostics["outside_clip_band_first_minibatch"]
        if self.diagnostics_warned or not (drift > DRIFT_WARN or band > CLIP_BAND_WARN):
            return
        self.diagnostics_warned = True
        if not self.dist.is_main:
            return
        print(
            f"textrlhf: warning: iteration {self.iteration + 1}: the update's first evaluate "
            f"disagrees with the rollout's log-probs: diagnostics/logprob_drift_max={drift:.3g} "
            f"(warns above {DRIFT_WARN:g}), diagnostics/outside_clip_band_first_minibatch="
            f"{band:.3g} (warns above {CLIP_BAND_WARN:g}); likely causes: bf16 autocast "
            "(run.dtype: bfloat16, or auto resolved to it), an env, wrapper or reward that "
            "changed tokens after they were sampled, a custom policy whose act and evaluate "
            "disagree (docs/report.md; shown once per run)",
            file=sys.stderr,
            flush=True,
        )

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


def given_env(env: gym.vector.VectorEnv, num_envs: int) -> gym.vector.VectorEnv:
    """A training env object handed to the Trainer: a vector env of `num_envs` rows."""
    if not isinstance(env, gym.vector.VectorEnv):
        raise TypeError(f"env must be a gymnasium.vector.VectorEnv, got {type(env).__name__}")
    if env.num_envs != num_envs:
        raise ValueError(f"the env has {env.num_envs} rows; env.num_envs says {num_envs}")
    return env


def resolve_device(device: str, dist: Distributed = LOCAL) -> torch.device:
    """run.device -> a torch device: "auto" is CUDA when this machine has it, else CPU; in a
    data-parallel run on CUDA each rank takes cuda:LOCAL_RANK."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if dist.active and resolved.type == "cuda":
        resolved = torch.device("cuda", dist.local_rank)
    return resolved


def _next_multiple(step: int, every: int) -> float:
    """The next step count > step that is a multiple of `every` (inf if every == 0)."""
    return float("inf") if every <= 0 else (step // every + 1) * every


def train(
    cfg: Config,
    name: str | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    stop_on_interrupt: bool = False,
    replay: str | Path | None = None,
) -> Path:
    """Create (or resume) a run folder and train. Returns the run folder. `replay`: an
    asynchronous run's folder whose recorded schedule this run follows (docs/async.md).

    `stop_on_interrupt` (the `textrlhf train` command): the first Ctrl-C ends the run at the end
    of its iteration, with a checkpoint, instead of at once (`Trainer.learn`)."""
    dist = init_distributed(resolve_device(cfg.run.device).type)  # LOCAL outside torchrun
    if cfg.rollout.actors > 0 or replay is not None:  # learner + actors (docs/async.md)
        from agents.run.async_train import train_async

        return train_async(cfg, dist, name, overwrite, resume, replay, stop_on_interrupt)
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
