"""Tools and turns: the environment writes tokens into the episode's token sequence too.

TextRLHF-v0 is token-level. With tools or several turns enabled, the env appends its own tokens
(a tool's result, a feedback text) right after the agent's token, in the same sequence, so the
tokens a trainer scores are exactly the tokens the agent sampled: nothing is re-tokenized.

- A **tool** watches the agent's text since the env's last token. The ``calc`` tool fires when that
  text ends with ``</calc>``: it evaluates the expression between the last ``<calc>`` and that
  ``</calc>`` with a safe integer parser (``calc``; never ``eval``) and the env writes
  ``"=RESULT"`` (or ``"=error"``). ``max_tool_calls`` bounds the calls of an episode.
- A **turn** ends with the agent's EOS. Before the last turn (``max_turns``), the env scores the
  turn, writes a feedback text (``feedback="score"``: ``"\\n[score 0.62] again:\\n"``, or a
  callable ``(prompt, responses_so_far, scores) -> str``) and the episode goes on.

Env-written tokens count toward ``max_new_tokens``. When they would leave no room for one more
agent token, the episode ends at that step instead, scored as it is (``hit_length_limit``).

``Dialogues`` holds the per-row bookkeeping and the step logic, which ``TextRLHFEnv`` (one row) and
``TextRLHFVectorEnv`` (N rows) share.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from textenv.tokenizer import check_text, encode_text, make_decoder

CALC_OPEN, CALC_CLOSE = "<calc>", "</calc>"
MAX_EXPRESSION_CHARS = 64
MAX_RESULT = 10**15  # larger intermediate results are an error, not a 10**60-digit number
MAX_DEPTH = 16  # parenthesis nesting

# ASCII digits only: `\d` and int() also read Arabic-Indic, fullwidth and other Unicode digits
_TOKEN = re.compile(r"\s*(?:([0-9]+)|(\S))")


class CalcError(ValueError):
    """An expression the ``calc`` tool cannot evaluate."""


def calc(expression: str) -> int:
    """Evaluate an integer expression: non-negative int literals, ``+ - *``, unary minus and
    parentheses, with the usual precedence. A recursive-descent parser, never ``eval``.

    Raises ``CalcError`` (a ValueError) for anything else, for more than 64 characters, nesting
    deeper than 16 or a result beyond 10**15 in magnitude.
    """
    if not isinstance(expression, str):
        raise CalcError(f"calc needs a str, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalcError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens: list[str | int] = []
    pos = 0
    for match in _TOKEN.finditer(expression):
        if match.start() != pos:
            break
        pos = match.end()
        number, symbol = match.groups()
        if number is not None:
            tokens.append(int(number))
        elif symbol in "+-*()":
            tokens.append(symbol)
        else:
            raise CalcError(f"unexpected {symbol!r} in {expression!r} (allowed: ints + - * ( ))")
    if expression[pos:].strip():
        raise CalcError(f"cannot read {expression!r}")
    if not tokens:
        raise CalcError("empty expression")
    i = 0

    def peek() -> str | int | None:
        return tokens[i] if i < len(tokens) else None

    def checked(value: int) -> int:
        if abs(value) > MAX_RESULT:
            raise CalcError(f"result beyond {MAX_RESULT:.0e} in {expression!r}")
        return value

    def expr(depth: int) -> int:
        nonlocal i
        value = term(depth)
        while peek() in ("+", "-"):
            op = tokens[i]
            i += 1
            right = term(depth)
            value = checked(value + right if op == "+" else value - right)
        return value

    def term(depth: int) -> int:
        nonlocal i
        value = factor(depth)
        while peek() == "*":
            i += 1
            value = checked(value * factor(depth))
        return value

    def factor(depth: int) -> int:
        nonlocal i
        token = peek()
        if token == "-":
            i += 1
            return -factor(depth)
        if token == "(":
            if depth >= MAX_DEPTH:
                raise CalcError(f"parentheses nested deeper than {MAX_DEPTH}")
            i += 1
            value = expr(depth + 1)
            if peek() != ")":
                raise CalcError(f"missing ')' in {expression!r}")
            i += 1
            return value
        if isinstance(token, int):
            i += 1
            return checked(token)
        raise CalcError(f"expected a number or '(' in {expression!r}, got {token!r}")

    value = expr(0)
    if i != len(tokens):
        raise CalcError(f"unexpected {tokens[i]!r} in {expression!r}")
    return value


class CalcTool:
    """The ``calc`` tool: ``<calc>EXPR</calc>`` -> ``"=RESULT"`` or ``"=error"``."""

    name = "calc"
    open, close = CALC_OPEN, CALC_CLOSE

    def __call__(self, text: str) -> tuple[str, str] | None:
        """``text``: the agent's text since the env's last token. None unless it ends with
        ``</calc>``; else ``(expression, env_text)``."""
        if not text.endswith(self.close):
            return None
        body = text[: -len(self.close)]
        start = body.rfind(self.open)
        expression = body[start + len(self.open) :] if start >= 0 else ""
        try:
            result = str(calc(expression)) if start >= 0 else "error"
        except CalcError:
            result = "error"
        return expression, "=" + result


TOOLS: dict[str, Callable[[], Any]] = {"calc": CalcTool}

# the text of tool calls and results inside a response: what `exact_answer` looks past
TOOL_SPAN = re.compile(
    re.escape(CALC_OPEN) + r".*?" + re.escape(CALC_CLOSE) + r"(=-?[0-9]+|=error)?"
)


def check_tools(tools: Any) -> tuple[str, ...]:
    """``tools`` (None or a list of tool names) as a tuple of names, or TypeError/ValueError."""
    if tools is None:
        return ()
    if isinstance(tools, str) or not isinstance(tools, Sequence):
        raise TypeError(f"tools must be a list of tool names {list(TOOLS)}, got {tools!r}")
    for name in tools:
        if name not in TOOLS:
            raise ValueError(f"unknown tool {name!r}; known tools: {list(TOOLS)}")
    if len(set(tools)) != len(tools):
        raise ValueError(f"tools lists a tool twice: {list(tools)}")
    return tuple(tools)


def calc_demonstration(prompt: str, reference: str, use_tool: bool) -> list[tuple[str, bool]]:
    """A demonstration for the ``calc`` task as (text, written_by_env) segments: with the tool
    ``<calc>EXPR</calc>``, the env's ``=RESULT``, then `` RESULT``; without it, just the answer.
    (SFT trains on the agent's segments only.)"""
    if not use_tool:
        return [(reference, False)]
    expression = prompt.removeprefix("What is ").removesuffix("?\n")
    return [(f"{CALC_OPEN}{expression}{CALC_CLOSE}", False), (f"={reference}", True),
            (f" {reference}", False)]  # fmt: skip


# ----------------------------------------------------------------------------- feedback


def score_feedback(prompt: str, responses: list[str], scores: list[float]) -> str:
    """``feedback="score"``: the last turn's score, e.g. ``"\\n[score 0.62] again:\\n"``."""
    return f"\n[score {scores[-1]:.2f}] again:\n"


FEEDBACKS: dict[str, Callable[[str, list[str], list[float]], str]] = {"score": score_feedback}


def check_feedback(feedback: Any) -> Callable[[str, list[str], list[float]], str]:
    """A feedback name (``"score"``) or a callable ``(prompt, responses, scores) -> str``."""
    if callable(feedback):
        return feedback
    if isinstance(feedback, str) and feedback in FEEDBACKS:
        return FEEDBACKS[feedback]
    raise ValueError(
        f"feedback must be one of {list(FEEDBACKS)} or a callable (prompt, responses, scores) -> "
        f"str, got {feedback!r}"
    )


# ----------------------------------------------------------------------------- the step logic

ScoreFn = Callable[[np.ndarray, list[str], np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]


class Dialogues:
    """Tool calls and turns of N rows: per-row bookkeeping and the step both envs share.

    The envs keep the token arrays (``ids``, ``mask``, ``from_env`` (N, L) and ``n_gen`` (N,)) and
    hand them to ``step``, which writes the agent's token and any env tokens into them.
    ``n_gen`` counts every token after the prompt, the agent's and the env's.
    """

    def __init__(
        self,
        num_rows: int,
        tokenizer: Any,
        max_prompt_tokens: int,
        max_new_tokens: int,
        tools: tuple[str, ...],
        max_tool_calls: int,
        max_turns: int,
        feedback: Callable[[str, list[str], list[float]], str],
    ):
        self.tools = [TOOLS[name]() for name in tools]
        self.max_tool_calls, self.max_turns, self.feedback = max_tool_calls, max_turns, feedback
        self.P, self.M = max_prompt_tokens, max_new_tokens
        self.eos_id = tokenizer.eos_token_id
        self.tokenizer = tokenizer
        self._decode = make_decoder(tokenizer)
        N = num_rows
        self.turn = np.ones(N, dtype=np.int64)  # 1-based
        self.n_calls = np.zeros(N, dtype=np.int64)
        self.env_end = np.zeros(N, dtype=np.int64)  # response index after the env's last token
        self.turn_start = np.zeros(N, dtype=np.int64)  # response index where the turn began
        self.responses: list[list[str]] = [[] for _ in range(N)]
        self.scores: list[list[float]] = [[] for _ in range(N)]
        self.calls: list[list[tuple[str, str]]] = [[] for _ in range(N)]

    def reset_rows(self, rows: np.ndarray) -> None:
        self.turn[rows], self.n_calls[rows] = 1, 0
        self.env_end[rows], self.turn_start[rows] = 0, 0
        for r in np.asarray(rows).tolist():
            self.responses[r], self.scores[r], self.calls[r] = [], [], []

    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(encode_text(self.tokenizer, text), dtype=np.int64)

    def step(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        from_env: np.ndarray,
        n_gen: np.ndarray,
        rows: np.ndarray,
        actions: np.ndarray,
        prompts: list[str],
        score: ScoreFn,
    ) -> dict[str, Any]:
        """Step the active ``rows`` (k,) with ``actions`` (N,).

        Scores every row whose turn ends in ONE ``score(rows, responses, ended)`` call, before
        anything is written (a reward that raises changes nothing). Returns, for the k rows:
        ``finished``, ``eos``, ``hit_limit`` (k,) bools, ``score`` (k,) (nan where no turn ended)
        and ``parts``, and ``info``: the extra final infos {key: (values (k,), has (k,) bool)}.
        """
        P, M = self.P, self.M
        a = actions[rows]  # (k,)
        n = n_gen[rows]  # (k,)
        eos = a == self.eos_id
        hit = (n + 1 == M) & ~eos
        env_tokens: list[np.ndarray | None] = [None] * len(rows)
        new_call: list[tuple[str, str] | None] = [None] * len(rows)
        cut = np.zeros(len(rows), dtype=bool)  # an env text that does not fit ends the episode
        for i, r in enumerate(rows.tolist()):
            if eos[i] or hit[i] or not self.tools or self.n_calls[r] >= self.max_tool_calls:
                continue
            text = self._decode(np.append(ids[r, P + self.env_end[r] : P + n[i]], a[i]))
            for tool in self.tools:
                out = tool(text)
                if out is not None:
                    tokens = self._encode(out[1])
                    if n[i] + 1 + len(tokens) >= M:
                        cut[i] = True
                    else:
                        env_tokens[i], new_call[i] = tokens, out
                    break

        turn_end = eos | hit | cut
        ends = np.flatnonzero(turn_end)
        scores = np.full(len(rows), np.nan)
        parts: dict[str, np.ndarray] = {}
        responses: list[str] = []
        if len(ends):
            for i in ends.tolist():
                r = rows[i]
                turn = ids[r, P + self.turn_start[r] : P + n[i]]
                responses.append(self._decode(turn if eos[i] else np.append(turn, a[i])))
            total, got = score(rows[ends], responses, eos[ends])
            scores[ends] = total
            for name, values in got.items():
                parts[name] = np.full(len(rows), np.nan)
                parts[name][ends] = values
        finished = turn_end.copy()
        for j, i in enumerate(ends.tolist()):
            r = rows[i]
            if eos[i] and self.turn[r] < self.max_turns:
                text = self.feedback(
                    prompts[r], [*self.responses[r], responses[j]], [*self.scores[r], scores[i]]
                )
                if not isinstance(text, str):
                    raise TypeError(f"feedback must return a str, got {type(text).__name__}")
                check_text(text, f"feedback for {prompts[r]!r:.60}", "the feedback text")
                tokens = self._encode(text)
                if n[i] + 1 + len(tokens) < M:
                    env_tokens[i], finished[i] = tokens, False

        # write: the agent's token, then the env's
        for i, r in enumerate(rows.tolist()):
            col = P + n[i]
            ids[r, col], mask[r, col], from_env[r, col] = a[i], 1, 0
            extra = env_tokens[i]
            m = 0 if extra is None else len(extra)
            if m:
                ids[r, col + 1 : col + 1 + m] = extra
                mask[r, col + 1 : col + 1 + m], from_env[r, col + 1 : col + 1 + m] = 1, 1
                self.env_end[r] = n[i] + 1 + m
            n_gen[r] = n[i] + 1 + m
            if new_call[i] is not None:
                self.calls[r].append(new_call[i])
                self.n_calls[r] += 1
        for j, i in enumerate(ends.tolist()):
            r = rows[i]
            self.responses[r].append(responses[j])
            self.scores[r].append(float(scores[i]))
            if not finished[i]:
                self.turn[r] += 1
                self.turn_start[r] = n_gen[r]
        info = self._final_infos(rows, finished)
        return {
            "finished": finished,
            "eos": eos & finished,
            "hit_limit": finished & ~eos,
            "score": scores,
            "parts": parts,
            "response": [self.responses[r][-1] if f else None for r, f in zip(rows, finished)],
            "info": info,
        }

    def _final_infos(self, rows: np.ndarray, finished: np.ndarray) -> dict[str, tuple]:
        """The extra infos of the rows that finished: {key: (values, has)}."""
        out: dict[str, tuple] = {}

        def put(key: str, of_row: Any, default: Any) -> None:
            """`of_row(r)` for each finished row, `default` for the others."""
            values = [of_row(int(r)) if f else default for r, f in zip(rows, finished)]
            out[key] = (values, finished.copy())

        if not finished.any():
            return out
        put("turn_scores", lambda r: list(self.scores[r]), None)
        put("responses", lambda r: list(self.responses[r]), None)
        put("n_turns", lambda r: len(self.scores[r]), 0)
        for t in range(1, self.max_turns + 1):
            has = np.array([f and len(self.scores[r]) >= t for r, f in zip(rows, finished)])
            values = [self.scores[r][t - 1] if h else 0.0 for r, h in zip(rows, has)]
            if self.max_turns > 1:
                out[f"score_turn{t}"] = (values, has)
        if self.tools:
            put("tool_calls", lambda r: list(self.calls[r]), None)
            put("n_tool_calls", lambda r: int(self.n_calls[r]), 0)
            put("used_tool", lambda r: bool(self.n_calls[r] > 0), False)
        return out


def make_dialogues(
    num_rows: int,
    tokenizer: Any,
    max_prompt_tokens: int,
    max_new_tokens: int,
    tools: tuple[str, ...],
    max_tool_calls: int,
    max_turns: int,
    feedback: Callable,
) -> Dialogues | None:
    """``Dialogues`` for the envs, or None when neither tools nor several turns are enabled
    (the env then runs exactly as without this module)."""
    if not tools and max_turns == 1:
        return None
    return Dialogues(
        num_rows,
        tokenizer,
        max_prompt_tokens,
        max_new_tokens,
        tools,
        max_tool_calls,
        max_turns,
        feedback,
    )
