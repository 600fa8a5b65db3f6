"""Tools: the environment answers a call in the agent's text with tokens of its own.

A **tool** watches the agent's text since the env's last token. The ``calc`` tool fires when that
text ends with ``</calc>``: it evaluates the expression between the last ``<calc>`` and that
``</calc>`` with a safe integer parser (``calc``; never ``eval``) and the env writes ``"=RESULT"``
(or ``"=error"``) right after the agent's token, in the same token sequence, so nothing the agent
sampled is re-tokenized. Any function ``fn(argument: str) -> str`` is a tool too
(``tools=[fn]``, ``FunctionTool``): its tag is its name, ``<fn>ARGUMENT</fn>`` -> ``"=" + fn(ARGUMENT)``.
``max_tool_calls`` bounds the calls of an episode. How the env asks its tools and writes their
results: ``textenv.turns`` and ``textenv.batch``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

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
    parser = _Parser(expression, _lex(expression))
    value = parser.expr(0)
    if parser.i != len(parser.tokens):
        raise CalcError(f"unexpected {parser.tokens[parser.i]!r} in {expression!r}")
    return value


def _lex(expression: str) -> list[str | int]:
    """The tokens of ``expression``: ints and the symbols ``+ - * ( )``."""
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
    return tokens


class _Parser:
    """expr := term (("+" | "-") term)*; term := factor ("*" factor)*;
    factor := "-" factor | "(" expr ")" | int."""

    def __init__(self, expression: str, tokens: list[str | int]) -> None:
        self.expression, self.tokens, self.i = expression, tokens, 0

    def peek(self) -> str | int | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def checked(self, value: int) -> int:
        if abs(value) > MAX_RESULT:
            raise CalcError(f"result beyond {MAX_RESULT:.0e} in {self.expression!r}")
        return value

    def expr(self, depth: int) -> int:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.tokens[self.i]
            self.i += 1
            right = self.term(depth)
            value = self.checked(value + right if op == "+" else value - right)
        return value

    def term(self, depth: int) -> int:
        value = self.factor(depth)
        while self.peek() == "*":
            self.i += 1
            value = self.checked(value * self.factor(depth))
        return value

    def factor(self, depth: int) -> int:
        token = self.peek()
        if token == "-":
            self.i += 1
            return -self.factor(depth)
        if token == "(":
            if depth >= MAX_DEPTH:
                raise CalcError(f"parentheses nested deeper than {MAX_DEPTH}")
            self.i += 1
            value = self.expr(depth + 1)
            if self.peek() != ")":
                raise CalcError(f"missing ')' in {self.expression!r}")
            self.i += 1
            return value
        if isinstance(token, int):
            self.i += 1
            return self.checked(token)
        raise CalcError(f"expected a number or '(' in {self.expression!r}, got {token!r}")


class FunctionTool:
    """A function as a tool: ``<NAME>ARGUMENT</NAME>`` in the agent's text -> ``"=" + fn(ARGUMENT)``.

    ``NAME`` is the function's ``__name__`` (or ``name``). The tool fires when the agent's text
    since the env's last token ends with ``</NAME>``; the argument is the text after the last
    ``<NAME>`` (``""`` when there is none). ``fn`` must return a str; an exception it raises
    propagates with the tool's name and the argument (a tool that can fail on the agent's input
    should return an error text instead, as ``calc`` returns ``"error"``).
    """

    def __init__(self, fn: Callable[[str], str], name: str | None = None) -> None:
        name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(name, str) or not _TAG.fullmatch(name):
            raise ValueError(
                f"a tool function needs a name of letters, digits and '_' (its __name__, used as "
                f"the tag <name>...</name>), got {name!r}; pass a def-function, not a lambda"
            )
        self.fn, self.name = fn, name
        self.open, self.close = f"<{name}>", f"</{name}>"

    def __call__(self, text: str) -> tuple[str, str] | None:
        """``text``: the agent's text since the env's last token. None unless it ends with
        ``</NAME>``; else ``(argument, env_text)``."""
        if not text.endswith(self.close):
            return None
        body = text[: -len(self.close)]
        start = body.rfind(self.open)
        argument = body[start + len(self.open) :] if start >= 0 else ""
        try:
            result = self.fn(argument)
        except Exception as err:
            err.add_note(f"in the tool {self.name!r} called with {argument!r:.80}")
            raise
        if not isinstance(result, str):
            raise TypeError(
                f"tool {self.name!r} must return a str, got {type(result).__name__}: {result!r:.60}"
            )
        return argument, "=" + result

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"


def calc_tool(expression: str) -> str:
    """The ``calc`` tool's function: the value of ``expression`` (``calc``), or ``"error"``."""
    try:
        return str(calc(expression)) if expression else "error"
    except CalcError:
        return "error"


calc_tool.__name__ = "calc"  # its tag: <calc>...</calc>


def CalcTool() -> FunctionTool:  # noqa: N802 (the name it always had)
    """The ``calc`` tool: ``<calc>EXPR</calc>`` -> ``"=RESULT"`` or ``"=error"``."""
    return FunctionTool(calc_tool)


TOOLS: dict[str, Callable[[], Any]] = {"calc": CalcTool}
_TAG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# the text of tool calls and results inside a response: what `exact_answer` looks past
TOOL_SPAN = re.compile(
    re.escape(CALC_OPEN) + r".*?" + re.escape(CALC_CLOSE) + r"(=-?[0-9]+|=error)?"
)


def check_tools(tools: Any) -> tuple[str | Callable[[str], str], ...]:
    """``tools`` (None, or a list of built-in tool names and functions ``fn(argument) -> str``) as
    a tuple, or TypeError/ValueError naming the bad entry."""
    if tools is None:
        return ()
    if isinstance(tools, str) or not isinstance(tools, Sequence):
        raise TypeError(
            f"tools must be a list of tool names {list(TOOLS)} or functions, got {tools!r}"
        )
    names = []
    for tool in tools:
        if callable(tool):
            names.append(FunctionTool(tool).name)  # checks the name
        elif isinstance(tool, str) and tool in TOOLS:
            names.append(tool)
        else:
            raise ValueError(
                f"unknown tool {tool!r}; known tools: {list(TOOLS)}, or a function "
                "fn(argument: str) -> str whose __name__ is the tag"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"tools lists a tool name twice: {names}")
    return tuple(tools)


def make_tool(tool: str | Callable[[str], str]) -> FunctionTool:
    """A checked ``tools`` entry as a tool object."""
    return TOOLS[tool]() if isinstance(tool, str) else FunctionTool(tool)


def calc_demonstration(prompt: str, reference: str, use_tool: bool) -> list[tuple[str, bool]]:
    """A demonstration for the ``calc`` task as (text, written_by_env) segments: with the tool
    ``<calc>EXPR</calc>``, the env's ``=RESULT``, then `` RESULT``; without it, just the answer.
    (SFT trains on the agent's segments only.)"""
    if not use_tool:
        return [(reference, False)]
    expression = prompt.removeprefix("What is ").removesuffix("?\n")
    return [(f"{CALC_OPEN}{expression}{CALC_CLOSE}", False), (f"={reference}", True),
            (f" {reference}", False)]  # fmt: skip
