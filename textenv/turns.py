"""Turns: what the env answers when the agent ends a turn, or when its text calls a tool.

TextRLHF-v0 is token-level. With tools or several turns enabled, the env appends its own tokens
(a tool's result, a feedback text) right after the agent's token, in the same sequence, so the
tokens a trainer scores are exactly the tokens the agent sampled: nothing is re-tokenized.

- A **turn** ends with the agent's EOS (or the chat template's end-of-turn token), or at the
  length limit. The env scores the turn's text with the reward function. Before the last turn
  (``max_turns``), a turn that ended with EOS gets a feedback text (``feedback="score"``:
  ``"\\n[score 0.62] again:\\n"``, or a callable ``(prompt, responses_so_far, scores) -> str``)
  and the episode goes on.
- A **tool** (``textenv.tools``) watches the agent's text since the env's last token; when it
  fires, the env writes its result. ``max_tool_calls`` bounds the calls of an episode.

Env-written tokens count toward ``max_new_tokens``. When they would leave no room for one more
agent token, the episode ends at that step instead, scored as it is (``hit_length_limit``).

``TurnRules`` is this logic; ``TextBatch._advance`` (``textenv.batch``) asks it, batched over the
rows of one step, and writes the tokens. ``TurnState`` holds each row's turns so far (``History``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textenv.rewards import Reward
from textenv.tokenizer import check_text
from textenv.tools import TOOLS

Feedback = Callable[[str, list[str], list[float]], str]


def score_feedback(prompt: str, responses: list[str], scores: list[float]) -> str:
    """``feedback="score"``: the last turn's score, e.g. ``"\\n[score 0.62] again:\\n"``."""
    return f"\n[score {scores[-1]:.2f}] again:\n"


FEEDBACKS: dict[str, Feedback] = {"score": score_feedback}


def check_feedback(feedback: Any) -> Feedback:
    """A feedback name (``"score"``) or a callable ``(prompt, responses, scores) -> str``."""
    if callable(feedback):
        return feedback
    if isinstance(feedback, str) and feedback in FEEDBACKS:
        return FEEDBACKS[feedback]
    raise ValueError(
        f"feedback must be one of {list(FEEDBACKS)} or a callable (prompt, responses, scores) -> "
        f"str, got {feedback!r}"
    )


@dataclass
class History:
    """One row's episode so far: each ended turn's text and score, and the tool calls."""

    texts: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (expression, env text)


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


class TurnRules:
    """The built-in turn logic: the reward function scores each turn, ``feedback`` answers a turn
    that ended with EOS before ``max_turns``, the ``tools`` answer calls inside a turn.

    ``TextBatch._advance`` calls exactly two methods, before it writes anything (so an exception
    leaves the env as it was):

    - ``tool(text)``, only when ``has_tools``: the agent's text since the env's last token, after
      an agent token that did not end the turn; ``(call, env_text)`` or None.
    - ``respond(prompts, references, texts, ended, histories)``: the k turns that ended at this
      step, in one batch (one reward call); ``(scores (k,), parts {name: (k,)}, replies)`` where
      ``replies[i]`` is the env's text (the episode goes on) or None (it is over), and
      ``replies`` is None when no row can get one. ``histories`` is None when the env writes no
      tokens of its own (one turn, no tools).
    """

    def __init__(
        self, reward_fn: Reward, tools: Sequence[str], max_turns: int, feedback: Feedback
    ) -> None:
        self.reward_fn, self.max_turns, self.feedback = reward_fn, max_turns, feedback
        self.tools = [TOOLS[name]() for name in tools]
        self.has_tools = bool(self.tools)

    def tool(self, text: str) -> tuple[str, str] | None:
        """The first tool that fires on ``text``: ``(expression, env_text)``, or None."""
        for tool in self.tools:
            out = tool(text)
            if out is not None:
                return out
        return None

    def respond(
        self,
        prompts: list[str],
        references: list[str | None],
        texts: list[str],
        ended: np.ndarray,
        histories: list[History] | None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray], list[str | None] | None]:
        kwargs = {"ended": ended.tolist()} if self.reward_fn.wants_ended else {}
        scores, parts = self.reward_fn.score(prompts, texts, references, **kwargs)
        if self.max_turns == 1:
            return scores, parts, None
        replies: list[str | None] = []
        for i, history in enumerate(histories):
            reply = None
            if ended[i] and len(history.scores) + 1 < self.max_turns:
                reply = self.feedback(
                    prompts[i], [*history.texts, texts[i]], [*history.scores, scores[i]]
                )
                if not isinstance(reply, str):
                    raise TypeError(f"feedback must return a str, got {type(reply).__name__}")
                check_text(reply, f"feedback for {prompts[i]!r:.60}", "the feedback text")
            replies.append(reply)
        return scores, parts, replies


def final_infos(
    histories: list[History], max_turns: int, has_tools: bool
) -> dict[str, tuple[list, np.ndarray]]:
    """The turn infos of k finished rows: {key: (values (k,), has (k,) bool)}.

    ``turn_scores``, ``responses``, ``n_turns``; ``score_turn1``... when ``max_turns > 1`` (``has``
    False past a row's last turn); ``tool_calls``, ``n_tool_calls``, ``used_tool`` with tools."""
    every = np.ones(len(histories), dtype=bool)
    out: dict[str, tuple[list, np.ndarray]] = {
        "turn_scores": ([list(h.scores) for h in histories], every),
        "responses": ([list(h.texts) for h in histories], every.copy()),
        "n_turns": ([len(h.scores) for h in histories], every.copy()),
    }
    if max_turns > 1:
        for t in range(1, max_turns + 1):
            has = np.array([len(h.scores) >= t for h in histories])
            out[f"score_turn{t}"] = ([h.scores[t - 1] if len(h.scores) >= t else 0.0
                                      for h in histories], has)  # fmt: skip
    if has_tools:
        out["tool_calls"] = ([list(h.calls) for h in histories], every.copy())
        out["n_tool_calls"] = ([len(h.calls) for h in histories], every.copy())
        out["used_tool"] = ([len(h.calls) > 0 for h in histories], every.copy())
    return out
