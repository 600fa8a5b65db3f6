"""reasoning-gym datasets as text tasks (``textenv.text_task``): one question, one answer, one reward.

``ReasoningGymTask("spell_backward", {"min_word_len": 3, "max_word_len": 5})`` wraps one
`reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ dataset (``config`` is the
dataset's config dataclass as keyword arguments, without ``seed`` and ``size``, which the task
sets). Needs the ``tasks`` extra: ``pip install -e ".[tasks]"``.

Episode: the prompt is the question followed by ``"\\n"`` (``SEPARATOR``: byte-level models need a
separator between the question and the answer they write, and the built-in tasks of
``textenv.tasks`` end their prompts the same way); the agent writes one turn; the reward is
exactly the dataset's own ``score_answer(answer, entry)``, with ``answer`` the turn's text stripped
of surrounding whitespace, and the episode ends. ``reference(entry)`` is the dataset's answer and
``demonstration(rng, split)`` a one-turn SFT example ``(prompt, [(answer, None)])``.

Splits, disjoint by question text. reasoning-gym draws item ``i`` of seed ``S`` from
``Random(S + i)``, so datasets built with neighbouring seeds share items, and a small item space
repeats questions whatever the seeds (2-digit ``chain_sum`` repeats most test questions in a
training set, ``count_bits`` up to 255 all of them). Instead, the task generates one **pool** of
``pool_size`` items with seed ``pool_seed``, drops repeated questions (the first one is kept), and
assigns each distinct question to a split by a stable hash of its text (BLAKE2b of the UTF-8
bytes, never Python's ``hash()``): ``fractions`` (train, validation, test), 80/10/10 by default. A
question's split depends only on its text, not on the pool's size or seed, so the three splits
are disjoint by construction and the same in every process. ``reset`` draws uniformly among the
split's distinct questions (not with the generator's own frequencies). ``split_sizes`` holds the
distinct-question counts per split; a split with no question is an error at construction.

Small item spaces (``count_bits`` with ``max_n=10``: 10 questions) cannot hold a question out of
training. Pass ``disjoint=False`` to let every split use the whole pool (train and test then
overlap: a memorization check, not held-out evaluation). Pools are cached per (name, config,
pool_seed, pool_size) within the process. Generation costs about 15 microseconds an item for
the datasets below (0.2 to 0.4 s for the default 20,000 items, and 1.3 to 1.9 s to import
reasoning-gym once); slower generators (puzzles, ARC) want a smaller ``pool_size``.

Recommended configs for a tiny byte-level model (one token per UTF-8 byte), measured on the
default pool (reasoning-gym 0.1.25; prompt bytes include the ``"\\n"``; "const" is the mean
reward of always answering the most common answer)::

    dataset           config                                      prompt  answer  train/val/test
    spell_backward    min_word_len=3, max_word_len=5                  54       5  9339/1146/1219
    basic_arithmetic  min_terms=2, max_terms=2, min_digits=2,         21       4  10187/1287/1229
                      max_digits=2, operators=("+", "-"),
                      allow_parentheses=False, allow_negation=False
    letter_counting   min_words=2, max_words=3  (const "1": 0.72)     95       1  13915/1767/1746
    chain_sum         min_terms=2, max_terms=2, min_digits=2,         70       3  9167/1151/1164
                      max_digits=2
    count_bits        max_n=255  (const "4": 0.27)                    74       1  207/26/22

Notes on these datasets' scores (all reasoning-gym's, passed through unchanged):
``basic_arithmetic``, ``letter_counting`` and ``count_bits`` give 1.0 for the exact answer and
``len(answer) / len(response)`` when the response contains the answer ("11" for "1": 0.5).
``chain_sum`` compares decimals ("+028.0" for "28": 1.0). ``spell_backward`` is case-insensitive
and gives the fraction of positions that match; a response that extends the right answer scores
0.8 for words of 3 to 5 letters, but about 1.0 for some longer words (float rounding: the sum of
seven 1/7 is not 1.0; nine letters give 1.0000000000000002, which ``respond`` passes through, as
any score within 1e-9 of [0, 1]; further out is an error), one more reason to keep words short. ``basic_arithmetic`` with
``allow_parentheses=False`` draws its numbers from 0 to 10**max_digits inclusive (0 to 100 here).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
import math
import numbers
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")
SEPARATOR = "\n"  # written after the question: where the agent's answer starts
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)  # train, validation, test
DEFAULT_POOL_SIZE = 20_000
DEFAULT_POOL_SEED = 0
PREFIX = "rg:"  # the task's name is PREFIX + the dataset's name
_TASK_KEYS = ("seed", "size")  # config fields the task sets itself
_SCORE_TOLERANCE = 1e-9  # float rounding in a dataset's score (spell_backward sums 1/n n times)

# (name, canonical config, pool_seed, pool_size) -> (dataset, distinct entries in pool order)
_POOLS: dict[tuple[str, str, int, int], tuple[Any, tuple[dict[str, Any], ...]]] = {}


def _import_reasoning_gym() -> Any:
    try:
        return importlib.import_module("reasoning_gym")
    except ImportError as err:
        raise ImportError(
            "reasoning-gym tasks need the reasoning-gym package, which is not installed: "
            'pip install -e ".[tasks]" (or pip install reasoning-gym)'
        ) from err


def dataset_names() -> list[str]:
    """The names of reasoning-gym's registered datasets, sorted."""
    _import_reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def question_fraction(question: str) -> float:
    """A number in [0, 1) fixed by the question's text (BLAKE2b of its UTF-8 bytes): the same in
    every process and Python version."""
    digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2.0**53


def split_of(question: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """The split (one of ``SPLITS``) that ``question`` belongs to under ``fractions``."""
    u = question_fraction(question)
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def _check_fractions(fractions: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    if (
        len(values) != 3
        or not all(math.isfinite(f) and f >= 0 for f in values)
        or abs(sum(values) - 1.0) > 1e-9
    ):
        raise ValueError(
            f"fractions must be three non-negative numbers (train, validation, test) summing to "
            f"1, got {fractions!r}"
        )
    return values  # type: ignore[return-value]


def _config_fields(config_cls: type) -> dict[str, Any]:
    """The config dataclass's settable fields (without ``seed`` and ``size``) and defaults."""
    fields = {}
    for f in dataclasses.fields(config_cls):
        if f.name in _TASK_KEYS:
            continue
        if f.default is not dataclasses.MISSING:
            fields[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = f.default_factory()
        else:
            fields[f.name] = "(required)"
    return fields


def _check_name_and_config(name: Any, config: Any) -> tuple[str, dict[str, Any]]:
    from reasoning_gym.factory import DATASETS

    if isinstance(name, str) and name.startswith(PREFIX):
        name = name[len(PREFIX) :]
    if not isinstance(name, str) or name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown reasoning-gym dataset {name!r}{hint}; known datasets: {sorted(DATASETS)}"
        )
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(
            f"config for reasoning-gym dataset {name!r} must be a dict of the dataset's config "
            f"fields, got {type(config).__name__}: {config!r}"
        )
    fields = _config_fields(DATASETS[name][1])
    task_keys = [k for k in config if k in _TASK_KEYS]
    if task_keys:
        raise ValueError(
            f"config key(s) {task_keys} of reasoning-gym dataset {name!r} are set by the task: "
            f"pass pool_seed= and pool_size= to ReasoningGymTask instead"
        )
    unknown = [k for k in config if k not in fields]
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown} for reasoning-gym dataset {name!r}; its config "
            f"fields (with defaults): {fields}"
        )
    return name, dict(config)


def _pool(
    name: str, config: dict[str, Any], pool_seed: int, pool_size: int
) -> tuple[Any, tuple[dict[str, Any], ...]]:
    """The dataset and the pool's entries with distinct questions (cached per process)."""
    key = (name, json.dumps(config, sort_keys=True, default=repr), pool_seed, pool_size)
    if key in _POOLS:
        return _POOLS[key]
    rg = _import_reasoning_gym()
    try:
        dataset = rg.create_dataset(name, seed=pool_seed, size=pool_size, **config)
    except (AssertionError, TypeError, ValueError, KeyError) as err:
        from reasoning_gym.factory import DATASETS

        fields = _config_fields(DATASETS[name][1])
        raise ValueError(
            f"bad config {config} for reasoning-gym dataset {name!r}: "
            f"{type(err).__name__}: {err}; its config fields (with defaults): {fields}"
        ) from err
    seen: set[str] = set()
    entries = []
    for i in range(pool_size):
        try:
            entry = dataset[i]
        except (AssertionError, IndexError, KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"reasoning-gym dataset {name!r} with config {config} failed to generate item {i} "
                f"(pool_seed {pool_seed}): {type(err).__name__}: {err}; check the config's values"
            ) from err
        question = entry["question"]
        if not isinstance(question, str):
            raise TypeError(
                f"reasoning-gym dataset {name!r} item {i}: question is "
                f"{type(question).__name__}, not str"
            )
        if question not in seen:
            seen.add(question)
            entries.append(entry)
    _POOLS[key] = (dataset, tuple(entries))
    return _POOLS[key]


class ReasoningGymTask:
    """A text task over one reasoning-gym dataset (module docstring).

    Args:
        name: a registered reasoning-gym dataset (``dataset_names()``), e.g. ``"chain_sum"``;
            a leading ``"rg:"`` is accepted.
        config: the dataset config's fields as keyword arguments (not ``seed`` or ``size``).
        pool_size: how many items to generate for the pool the splits are drawn from.
        pool_seed: the generation seed of the pool (not the episodes' seed: that is the env's).
        fractions: the (train, validation, test) shares of the distinct questions.
        disjoint: False lets every split use the whole pool, for item spaces too small to split
            (the splits then overlap).

    Attributes: ``name`` (``"rg:" + dataset name``), ``config``, ``dataset`` (the reasoning-gym
    dataset), ``split_sizes`` (distinct questions per split).
    """

    def __init__(
        self,
        name: str,
        config: dict[str, Any] | None = None,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_seed: int = DEFAULT_POOL_SEED,
        fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
        disjoint: bool = True,
    ) -> None:
        _import_reasoning_gym()
        dataset_name, config = _check_name_and_config(name, config)
        if isinstance(pool_size, bool) or not isinstance(pool_size, numbers.Integral):
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if isinstance(pool_seed, bool) or not isinstance(pool_seed, numbers.Integral):
            raise ValueError(f"pool_seed must be an int, got {pool_seed!r}")
        self.fractions = _check_fractions(fractions)
        self.dataset_name = dataset_name
        self.name = PREFIX + dataset_name
        self.config = config
        self.pool_size, self.pool_seed, self.disjoint = int(pool_size), int(pool_seed), disjoint
        self.dataset, pool = _pool(dataset_name, config, self.pool_seed, self.pool_size)
        if disjoint:
            by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
            for entry in pool:
                by_split[split_of(entry["question"], self.fractions)].append(entry)
            self._splits = {s: tuple(v) for s, v in by_split.items()}
        else:
            self._splits = dict.fromkeys(SPLITS, pool)
        self.split_sizes = {s: len(v) for s, v in self._splits.items()}
        empty = [s for s in SPLITS if not self._splits[s]]
        if empty:
            raise ValueError(
                f"{self.name} {config}: split(s) {empty} are empty: the pool of {pool_size} items "
                f"(pool_seed {pool_seed}) has {len(pool)} distinct question(s), split "
                f"{self.split_sizes} by fractions {self.fractions}. The config's item space is "
                f"too small to hold questions out; widen the config, raise pool_size, or pass "
                f"disjoint=False (every split then uses the whole pool: train and test overlap)"
            )

    def entries(self, split: str) -> tuple[dict[str, Any], ...]:
        """The split's entries (distinct questions, pool order). Shared: do not modify."""
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; known splits: {list(SPLITS)}")
        return self._splits[split]

    def reset(self, rng: np.random.Generator, split: str) -> tuple[str, dict[str, Any]]:
        """A question of ``split`` drawn uniformly with ``rng``: the prompt (the question and
        ``SEPARATOR``) and the state, the reasoning-gym entry (shared: do not modify)."""
        entries = self.entries(split)
        entry = entries[int(rng.integers(len(entries)))]
        return entry["question"] + SEPARATOR, entry

    def respond(self, state: dict[str, Any], text: str) -> tuple[None, float, bool]:
        """The dataset's score of the stripped ``text``, unchanged; the episode ends. A score that
        is not a finite number within 1e-9 of [0, 1] is a RuntimeError."""
        score = self.dataset.score_answer(text.strip(), state)
        if (
            not isinstance(score, numbers.Real)
            or not math.isfinite(score)
            or not -_SCORE_TOLERANCE <= score <= 1 + _SCORE_TOLERANCE
        ):
            raise RuntimeError(
                f"{self.name}: score_answer({text.strip()!r}) for the question "
                f"{state.get('question')!r} returned {score!r}, not a number in [0, 1]"
            )
        return None, float(score), True

    def reference(self, state: dict[str, Any]) -> str | None:
        """The dataset's answer for the entry."""
        answer = state.get("answer")
        return None if answer is None else str(answer)

    def demonstration(
        self, rng: np.random.Generator, split: str
    ) -> tuple[str, list[tuple[str, str | None]]]:
        """A one-turn SFT example ``(prompt, [(answer, None)])``, its question drawn like
        ``reset`` (the same ``rng`` state gives the same question)."""
        prompt, entry = self.reset(rng, split)
        answer = self.reference(entry)
        if answer is None:
            raise ValueError(f"{self.name}: the question {entry['question']!r} has no answer")
        return prompt, [(answer, None)]

    def __repr__(self) -> str:
        sizes = "/".join(str(self.split_sizes[s]) for s in SPLITS)
        shared = "" if self.disjoint else ", disjoint=False"
        return (
            f"ReasoningGymTask({self.name}, {self.config}, train/validation/test {sizes}{shared})"
        )
