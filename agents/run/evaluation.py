"""Evaluation: run a policy for a number of whole episodes on a fresh vector env."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.core.rollout import EnvRunner, EpisodeLog
from agents.policies import policy_class
from agents.run.checkpoint import CheckpointError, check_pinned_folders, require
from agents.run.config import config_changes, to_dict
from agents.run.envs import make_eval_env

# config keys an evaluation must share with the checkpoint's: what the weights mean (policy.*)
# and the env they were trained on (env.*); eval.* (e.g. eval.env_kwargs) and run.* may differ
EVAL_MUST_MATCH = ("policy.", "env.")


def check_checkpoint_config(cfg: Any, meta: dict[str, Any], path: Any) -> None:
    """Refuse to evaluate a checkpoint under a config whose policy or env differ from the ones it
    was trained with (an edited config.yaml, another run's --checkpoint): the weights would load
    and the evaluation would be silently wrong."""
    require(meta, ["config"], path)
    changed = config_changes(
        meta["config"], to_dict(cfg), lambda key: key.startswith(EVAL_MUST_MATCH)
    )
    if changed:
        raise CheckpointError(
            f"checkpoint {path} was trained with another policy or env than this config: "
            + "; ".join(changed)
            + ". Evaluate a checkpoint with its own run's config; eval.* and run.* may change "
            "(eval.env_kwargs overrides env.kwargs for evaluation)"
        )
    check_pinned(cfg, meta, path)


def pinned_folders(cfg: Any) -> dict[str, Path]:
    """The model folders the run's checkpoints need but do not hold, by config key (the policy
    type's `pinned_folders`, e.g. a LoRA run's base model)."""
    return policy_class(cfg.policy.type).pinned_folders(cfg.policy)


def check_pinned(cfg: Any, meta: dict[str, Any], path: Any) -> None:
    """Refuse a checkpoint whose pinned model folders changed since it was written
    (`checkpoint.check_pinned_folders`); a note on stderr when it predates the record."""
    folders = pinned_folders(cfg)
    if not check_pinned_folders(meta.get("pinned_folders"), folders, path) and folders:
        print(
            f"note: checkpoint {path} records no hashes of the model folders it was trained on "
            f"({', '.join(f'{k} = {v}' for k, v in folders.items())}); a change to them since "
            "cannot be detected",
            file=sys.stderr,
        )


def check_episodes(episodes: Any) -> int:
    """An evaluation runs at least one whole episode (a mean over none is NaN)."""
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"evaluation episodes must be an int >= 1, got {episodes!r}")
    return int(episodes)


@torch.no_grad()
def evaluate_policy(
    policy: Any,
    env: Any,
    episodes: int,
    deterministic: bool = True,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    recorder: Any = None,
) -> EpisodeLog:
    """Run exactly `episodes` episodes, spread over the env's rows (row i runs its share).

    Returns the env returns and lengths (no KL penalty) and the episodes' infos and samples.
    `recorder`: an `agents.run.trajectories.EvalRecorder` that sees every step (the token
    sequences of a text run's episodes, for its trajectory log).
    """
    check_episodes(episodes)
    N = env.num_envs
    quota = np.array([episodes // N + (i < episodes % N) for i in range(N)])  # episodes per row
    counts = np.zeros(N, dtype=np.int64)
    runner, log = EnvRunner(env, policy, device), EpisodeLog()
    runner.reset(seed=seed)
    t = 0
    while (counts < quota).any():
        step = runner.step(log, deterministic, counted=counts < quota, t=t)
        counts += step.terminated | step.truncated
        if recorder is not None:
            recorder.observe(step, log)
        t += 1
    return log


def eval_sampling(policy: Any, cfg: Any) -> contextlib.AbstractContextManager:
    """The policy's `sampling(...)` context with `eval.sampling`'s settings (a no-op without
    them); TypeError for a policy type that has no sampling settings (the MLP)."""
    settings = cfg.eval.sampling
    if settings is None:
        return contextlib.nullcontext()
    return policy.sampling(**settings.model_dump())


def run_evaluation(
    policy: Any,
    cfg: Any,
    env: Any = None,
    episodes: int | None = None,
    deterministic: bool | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    recorder: Any = None,
) -> EpisodeLog:
    """A run's evaluation: `eval.episodes` episodes on the eval env (`make_eval_env`, or `env`),
    actions as `eval.deterministic`, env and torch seeded with `10_000 + seed` (the same number
    for the trainer and `textrlhf eval`). The torch RNG is forked: evaluating does not change
    the training run. `recorder`: see `evaluate_policy`."""
    episodes = check_episodes(cfg.eval.episodes if episodes is None else episodes)
    deterministic = cfg.eval.deterministic if deterministic is None else deterministic
    seed = 10_000 + cfg.seed if seed is None else seed
    own_env = env is None
    env = make_eval_env(cfg, episodes) if own_env else env
    device = torch.device(device)
    try:
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            eval_sampling(policy, cfg),
        ):
            torch.manual_seed(seed)
            return evaluate_policy(policy, env, episodes, deterministic, seed, device, recorder)
    finally:
        if own_env:
            env.close()


def read_run_config(
    run_dir: str | Path, overrides: list[str] | None = None, trust_remote_code: bool = False
) -> Any:
    """The config of a run folder (or a saved model), with `--set`-style overrides. A run folder
    is data that users share: a `module:function` it names is refused unless
    `trust_remote_code` (check_code_references)."""
    from agents.run.config import load_config
    from agents.run.trust import check_code_references

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml in it")
    cfg = load_config(run_dir / "config.yaml", overrides)
    check_code_references(cfg, run_dir / "config.yaml", trust_remote_code)
    return cfg


def load_run_policy(
    cfg: Any,
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    spaces: tuple[Any, Any] | None = None,
) -> tuple[Any, Path]:
    """The trained policy of a run folder: its checkpoint (default: the latest), checked against
    `cfg` (`check_checkpoint_config`), built for `spaces` (observation, action; default: those
    of the run's eval env), in `run.dtype` (auto: the dtype the checkpoint records), on the CPU.
    Returns (policy, checkpoint path). One loader for `textrlhf eval`, `textrlhf export` and
    `PPO.load`."""
    from agents.policies import make_policy
    from agents.run import checkpoint as ckpt
    from agents.run.dtype import run_dtype

    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint else ckpt.latest_checkpoint(run_dir / "checkpoints")
    meta, tensors = ckpt.read_checkpoint(path)
    check_checkpoint_config(cfg, meta, path)
    if spaces is None:
        env = make_eval_env(cfg, 1)  # for the spaces the policy is built for
        try:
            spaces = (env.single_observation_space, env.single_action_space)
        finally:
            env.close()
    policy = make_policy(cfg.policy, *spaces)
    ckpt.load_policy_weights(policy, tensors, path)
    # run.dtype: auto is the dtype the checkpoint records, not a new choice on this machine
    policy.set_compute_dtype(run_dtype(cfg.run.dtype, meta, path)[0])
    return policy, path
