"""Tokenizers for TextRLHF: a byte-level default and a loader for local folders.

The default is ``transformers.ByT5Tokenizer(extra_ids=0)``: a real transformers tokenizer that is
built in code (no files, no network). Its ids are: pad 0, EOS 1, unk 2, and byte ``b`` is ``b + 3``,
so ``len(tokenizer) == 259``.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_TOKENIZER_NAMES = ("byte", "byt5")


def default_tokenizer() -> Any:
    """Return the default byte-level tokenizer: ``ByT5Tokenizer(extra_ids=0)`` (259 ids)."""
    from transformers import ByT5Tokenizer  # lazy: importing transformers costs ~1 s

    return ByT5Tokenizer(extra_ids=0)


def check_tokenizer(tokenizer: Any) -> Any:
    """Check that ``tokenizer`` can drive the env: it needs EOS, pad, ``len()``, encode and decode."""
    for attr in ("eos_token_id", "pad_token_id"):
        if getattr(tokenizer, attr, None) is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has {attr}=None; TextRLHF needs a tokenizer "
                "with both an EOS token (ends an episode) and a pad token (fills the observation). "
                "Set it, e.g. tokenizer.pad_token = '<pad>' after adding it, or use the default "
                "byte tokenizer (tokenizer=None)."
            )
    for method in ("__len__", "__call__", "decode"):
        if not hasattr(tokenizer, method):
            raise TypeError(
                f"tokenizer {type(tokenizer).__name__} has no {method}(); expected a transformers "
                "tokenizer, None/'byte' for the default, or a local tokenizer folder path"
            )
    return tokenizer


def load_tokenizer(spec: Any = None) -> Any:
    """Build a tokenizer from ``spec``.

    ``spec`` is ``None`` or ``"byte"`` (the default byte tokenizer), a local folder path
    (``AutoTokenizer.from_pretrained(path)``), or a tokenizer object (returned as is after checks).
    A tokenizer without EOS or pad raises ``ValueError``.
    """
    if spec is None or (isinstance(spec, str) and spec.lower() in DEFAULT_TOKENIZER_NAMES):
        return check_tokenizer(default_tokenizer())
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if not os.path.isdir(path):
            raise ValueError(
                f"tokenizer {path!r} is neither a known name {list(DEFAULT_TOKENIZER_NAMES)} nor an "
                "existing local folder (no downloads: pass a folder saved with save_pretrained)"
            )
        from transformers import AutoTokenizer

        return check_tokenizer(AutoTokenizer.from_pretrained(path))
    return check_tokenizer(spec)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (no EOS/BOS is added)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def decode_ids(tokenizer: Any, ids: Any) -> str:
    """Decode generated ids to text, dropping special tokens (EOS, pad)."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
