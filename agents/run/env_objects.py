"""Env objects handed to `agents.PPO` (an Env, a function that makes one, a VectorEnv) as the
vector envs and config entries the Trainer runs on. An env id needs none of this: the Trainer
makes its envs from the config (`agents.run.envs`)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import gymnasium as gym


def env_label(env: Any) -> str:
    """The name a config records for an env object: its registered id, or its class."""
    spec = env.spec if isinstance(env, (gym.Env, gym.vector.VectorEnv)) else None
    if spec is not None:
        return spec.id
    kind = type(env)
    return f"{kind.__module__}.{kind.__qualname__}"


def spec_env_kwargs(spec: gym.envs.registration.EnvSpec) -> dict[str, Any]:
    """The env's own keyword arguments in the spec that gym.make / gym.make_vec recorded:
    without the vector arguments (`num_envs`, `vectorization_mode`)."""
    return {k: v for k, v in spec.kwargs.items() if k not in ("num_envs", "vectorization_mode")}


def spec_settings(env: Any) -> dict[str, Any]:
    """The `env:` config keys that remake an env object from its registered spec (a VectorEnv
    from gym.make_vec, an Env from gym.make): its kwargs and vectorization mode, so that a saved
    model can be evaluated and continued from its config. Empty when there is no spec or its
    kwargs are not plain data (a reward function object): the config then records the id only."""
    spec = env.spec if isinstance(env, (gym.Env, gym.vector.VectorEnv)) else None
    if spec is None:
        return {}
    kwargs = {k: v for k, v in spec_env_kwargs(spec).items() if k != "render_mode"}
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
        mode = spec.kwargs.get("vectorization_mode")
        return lambda n: gym.make_vec(
            spec.id, num_envs=n, vectorization_mode=mode, **spec_env_kwargs(spec)
        )
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
