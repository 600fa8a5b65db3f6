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

The per-turn rewards are paid at the agent token that ended the turn (``reward_placement="turn"``,
the default for tasks) or summed at the episode's last step (``"final"``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TextTask(Protocol):
    """The text-task protocol (module docstring). Any object with these methods is a task; it
    need not inherit from this class."""

    def reset(self, rng: np.random.Generator, split: str) -> tuple[str, Any]: ...

    def respond(self, state: Any, text: str) -> tuple[str | None, float, bool]: ...
