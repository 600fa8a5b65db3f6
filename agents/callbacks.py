"""Callbacks for `agents.PPO.learn`: SB3's hooks, or a plain function.

class StopWhenSolved(BaseCallback):
    def on_step(self) -> bool:
        return self.locals["metrics"].get("rollout/ep_return", 0.0) < 400
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.api import PPO


class BaseCallback:
    """SB3-style callback: subclass it and override what you need. `on_step` is called after
    every PPO iteration (one rollout + one update); returning False stops training cleanly (with
    a run folder: a checkpoint and the summary, as Ctrl-C does).

    Attributes while training: `model` (the PPO), `num_timesteps`, `locals` (the iteration's
    `metrics` dict, `iteration`, `num_timesteps`)."""

    def __init__(self) -> None:
        self.model: PPO | None = None
        self.num_timesteps = 0
        self.locals: dict[str, Any] = {}

    def init_callback(self, model: PPO) -> None:
        self.model = model

    def on_training_start(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        """Before the first iteration of a `learn` call."""

    def on_rollout_end(self) -> None:
        """After each rollout, before its update."""

    def on_step(self) -> bool:
        """After each iteration; False stops training."""
        return True

    def on_training_end(self) -> None:
        """After the last iteration of a `learn` call (also after a stop)."""


class FunctionCallback(BaseCallback):
    """A plain callable `(locals_dict) -> bool` as a callback: called after each iteration with
    the iteration's `metrics`, `iteration` and `num_timesteps`; False stops training."""

    def __init__(self, fn: Callable[[dict[str, Any]], bool | None]):
        super().__init__()
        self.fn = fn

    def on_step(self) -> bool:
        return self.fn(self.locals) is not False


def as_callback(callback: Any) -> BaseCallback | None:
    """None, a `BaseCallback`, or a callable -> a callback object (TypeError otherwise)."""
    if callback is None or isinstance(callback, BaseCallback):
        return callback
    if callable(callback):
        return FunctionCallback(callback)
    raise TypeError(
        f"callback must be a BaseCallback or a callable (locals) -> bool, got {callback!r}"
    )
