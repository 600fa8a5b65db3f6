"""Turns: the env asks its task what to answer when the agent ends a turn, and its tools what to
answer inside a turn.

TextRLHF-v0 is token-level. When the task replies (feedback, a game's next message) or a tool
answers a call, the env appends its own tokens right after the agent's token, in the same
sequence, so the tokens a trainer scores are exactly the tokens the agent sampled: nothing is
re-tokenized.

- A **turn** ends with the agent's EOS (or the chat template's end-of-turn token), or at the
  length limit. The env hands the turn's text to the task (``textenv.text_task``), which returns
  a reply, the turn's reward and whether the episode is over.
- A **tool** watches the agent's text since the env's last token (``textenv.tools``: ``calc`` and
  functions; a task's own ``tool`` method too); when it fires, the env writes its result.
  ``max_tool_calls`` bounds the calls of an episode.

Env-written tokens count toward ``max_new_tokens``. When they would leave no room for one more
agent token, the episode ends at that step instead, with the rewards as they are
(``hit_length_limit`` when the last turn did not end with EOS).

``TurnRules`` is this logic; ``TextBatch._advance`` (``textenv.batch``) asks it, batched over the
rows of one step, and writes the tokens. ``TurnState`` holds each row's turns so far (``History``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textenv.tokenizer import check_text
from textenv.tools import make_tool

REWARD_PLACEMENTS = ("turn", "final", "last")


@dataclass
class History:
    """One row's episode so far: each ended turn's text and reward, and the tool calls."""

    texts: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # each turn's reward from the task
    calls: list[tuple[str, str]] = field(default_factory=list)  # (argument, env text)


class TurnState:
    """Each row's turns so far (kept by the env, used when it writes tokens): where the current
    turn begins and where the env last wrote, as positions after the prompt, and the History."""

    def __init__(self, num_rows: int) -> None:
        self.turn_start = np.zeros(num_rows, dtype=np.int64)  # (N,)
        self.env_end = np.zeros(num_rows, dtype=np.int64)  # (N,)
        self.history = [History() for _ in range(num_rows)]

    def reset_rows(self, at: slice | np.ndarray, rows: Sequence[int]) -> None:
        """New episodes in ``rows`` (``at`` indexes the same rows: a slice or an index array)."""
        self.turn_start[at], self.env_end[at] = 0, 0
        for r in rows:
            self.history[r] = History()


@dataclass
class TurnOutcome:
    """What the task answers for the k turns that end at a step."""

    rewards: np.ndarray  # (k,) each turn's reward
    parts: dict[str, np.ndarray]  # reward components {name: (k,)}
    replies: list[str | None] | None  # None: no reply for any row
    done: np.ndarray | None  # (k,) bool; None: every episode is over


def _check_response(task: Any, out: Any) -> tuple[str | None, float, bool]:
    """``task.respond``'s return value, checked: ``(reply | None, finite reward, bool done)``."""
    name = getattr(task, "name", type(task).__name__)
    if not isinstance(out, tuple) or len(out) != 3:
        raise TypeError(
            f"task {name!r}: respond() must return (reply: str | None, reward: float, done: "
            f"bool), got {out!r:.80}"
        )
    reply, reward, done = out
    if reply is not None and not isinstance(reply, str):
        raise TypeError(f"task {name!r}: the reply must be a str or None, got {reply!r:.60}")
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        raise TypeError(f"task {name!r}: the reward must be a float, got {reward!r:.60}")
    if not math.isfinite(reward):
        raise ValueError(f"task {name!r}: the reward must be finite, got {reward!r}")
    if not isinstance(done, (bool, np.bool_)):
        raise TypeError(f"task {name!r}: done must be a bool, got {done!r:.60}")
    if reply is not None:
        check_text(reply, f"task {name!r}", "the reply")
    return reply, float(reward), bool(done)


class TurnRules:
    """Drives a text task (``textenv.text_task``) and the tools, for ``TextBatch._advance``.

    ``_advance`` calls exactly two methods, before it writes anything (so an exception in the
    task or a tool leaves the env's arrays as they were):

    - ``tool(state, text)``, only when ``has_tools``: the agent's text since the env's last token,
      after an agent token that did not end the turn; ``(call, env_text)`` or None. The env's
      tools are asked first, then the task's own ``tool`` (when it has one; only when the text
      ends with one of its ``tool_stops``, if it declares them).
    - ``respond(states, texts, ended)``: the k turns that ended at this step, in one batch
      (``respond_batch`` when the task has it: one reward call), as a ``TurnOutcome``.
    """

    def __init__(self, task: Any, tools: Sequence[str | Callable[[str], str]]) -> None:
        self.task = task
        self.tools = [make_tool(tool) for tool in tools]
        self._task_tool = getattr(task, "tool", None)
        stops = getattr(task, "tool_stops", None)
        self._tool_stops = tuple(stops) if stops else None
        self.has_tools = bool(self.tools) or self._task_tool is not None
        self._batched = getattr(task, "respond_batch", None)

    def tool(self, state: Any, text: str) -> tuple[str, str] | None:
        """The first tool that fires on ``text``: ``(call, env_text)``, or None."""
        for tool in self.tools:
            out = tool(text)
            if out is not None:
                return out
        if self._task_tool is None:
            return None
        if self._tool_stops is not None and not text.endswith(self._tool_stops):
            return None
        reply = self._task_tool(state, text)
        if reply is None:
            return None
        if not isinstance(reply, str):
            raise TypeError(f"task tool() must return a str or None, got {reply!r:.60}")
        check_text(reply, "task tool", "the tool's reply")
        return text, reply

    def respond(self, states: list[Any], texts: list[str], ended: np.ndarray) -> TurnOutcome:
        if self._batched is not None:
            replies, rewards, done, parts = self._batched(states, texts, ended)
            if done.all():
                return TurnOutcome(rewards, parts, None, None)
            return TurnOutcome(rewards, parts, replies, done)
        out = [_check_response(self.task, self.task.respond(s, t)) for s, t in zip(states, texts)]
        rewards = np.array([reward for _, reward, _ in out], dtype=np.float64)
        return TurnOutcome(
            rewards, {}, [reply for reply, _, _ in out], np.array([d for _, _, d in out])
        )


def final_infos(
    histories: list[History], per_turn_keys: int, has_tools: bool
) -> dict[str, tuple[list, np.ndarray]]:
    """The turn infos of k finished rows: {key: (values (k,), has (k,) bool)}.

    ``turn_scores`` (each turn's reward), ``responses`` (each turn's text), ``n_turns``;
    ``score_turn1`` ... ``score_turn{per_turn_keys}`` (``has`` False past a row's last turn);
    ``tool_calls``, ``n_tool_calls``, ``used_tool`` with tools."""
    every = np.ones(len(histories), dtype=bool)
    out: dict[str, tuple[list, np.ndarray]] = {
        "turn_scores": ([list(h.scores) for h in histories], every),
        "responses": ([list(h.texts) for h in histories], every.copy()),
        "n_turns": ([len(h.scores) for h in histories], every.copy()),
    }
    for t in range(1, per_turn_keys + 1):
        has = np.array([len(h.scores) >= t for h in histories])
        out[f"score_turn{t}"] = ([h.scores[t - 1] if len(h.scores) >= t else 0.0
                                  for h in histories], has)  # fmt: skip
    if has_tools:
        out["tool_calls"] = ([list(h.calls) for h in histories], every.copy())
        out["n_tool_calls"] = ([len(h.calls) for h in histories], every.copy())
        out["used_tool"] = ([len(h.calls) > 0 for h in histories], every.copy())
    return out
