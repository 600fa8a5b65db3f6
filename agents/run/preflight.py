"""The checks before a run, in one place: `textrlhf train` (also `--nproc`'s launcher, before it
starts any rank), the Python API and the Trainer call the same two functions, so a bad setting
fails in seconds, with one message, whichever way the run was started.

- `check_config(cfg, world_size)`: what the config decides on its own: env rows and minibatches
  that split over the processes, groups that sit whole on one process, env sizes the policy's
  model can take (`check_env_kwargs`), before any env allocates its buffers;
- `check_env(cfg, env, local_rows)`: what needs the built env: the rollout buffer against this
  machine's memory, critic-free estimators and groups against the env's autoreset mode.

The config's own validators (agents/run/config.py) check each value and the relations inside one
config (a batch that divides the rollout, group_size against num_envs); this module checks the
config against the world: the processes, the model, the env, the machine.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

from agents.core.advantages import CRITIC_FREE
from agents.core.distributed import check_divides
from agents.core.rollout import LOCKSTEP, autoreset_mode
from agents.policies import policy_class
from agents.run.config import Config
from agents.run.envs import env_kwargs_with_defaults


def check_config(cfg: Config, world_size: int = 1, env_given: bool = False) -> int:
    """Everything the config decides about a run on `world_size` processes; returns the env
    rows each process holds. `env_given`: the run trains on an env object (the Python API), not
    on one made from `cfg.env.id`, so the sizes are the policy's to check when it is built."""
    rows = check_divides("env.num_envs", cfg.env.num_envs, world_size)
    check_divides("ppo.batch_size", cfg.ppo.batch_size, world_size)
    group = cfg.advantage.group_size
    if rows % group:
        raise ValueError(
            f"each process holds {rows} env rows (env.num_envs / number of processes), "
            f"not a multiple of advantage.group_size={group}: a group must sit on one process"
        )
    if not env_given:
        check_sizes(cfg)
    return rows


def check_env(cfg: Config, env: gym.vector.VectorEnv) -> None:
    """What the built training env decides: the rollout fits in memory, and the advantage
    estimator gets the rollouts it needs."""
    check_rollout_memory(cfg, env.single_observation_space, env.single_action_space)
    check_group_rollouts(cfg, env)


def check_sizes(cfg: Config) -> None:
    """Let the policy type check the env sizes against its model before the envs exist
    (`Policy.check_env_kwargs`), with the env's own defaults for the kwargs a config leaves out."""
    check = policy_class(cfg.policy.type).check_env_kwargs
    check(cfg.policy, env_kwargs_with_defaults(cfg.env.id, cfg.env.kwargs))
    check(
        cfg.policy, env_kwargs_with_defaults(cfg.env.id, {**cfg.env.kwargs, **cfg.eval.env_kwargs})
    )


def check_group_rollouts(cfg: Config, env: gym.vector.VectorEnv) -> None:
    """Critic-free estimators need one whole episode per env row in each rollout (a lockstep
    env), and groups need K rows that start from the same state (reset option "repeat")."""
    adv = cfg.advantage
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
