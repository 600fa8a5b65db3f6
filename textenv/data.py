"""PromptDataset: prompts (and optional references) tokenized once into a left-padded array.

Accepted records (a Python list, a ``.json`` file holding a list, or a ``.jsonl`` file, one record
per line; blank JSONL lines are skipped):

- a string: the prompt, no reference;
- ``{"prompt": str, "reference": str | None}`` (the built-in task form);
- ``{"instruction": str, "input": str (optional), "output": str (optional)}``: the prompt is the
  non-empty parts of instruction and input joined by ``"\\n"``, plus a final ``"\\n"``; the
  reference is ``output``;
- ``{"messages": [{"role": ..., "content": ...}, ...], "solution": str (optional)}``: the prompt
  is the contents of the system/user messages joined by ``"\\n"``, plus a final ``"\\n"``; the
  reference is ``solution``, else the content of a final ``assistant`` message. With
  ``prompt_format="chat"`` (or ``"auto"`` and a tokenizer that has a chat template) the prompt's
  token ids are instead the system/user messages rendered by the tokenizer's own chat template
  with the generation prompt (``apply_chat_template(..., add_generation_prompt=True)``); the
  ``prompt`` text the reward sees stays the joined contents.

Files must be UTF-8. Prompts are encoded without special tokens. An empty prompt or one longer than
``max_prompt_tokens`` tokens raises ``ValueError`` (no silent truncation), and so do a prompt,
reference or message holding a lone surrogate (a ``"\\ud800"`` escape: not Unicode text) and JSON
nested more than 100 levels; every error names the file and line (JSONL; also for JSON syntax and
UTF-8 errors), the file and item index (JSON), or the list index.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from textenv.tokenizer import (
    PROMPT_FORMATS,
    check_text,
    encode_text,
    has_chat_template,
    load_tokenizer,
    render_chat,
)

PROMPT_ROLES = ("system", "user")
PROMPT_FILE_EXTENSIONS = (".json", ".jsonl")
# Prompt records nest ~4 levels; json recurses once per level (100,000 `[` raise RecursionError),
# and so would every later recursive reader of data just under Python's limit.
MAX_NESTING = 100


def record_to_pair(record: Any, where: str) -> tuple[str, str | None]:
    """Turn one record of any accepted form into ``(prompt, reference)``; ``where`` locates it."""
    if isinstance(record, str):
        return record, None
    if not isinstance(record, dict):
        raise TypeError(
            f"{where}: a record must be a str or a dict, got {type(record).__name__}: {record!r:.80}"
        )
    if "prompt" in record:
        prompt, reference = record["prompt"], record.get("reference")
    elif "instruction" in record:
        parts = [record["instruction"], record.get("input") or ""]
        for part in parts:
            if not isinstance(part, str):
                raise TypeError(f"{where}: 'instruction' and 'input' must be str, got {part!r:.80}")
        prompt = "\n".join(p for p in parts if p) + "\n"
        reference = record.get("output")
    elif "messages" in record:
        prompt, reference = _messages_to_pair(record, where)
    else:
        raise ValueError(
            f"{where}: unknown record keys {sorted(record)}; expected 'prompt' (+ 'reference'), "
            "'instruction' (+ 'input', 'output') or 'messages' (+ 'solution')"
        )
    if not isinstance(prompt, str):
        raise TypeError(f"{where}: the prompt must be a str, got {type(prompt).__name__}")
    if reference is not None and not isinstance(reference, str):
        raise TypeError(
            f"{where}: the reference must be a str or None, got {type(reference).__name__}"
        )
    check_text(prompt, where, "the prompt")
    if reference is not None:
        check_text(reference, where, "the reference")
    return prompt, reference


def _messages_to_pair(record: dict, where: str) -> tuple[str, str | None]:
    reference = record.get("solution")
    messages = prompt_messages(record, where)
    prompt = "\n".join(m["content"] for m in messages if m["content"]) + "\n"
    if record["messages"][-1]["role"] == "assistant" and reference is None:
        reference = record["messages"][-1]["content"]
    return prompt, reference


def prompt_messages(record: Any, where: str) -> list[dict[str, str]] | None:
    """The system/user messages of a ``{"messages": [...]}`` record (a final assistant message,
    the reference, dropped), checked; None for a record of another form."""
    if not isinstance(record, dict) or "messages" not in record or "prompt" in record:
        return None
    if "instruction" in record:
        return None
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list, got {messages!r:.80}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(
                f"{where}: each message needs a str 'content' and a 'role', got {m!r:.80}"
            )
        check_text(m["content"], where, "a message's content")
        if m.get("role") not in (*PROMPT_ROLES, "assistant"):
            raise ValueError(
                f"{where}: unknown message role {m.get('role')!r}; "
                f"allowed: {[*PROMPT_ROLES, 'assistant']}"
            )
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if any(m["role"] == "assistant" for m in messages):
        raise ValueError(
            f"{where}: only a final 'assistant' message is supported (single-turn prompts)"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _read_text(path: str) -> str:
    """The UTF-8 text of ``path``; a decoding error names the file and the line of the bad byte."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}:{lineno}: not valid UTF-8 ({e}); prompt files must be UTF-8 encoded"
        ) from e


def _nested_deeper_than(data: Any, limit: int) -> bool:
    """True when dicts/lists in ``data`` nest more than ``limit`` levels (iteratively)."""
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


def _parse_json(text: str, path: str, lineno: int | None = None) -> Any:
    """``json.loads`` of a whole .json file (``lineno`` None) or of line ``lineno`` of a .jsonl
    file; a ValueError naming the file and line for invalid JSON, and the file (and line) for
    nesting deeper than MAX_NESTING levels."""
    where = path if lineno is None else f"{path}:{lineno}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if lineno is None:
            raise ValueError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from e
        raise ValueError(f"{where}: malformed JSON line: {e.msg}") from e
    except RecursionError:
        raise ValueError(f"{where}: JSON nested more than {MAX_NESTING} levels deep") from None
    if _nested_deeper_than(data, MAX_NESTING):
        raise ValueError(f"{where}: JSON nested more than {MAX_NESTING} levels deep")
    return data


def _read_file(path: str) -> tuple[list[Any], list[str]]:
    """Read a .json (list) or .jsonl file; returns the records and their locations."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file {path!r} does not exist")
    if path.endswith(".jsonl"):
        records, where = [], []
        lines = io.StringIO(_read_text(path), newline=None)  # universal newlines, as open() does
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            records.append(_parse_json(line, path, lineno))
            where.append(f"{path}:{lineno}")
        return records, where
    if path.endswith(".json"):
        data = _parse_json(_read_text(path), path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json prompt file must hold a list of records")
        return data, [f"{path}[item {i}]" for i in range(len(data))]
    raise ValueError(
        f"prompt file {path!r}: unknown extension; allowed: {list(PROMPT_FILE_EXTENSIONS)}"
    )


def encode_prompt(
    tokenizer: Any,
    prompt: str,
    max_prompt_tokens: int,
    chat: bool = False,
    where: str = "prompt",
    messages: list[dict[str, str]] | None = None,
) -> list[int]:
    """Token ids of one prompt, checked to be non-empty and to fit ``max_prompt_tokens``: with
    ``chat``, ``messages`` (or the prompt as one user message) rendered by the tokenizer's chat
    template, else the prompt text encoded without special tokens."""
    if not isinstance(prompt, str):
        raise TypeError(f"{where}: a prompt must be a str, got {type(prompt).__name__}")
    check_text(prompt, where, "the prompt")
    if chat:
        ids = render_chat(tokenizer, messages or [{"role": "user", "content": prompt}])
    else:
        ids = encode_text(tokenizer, prompt)
    if not ids:
        raise ValueError(f"{where}: empty prompt {prompt!r}; a prompt needs at least 1 token")
    if len(ids) > max_prompt_tokens:
        raise ValueError(
            f"{where}: prompt {prompt[:40]!r}... has {len(ids)} tokens, more than "
            f"max_prompt_tokens={max_prompt_tokens}; shorten it or raise max_prompt_tokens "
            "(prompts are never truncated silently)"
        )
    return ids


class PromptDataset:
    """Prompts and references, tokenized once into left-padded ``(n, max_prompt_tokens)`` arrays.

    Attributes: ``prompts`` (list[str]), ``references`` (list[str | None]), ``input_ids``
    (int64, prompt left-padded with the pad id), ``attention_mask`` (int8), ``prompt_lengths``
    (int64 token counts), ``tokenizer``, ``max_prompt_tokens``, ``task`` (the built-in task's
    name for ``from_task``, whose natural reward the env uses when none is given; else None).
    """

    def __init__(
        self,
        records: Iterable[Any],
        tokenizer: Any = None,
        max_prompt_tokens: int = 32,
        locations: list[str] | None = None,
        prompt_format: str = "auto",
    ) -> None:
        records = list(records)
        if not records:
            raise ValueError("PromptDataset needs at least one prompt, got an empty list")
        if isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int):
            raise TypeError(f"max_prompt_tokens must be an int, got {max_prompt_tokens!r}")
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"prompt_format must be one of {list(PROMPT_FORMATS)}, got {prompt_format!r}"
            )
        locations = locations or [f"prompts[{i}]" for i in range(len(records))]
        self.tokenizer = load_tokenizer(tokenizer)
        if prompt_format == "chat" and not has_chat_template(self.tokenizer):
            raise ValueError(
                "prompt_format='chat' needs a tokenizer with a chat template (tokenizer."
                "chat_template), but this one has none; use prompt_format='raw' or 'auto', or "
                "the model's own tokenizer folder"
            )
        self.max_prompt_tokens = max_prompt_tokens
        self.locations = locations
        self.task: str | None = None  # set by from_task
        self.prompt_format = prompt_format
        self._records = records
        pairs = [record_to_pair(r, w) for r, w in zip(records, locations)]
        self.prompts = [p for p, _ in pairs]
        self.references = [r for _, r in pairs]
        self.messages = [prompt_messages(r, w) for r, w in zip(records, locations)]
        # True when a row's prompt ids come from the chat template (the env then also ends an
        # episode at the template's end-of-turn token)
        self.chat = any(self._renders_chat(m is not None) for m in self.messages)

        n, pad = len(pairs), self.tokenizer.pad_token_id
        self.input_ids = np.full((n, max_prompt_tokens), pad, dtype=np.int64)
        self.attention_mask = np.zeros((n, max_prompt_tokens), dtype=np.int8)
        self.prompt_lengths = np.zeros(n, dtype=np.int64)
        for i, (prompt, where) in enumerate(zip(self.prompts, locations)):
            ids = self.encode(prompt, where, self.messages[i])
            self.input_ids[i, max_prompt_tokens - len(ids) :] = ids
            self.attention_mask[i, max_prompt_tokens - len(ids) :] = 1
            self.prompt_lengths[i] = len(ids)

    def _renders_chat(self, has_messages: bool) -> bool:
        if self.prompt_format == "chat":
            return True
        return self.prompt_format == "auto" and has_messages and has_chat_template(self.tokenizer)

    def encode(
        self, prompt: str, where: str = "prompt", messages: list[dict[str, str]] | None = None
    ) -> list[int]:
        """Token ids of one prompt, checked to be non-empty and to fit ``max_prompt_tokens``:
        ``messages`` (or, with ``prompt_format="chat"``, the prompt as one user message) rendered
        by the chat template, else the prompt text encoded without special tokens."""
        chat = self._renders_chat(messages is not None)
        return encode_prompt(self.tokenizer, prompt, self.max_prompt_tokens, chat, where, messages)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        tokenizer: Any = None,
        max_prompt_tokens: int = 32,
        prompt_format: str = "auto",
    ) -> PromptDataset:
        """Load a ``.json`` (list of records) or ``.jsonl`` (one record per line) file."""
        records, where = _read_file(os.fspath(path))
        if not records:
            raise ValueError(f"prompt file {os.fspath(path)!r} holds no records")
        return cls(records, tokenizer, max_prompt_tokens, where, prompt_format)

    @classmethod
    def from_task(
        cls,
        name: str,
        split: str = "train",
        n: int | None = None,
        seed: int = 0,
        tokenizer: Any = None,
        max_prompt_tokens: int = 32,
        prompt_format: str = "auto",
    ) -> PromptDataset:
        """A built-in task (see ``textenv.tasks``) as a dataset."""
        from textenv.tasks import make_task

        records = make_task(name, split, n, seed)
        dataset = cls(
            records,
            tokenizer,
            max_prompt_tokens,
            locations=[f"{name}[{i}]" for i in range(len(records))],
            prompt_format=prompt_format,
        )
        dataset.task = name
        return dataset

    def with_tokenizer(
        self, tokenizer: Any, max_prompt_tokens: int, prompt_format: str | None = None
    ) -> PromptDataset:
        """The same records tokenized with another tokenizer / prompt width / prompt format
        (self if unchanged)."""
        prompt_format = self.prompt_format if prompt_format is None else prompt_format
        same = tokenizer is self.tokenizer and max_prompt_tokens == self.max_prompt_tokens
        if same and prompt_format == self.prompt_format:
            return self
        dataset = PromptDataset(
            self._records, tokenizer, max_prompt_tokens, self.locations, prompt_format
        )
        dataset.task = self.task
        return dataset

    def index_of(self, prompt: str) -> int | None:
        """Index of the first record whose prompt is ``prompt``, or None."""
        if not hasattr(self, "_index"):
            self._index: dict[str, int] = {}
            for i, p in enumerate(self.prompts):
                self._index.setdefault(p, i)
        return self._index.get(prompt)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, str | None]:
        return {"prompt": self.prompts[i], "reference": self.references[i]}

    def __repr__(self) -> str:
        return f"PromptDataset(n={len(self)}, max_prompt_tokens={self.max_prompt_tokens})"


def make_dataset(
    spec: Any,
    tokenizer: Any = None,
    max_prompt_tokens: int = 32,
    split: str = "train",
    prompt_format: str = "auto",
) -> PromptDataset:
    """Build a PromptDataset from a task name, a dataset, a list, or a .json/.jsonl path.

    ``split`` selects the built-in task split; any other split than ``"train"`` with your own
    prompts is an error (they have no held-out part: pass a separate test file instead).
    """
    from textenv.tasks import SPLITS, TASK_NAMES

    is_task = isinstance(spec, str) and spec in TASK_NAMES
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {list(SPLITS)}")
    if split != "train" and not is_task:
        raise ValueError(
            f"split={split!r} applies to built-in tasks {list(TASK_NAMES)} only; for your own "
            "prompts pass the held-out prompts themselves (e.g. prompts='test.jsonl')"
        )

    if isinstance(spec, PromptDataset):
        return spec.with_tokenizer(
            load_tokenizer(tokenizer) if tokenizer is not None else spec.tokenizer,
            max_prompt_tokens,
            prompt_format,
        )
    if is_task:
        return PromptDataset.from_task(
            spec, split, tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens,
            prompt_format=prompt_format,
        )  # fmt: skip
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if path.endswith(PROMPT_FILE_EXTENSIONS):
            return PromptDataset.from_file(path, tokenizer, max_prompt_tokens, prompt_format)
        raise ValueError(
            f"prompts={spec!r} is neither a built-in task {list(TASK_NAMES)} nor a file with an "
            f"extension in {list(PROMPT_FILE_EXTENSIONS)}"
        )
    if isinstance(spec, (list, tuple)):
        return PromptDataset(spec, tokenizer, max_prompt_tokens, prompt_format=prompt_format)
    raise TypeError(
        f"prompts must be a task name {list(TASK_NAMES)}, a PromptDataset, a list of str/dicts or "
        f"a path ending in {list(PROMPT_FILE_EXTENSIONS)}, got {type(spec).__name__}"
    )
