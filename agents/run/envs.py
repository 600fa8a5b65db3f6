"""Env creation for runs: ids are found the Gymnasium way, vector envs are built with `make_vec`.

An env id is a registered id (`CartPole-v1`) or `module:EnvId` (`textenv:TextRLHF-v0`): the
module is imported first, and registers its envs on import, as `gym.make` does. Nothing here
knows any particular env.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

VECTORIZATION_MODES = ("auto", "vector_entry_point", "sync", "async")


def env_module(env_id: str) -> str:
    """The module part of `module:EnvId` ('' for a plain registered id)."""
    return env_id.rpartition(":")[0] if isinstance(env_id, str) else ""


# envs of this project's own packages, found by their plain id too (configs and run folders that
# say `TextRLHF-v0`); any other package's env is `module:EnvId`
PACKAGE_ENVS = {"TextRLHF-v0": "textenv"}


def find_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of `env_id` (`EnvId` or `module:EnvId`); ValueError naming close ids."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env.id must be a non-empty string, got {env_id!r}")
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            raise ValueError(
                f"env id {env_id!r}: cannot import module {module!r} ({err}); write "
                "'module:EnvId' with a module that registers the env on import"
            ) from None
    if not module and name not in gym.registry and name in PACKAGE_ENVS:
        importlib.import_module(PACKAGE_ENVS[name])  # its import registers it
    try:
        return gym.spec(name)
    except gym.error.Error as err:
        close = difflib.get_close_matches(name, list(gym.registry), n=5, cutoff=0.5)
        hint = f"; close matches: {close}" if close else ""
        raise ValueError(
            f"unknown env id {env_id!r} ({err}){hint}; an env registered by a package is named "
            "'module:EnvId', e.g. 'textenv:TextRLHF-v0'"
        ) from None


def env_kwargs_with_defaults(env_id: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments `env_id` will be built with: `kwargs` over the spec's registered
    kwargs over the defaults its entry point's signature declares (for checks that run before
    any env exists, e.g. a policy's `check_env_kwargs`)."""
    spec = find_spec(env_id)
    creator = spec.entry_point or spec.vector_entry_point
    if isinstance(creator, str):
        creator = load_env_creator(creator)
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(creator).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **spec.kwargs, **(kwargs or {})}


def make_env(
    env_id: str, num_envs: int, vectorization: str = "auto", kwargs: dict | None = None
) -> gym.vector.VectorEnv:
    """`gym.make_vec` with clear errors. "auto" picks the env's native `vector_entry_point` when
    its spec has one (e.g. CartPole-v1), else "sync"."""
    spec = find_spec(env_id)
    if vectorization not in VECTORIZATION_MODES:
        raise ValueError(
            f"env.vectorization must be one of {list(VECTORIZATION_MODES)}, got {vectorization!r}"
        )
    if vectorization == "auto":
        vectorization = "vector_entry_point" if spec.vector_entry_point else "sync"
    return gym.make_vec(
        spec.id, num_envs=num_envs, vectorization_mode=vectorization, **(kwargs or {})
    )


def make_train_env(cfg: Any, num_envs: int | None = None) -> gym.vector.VectorEnv:
    """The training env of a run config: `env.num_envs` rows with `env.kwargs` (or `num_envs`
    rows: one rank's share in a data-parallel run)."""
    rows = cfg.env.num_envs if num_envs is None else num_envs
    return make_env(cfg.env.id, rows, cfg.env.vectorization, cfg.env.kwargs)


def make_eval_env(cfg: Any, episodes: int | None = None) -> gym.vector.VectorEnv:
    """The evaluation env of a run config: `env.kwargs` updated by `eval.env_kwargs`, with at
    most `env.num_envs` rows (fewer when fewer episodes are asked for)."""
    episodes = cfg.eval.episodes if episodes is None else episodes
    kwargs = {**cfg.env.kwargs, **cfg.eval.env_kwargs}
    rows = max(1, min(episodes, cfg.env.num_envs))
    return make_env(cfg.env.id, rows, cfg.env.vectorization, kwargs)
