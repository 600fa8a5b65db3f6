"""The text-task protocol: what a user brings to TextRLHF-v0 to define an episode in text.

A **text task** is any object with two methods::

    reset(self, rng: numpy.random.Generator, split: str) -> tuple[str, object]
        A new episode: the prompt text and the task's own state for it (any object; the env
        keeps one per row and passes it back). All randomness must come from ``rng`` (the env's
        ``np_random``), so the same seed gives the same episodes. ``split`` is the env's
        ``split`` argument ("train", "validation" or "test").

    respond(self, state: object, text: str) -> tuple[str | None, float, bool]
        The agent ended a turn (EOS) with ``text`` (the turn's text, EOS not included). Returns
        the env's reply (``None``: no reply), the reward for the turn, and whether the episode
        is over. The env tokenizes the reply once and appends it as env-written tokens
        (``from_env`` = 1): the agent's tokens are never re-tokenized.

and optionally::

    tool(self, state: object, text: str) -> str | None
        Called inside a turn, with the agent's text since the env's last token, after every
        agent token (or only when that text ends with one of ``tool_stops``, e.g.
        ``("</calc>",)``, when the task declares that attribute): a str is written at once as
        env tokens (a tool result); None lets the agent go on.

    tool_stops: tuple[str, ...]
        See ``tool``.

    reference(self, state: object) -> str | None
        A reference text for the episode's info (``info["reference"]``), e.g. the right answer.

    demonstration(self, rng, split) -> tuple[str, list[tuple[str, str | None]]]
        A demonstration episode for supervised fine-tuning: the prompt and the turns, each the
        agent's text (EOS follows it) and the env's reply (None: no reply).

The per-turn rewards are paid at the agent token that ended the turn (``reward_placement="turn"``,
the default for tasks), summed at the episode's last step (``"final"``), or only the last turn's
(``"last"``, the default for the built-in prompt sets, whose retries are judged by the final try).

``gym.make("TextRLHF-v0", task=...)`` takes a task object or a spec string (``make_text_task``):
``"rg:NAME"`` (a reasoning-gym dataset, ``textenv.suites.reasoning_gym``), ``"ta:GAME-v0"`` (a
TextArena game, ``textenv.suites.textarena``) or ``"package.module:attr"`` (a task object or a
class / factory called with ``task_kwargs``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TextTask(Protocol):
    """The text-task protocol (module docstring). Any object with these methods is a task; it
    need not inherit from this class."""

    def reset(self, rng: np.random.Generator, split: str) -> tuple[str, Any]: ...

    def respond(self, state: Any, text: str) -> tuple[str | None, float, bool]: ...


SUITES = {"rg": "textenv.suites.reasoning_gym:ReasoningGymTask",
          "ta": "textenv.suites.textarena:TextArenaTask"}  # fmt: skip


def is_task_spec(value: Any) -> bool:
    """Whether ``value`` is a suite spec string (``"rg:NAME"``, ``"ta:GAME"``)."""
    return isinstance(value, str) and value.split(":", 1)[0] in SUITES and ":" in value


def make_text_task(task: Any, task_kwargs: dict[str, Any] | None = None) -> Any:
    """A task from a task object (returned as it is), ``"rg:NAME"`` / ``"ta:GAME"`` (the suite
    adapter: ``task_kwargs`` that name one of its options, e.g. ``prompt`` or ``pool_size``, go
    to the adapter, the others are the dataset's or game's config) or ``"module:attr"`` (an
    importable task object, or a class / factory called with ``**task_kwargs``)."""
    kwargs = dict(task_kwargs or {})
    if isinstance(task, str):
        if is_task_spec(task):
            prefix, name = task.split(":", 1)
            module, attr = SUITES[prefix].split(":")
            cls = getattr(importlib.import_module(module), attr)
            # the adapter's own options (e.g. TextArena's prompt=, reasoning-gym's pool_size=)
            # go to it, the rest is the dataset's or game's config
            own = set(inspect.signature(cls).parameters) - {"name", "game_id", "config"}
            options = {k: kwargs.pop(k) for k in list(kwargs) if k in own}
            return check_task(cls(name, config=kwargs or None, **options))
        if task.count(":") != 1 or not all(task.split(":")):
            raise ValueError(
                f"task must be a task object, 'rg:NAME' (reasoning-gym), 'ta:GAME-v0' "
                f"(TextArena) or 'package.module:attr', got {task!r}"
            )
        module, attr = task.split(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"task {task!r}: cannot import {attr!r} from {module!r}: {err}"
            ) from err
        if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "respond")):
            obj = obj(**kwargs)
        elif kwargs:
            raise ValueError(f"task {task!r} is an object, not a class: it takes no task_kwargs")
        return check_task(obj)
    if task_kwargs:
        raise ValueError("task_kwargs configures a task given by name; a task object takes none")
    return check_task(task)


def check_task(task: Any) -> Any:
    """``task`` if it has callable ``reset`` and ``respond`` (and ``tool`` / ``tool_stops`` /
    ``reference`` of the right kinds when present), else TypeError naming what is missing."""
    missing = [m for m in ("reset", "respond") if not callable(getattr(task, m, None))]
    if missing:
        raise TypeError(
            f"a task needs methods reset(rng, split) -> (prompt, state) and respond(state, text) "
            f"-> (reply | None, reward, done); {task!r:.60} lacks {missing}"
        )
    for optional in ("tool", "reference", "demonstration"):
        value = getattr(task, optional, None)
        if value is not None and not callable(value):
            raise TypeError(f"task attribute {optional!r} must be a method, got {value!r:.60}")
    stops = getattr(task, "tool_stops", None)
    if stops is not None and (
        isinstance(stops, str) or not all(isinstance(s, str) and s for s in stops)
    ):
        raise TypeError(f"task tool_stops must be a tuple of non-empty str, got {stops!r:.60}")
    return task
