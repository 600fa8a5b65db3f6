"""Reading JSON that a run folder or a user hands us: checkpoint metadata and pointers, run
summaries, preference pairs. One parser with the project's limits, so that every reader can turn
any problem into its own error naming the file (CheckpointError for checkpoints).

Python's json module recurses once per nesting level: a file of 100,000 `[` raises RecursionError,
and data just under that limit makes every later recursive reader (the config comparison, the
YAML writer) raise it instead. No file the project writes nests more than ~10 levels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_NESTING = 100  # containers inside containers; the YAML configs have the same bound


def is_unicode_text(text: str) -> bool:
    """False for a str with a lone surrogate (e.g. from a JSON or YAML "\\ud800" escape): it
    cannot be encoded, so it would fail later, in a file name, a log or a tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def nested_deeper_than(data: Any, limit: int) -> bool:
    """True when `data` has dicts/lists nested more than `limit` levels (iteratively: it may be
    data that a recursive walk could not handle)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            stack.extend(
                (v, depth + 1) for v in (value.values() if isinstance(value, dict) else value)
            )
    return False


def parse_json(text: str) -> Any:
    """`json.loads` with every failure a ValueError saying what is wrong (the caller names the
    file): invalid JSON (with its line and column), nesting deeper than MAX_NESTING."""
    too_deep = f"JSON nested more than {MAX_NESTING} levels deep"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err})") from None
    except RecursionError:
        raise ValueError(too_deep) from None
    if nested_deeper_than(data, MAX_NESTING):
        raise ValueError(too_deep)
    return data


def read_json(path: str | Path) -> Any:
    """The JSON in the file `path` (see `parse_json`); text that is not UTF-8 is a ValueError
    too. OSError (a missing or unreadable file) passes through."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text ({err})") from None
    return parse_json(text)
