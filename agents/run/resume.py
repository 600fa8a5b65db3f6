"""A Trainer's checkpoint: what it holds and how a run resumes from it, bit for bit.

`save_trainer` writes everything a bit-exact resume needs at an iteration boundary (weights,
optimizer, counters, KL and score state, RNG states, the env's state and the rollout carry-over;
under data-parallel runs each rank's own RNG and env state beside it); `load_trainer` restores
it, refusing a config that changed anything but `RESUME_MAY_CHANGE`. The file formats and their
checks are `agents/run/checkpoint.py`'s; `Trainer.save` / `Trainer.load` call these.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agents.run.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    atomic_save_json,
    atomic_save_tensors,
    env_state,
    load_optimizer,
    load_policy_weights,
    read_checkpoint,
    require,
    rng_state,
    save_checkpoint,
    set_env_state,
    set_rng_state,
)
from agents.run.config import Config, config_changes, config_text, to_dict
from agents.run.dtype import checkpoint_dtype, run_dtype
from agents.run.evaluation import check_pinned
from agents.run.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from agents.run.trainer import Trainer

# Config keys a resumed run may change: how it evaluates and reports (eval.*, name, run.root,
# run.checkpoint_every, run.progress) and where it computes (run.device, run.torch_threads,
# run.allreduce_bucket_mb: the same numbers up to float rounding, as on another machine; the
# gradient sums per element are the same whatever the buckets). Everything else shapes the
# training run, run.dtype included: bfloat16 forward passes are other numbers, not a rounding
# difference. A key ending in "." stands for its whole section.
RESUME_MAY_CHANGE = (
    "eval.", "name", "run.root", "run.checkpoint_every", "run.progress", "run.device",
    "run.torch_threads", "run.allreduce_bucket_mb", "run.diagnostics",
    "run.trajectory_episodes", "run.trajectory_every",
)  # fmt: skip


def may_change_on_resume(key: str) -> bool:
    """True for a flat config key (`flat_config`) that a resume may change."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)


# metadata every checkpoint of a Trainer holds (see `Trainer.save`)
CHECKPOINT_KEYS = [
    "iteration", "global_step", "transitions", "episodes", "wall_time", "best_return",
    "recent_returns", "kl_beta", "score_normalizer", "config", "optimizer", "rng",
]  # fmt: skip


def rank_state(trainer: Trainer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This rank's env, rollout carry-over (JSON + tensors; the RNGs are added by the
    caller)."""
    meta: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    snapshot = env_state(trainer.env)
    if snapshot is not None:
        meta["env"], env_tensors = snapshot
        tensors.update(env_tensors)
    tensors.update(
        {f"rollout/{k}": torch.from_numpy(np.ascontiguousarray(v))
         for k, v in trainer.collector.runner.state_arrays().items()}
    )  # fmt: skip
    return meta, tensors


def rank_file(trainer: Trainer, step: int, rank: int, run_dir: Path | None = None) -> Path:
    return (run_dir or trainer.run_dir) / "checkpoints" / f"{step}.rank{rank}.json"


def save_trainer(trainer: Trainer, run_dir: Path | None = None) -> Path:
    """Checkpoint at an iteration boundary: everything needed for a bit-exact resume.

    Data-parallel: ranks >= 1 first write their own RNG + env state next to it
    (`<step>.rank<r>.json/.safetensors`), then rank 0 writes the weights, its own state and
    `latest.json`, so `latest.json` only ever names a complete checkpoint. `run_dir`: another
    folder than the run's (`PPO.save`)."""
    run_dir = Path(run_dir) if run_dir is not None else trainer.run_dir
    dist = trainer.dist
    if dist.active and not dist.is_main:
        meta, tensors = rank_state(trainer)
        meta["rng"], rng_tensors = rng_state()
        tensors.update(rng_tensors)
        path = rank_file(trainer, trainer.global_step, dist.rank, run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        weights = path.with_suffix(".safetensors")
        meta.update(format_version=FORMAT_VERSION, step=trainer.global_step, rank=dist.rank)
        meta["weights_file"] = weights.name
        meta["weights_sha256"] = atomic_save_tensors(tensors, weights)
        atomic_save_json(meta, path)
    dist.barrier()
    trainer.saved_step = trainer.global_step
    if not dist.is_main:
        return rank_file(trainer, trainer.global_step, dist.rank, run_dir)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {
        "iteration": trainer.iteration,
        "global_step": trainer.global_step,
        "transitions": trainer.transitions,
        "episodes": trainer.episodes,
        "wall_time": trainer.wall_time + (time.perf_counter() - trainer._start),
        "best_return": trainer.best_return,
        "initial_eval": trainer.initial_eval,
        "initial_eval_metrics": trainer.initial_eval_metrics,
        "recent_returns": trainer.recent_returns[-100:],
        "kl_beta": trainer.kl_controller.beta,
        "score_normalizer": trainer.score_normalizer.state_dict(),
        "config": to_dict(trainer.cfg),
        "dtype": trainer.dtype,  # run.dtype resolved: what a resume, eval, export run in
    }
    if trainer.pinned:
        meta["pinned_folders"] = trainer.pinned
    rank_meta, rank_tensors = rank_state(trainer)
    meta.update(rank_meta)
    tensors.update(rank_tensors)
    if dist.active:
        meta["world_size"] = dist.world_size
        tensors["rng/minibatch_shuffle"] = trainer.buffer.shard.generator.get_state()
    if trainer.reference is not None:
        tensors.update({f"reference/{k}": v for k, v in trainer.reference.state_dict().items()})
    path = save_checkpoint(
        run_dir / "checkpoints", trainer.global_step, trainer.policy, trainer.ppo.optimizer,
        meta, tensors,
    )  # fmt: skip
    return path


def with_dtype(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """`config` (a config as a dict) with `run.dtype` replaced by the resolved `dtype`."""
    run = config.get("run")
    return {**config, "run": {**run, "dtype": dtype}} if isinstance(run, dict) else config


def load_trainer(trainer: Trainer, path: Path, restore_env: bool = True) -> None:
    """Restore a checkpoint: weights, optimizer, counters, KL and score state, and (with
    `restore_env`, a resume) the env, rollout carry-over and RNG states, for a bit-exact
    continuation. Without it (`PPO.load` with a new env object) the env starts fresh,
    seeded from the seed and the step count."""
    meta, tensors = read_checkpoint(path)
    require(meta, CHECKPOINT_KEYS, path)
    # everything that shapes the training run must match (RESUME_MAY_CHANGE may change);
    # run.dtype as resolved: auto takes the recorded dtype, an explicit one must equal it
    dtype, reason = run_dtype(trainer.cfg.run.dtype, meta, path)
    recorded = checkpoint_dtype(meta, path)
    changed = config_changes(
        with_dtype(meta["config"], recorded), with_dtype(to_dict(trainer.cfg), dtype),
        lambda key: not may_change_on_resume(key),
    )  # fmt: skip
    if changed:
        raise CheckpointError(f"checkpoint {path} does not match the config: " + "; ".join(changed))
    if dtype != trainer.dtype:  # run.dtype: auto, resolved otherwise on this machine
        trainer.set_dtype(dtype, reason)
    check_pinned(trainer.cfg, meta, path)  # a LoRA run's base model is still the same
    load_policy_weights(trainer.policy, tensors, path)
    load_optimizer(trainer.ppo.optimizer, meta["optimizer"], tensors, path)
    if trainer.reference is not None:
        ref = {k[len("reference/") :]: v for k, v in tensors.items() if k.startswith("reference/")}
        # checkpoints before 2026-11-30 also hold the LM reference's unused critic and value
        # head: its `critic_model` and `value_head` are None now, and torch skips their keys
        trainer.reference.load_state_dict(ref)
    trainer.iteration, trainer.global_step = meta["iteration"], meta["global_step"]
    trainer.transitions = meta["transitions"]
    trainer.episodes, trainer.wall_time = meta["episodes"], meta["wall_time"]
    trainer.best_return, trainer.recent_returns = meta["best_return"], meta["recent_returns"]
    # checkpoints before 2026-12-08 do not hold the start's evaluation: the summary then lacks it
    trainer.initial_eval = meta.get("initial_eval")
    trainer.initial_eval_metrics = dict(meta.get("initial_eval_metrics") or {})
    trainer.kl_controller.beta = meta["kl_beta"]
    trainer.score_normalizer.load_state_dict(meta["score_normalizer"])
    saved_world = meta.get("world_size", 1)
    if saved_world != trainer.dist.world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by {saved_world} ranks; resume it with the same "
            f"number of processes (--nproc {saved_world}), not {trainer.dist.world_size}"
        )
    if trainer.dist.active:
        trainer.buffer.shard.generator.set_state(tensors["rng/minibatch_shuffle"])
        if not trainer.dist.is_main:  # this rank's own env and RNG state
            meta, tensors = read_checkpoint(rank_file(trainer, meta["step"], trainer.dist.rank))
    # the env: exact when its state was captured; otherwise a fresh reset, seeded from
    # the seed and the step count (documented in docs/agents.md)
    rollout = {
        k[len("rollout/") :]: v.numpy() for k, v in tensors.items() if k.startswith("rollout/")
    }
    if "env" in meta and restore_env:
        env_tensors = {k: v for k, v in tensors.items() if k.startswith("env/")}
        set_env_state(trainer.env, meta["env"], env_tensors)
        trainer.collector.runner.load_state_arrays(rollout)
    else:
        trainer.collector.seed = trainer.collector.seed + trainer.global_step  # cfg.seed at 1 rank
    if restore_env:
        set_rng_state(meta["rng"], tensors)


# -- training ---------------------------------------------------------------------------


def write_run_config(cfg: Config, run_dir: Path, step: int) -> None:
    """config.yaml is the config of the process that writes the run, so the evaluations it logs
    (and `textrlhf eval RUN`) use its `eval.*` settings. A resume at `step` whose settings differ
    (only the RESUME_MAY_CHANGE keys may) first keeps the previous file as `config.<step>.yaml`: the
    settings of the evaluations logged up to `step`. An existing `config.<step>.yaml` is kept: the
    process that wrote config.yaml since then logged nothing that a resume at `step` keeps."""
    path = run_dir / "config.yaml"
    text = config_text(cfg)
    if step > 0 and path.is_file():
        previous = path.read_bytes()  # kept as it is, whatever it holds
        if previous == text.encode():
            return
        before = run_dir / f"config.{step}.yaml"
        if not before.exists():
            atomic_write_bytes(before, previous)
    atomic_write_text(path, text)
