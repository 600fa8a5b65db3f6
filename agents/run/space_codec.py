"""Gymnasium spaces <-> JSON, so that a saved model can rebuild its policy without its env.

`PPO.load(path)` builds the policy for the observation and action spaces it was trained on; an
env object from the user's own script cannot be re-made from a name, so the spaces are saved
beside the weights (`spaces.json`). JSON, not pickle: loading a model never runs code.

    data = space_to_json(env.observation_space)      # {"type": "Box", "low": ..., ...}
    space = space_from_json(data)                    # an equal space
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

SPACE_TYPES = ("Box", "Discrete", "MultiDiscrete", "MultiBinary", "Dict", "Tuple")


def _array(values: np.ndarray) -> dict[str, Any]:
    """An array as JSON: its dtype, shape and values (inf as strings, which JSON cannot hold)."""
    flat = [v if np.isfinite(v) else str(v) for v in values.astype(np.float64).ravel().tolist()]
    if values.dtype.kind in "iub":
        flat = values.ravel().tolist()
    return {"dtype": values.dtype.name, "shape": list(values.shape), "values": flat}


def _from_array(data: dict[str, Any]) -> np.ndarray:
    values = [float(v) if isinstance(v, str) else v for v in data["values"]]
    return np.asarray(values, dtype=data["dtype"]).reshape(data["shape"])


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """A JSON-able description of `space`; ValueError for a space type it cannot describe."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box", "dtype": space.dtype.name, "shape": list(space.shape),
            "low": _array(space.low), "high": _array(space.high),
        }  # fmt: skip
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete", "dtype": space.dtype.name,
            "nvec": _array(space.nvec), "start": _array(space.start),
        }  # fmt: skip
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    raise ValueError(
        f"cannot save a {type(space).__name__} space; the supported spaces are {list(SPACE_TYPES)}"
    )


def space_from_json(data: dict[str, Any]) -> gym.Space:
    """The space `space_to_json` described; ValueError naming an unknown or malformed entry."""
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "Box":
            return gym.spaces.Box(
                _from_array(data["low"]), _from_array(data["high"]), dtype=data["dtype"]
            )
        if kind == "Discrete":
            return gym.spaces.Discrete(int(data["n"]), start=int(data["start"]))
        if kind == "MultiDiscrete":
            return gym.spaces.MultiDiscrete(
                _from_array(data["nvec"]), dtype=data["dtype"], start=_from_array(data["start"])
            )
        if kind == "MultiBinary":
            return gym.spaces.MultiBinary(data["n"])
        if kind == "Dict":
            return gym.spaces.Dict({k: space_from_json(s) for k, s in data["spaces"].items()})
        if kind == "Tuple":
            return gym.spaces.Tuple([space_from_json(s) for s in data["spaces"]])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed {kind} space in spaces.json: {err}") from None
    raise ValueError(f"unknown space type {kind!r} in spaces.json; known: {list(SPACE_TYPES)}")
