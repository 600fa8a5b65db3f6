"""Built-in prompt sets with reference solutions, generated deterministically from a seed.

Every string task draws words of 3 to 8 letters from the alphabet ``abcdefgh`` and writes the
prompt as ``"<op>: <word>\\n"``; the reference is the transformed word. Prompts fit in 32 bytes and
references (plus EOS) in 32 tokens, so a tiny byte-level GPT can learn them by SFT.

=============  ======================  ==========================================  ================
task           prompt                  reference                                   natural reward
=============  ======================  ==========================================  ================
reverse        ``"reverse: abcde\\n"`` ``"edcba"``                                 ``edit_distance``
sort           ``"sort: dbca\\n"``     ``"abcd"`` (letters in alphabetical order)  ``edit_distance``
copy_edit      ``"swap: abcde\\n"``    ``"ebcda"`` (first and last letter swapped) ``edit_distance``
mixed          any of the three above, the operation drawn per prompt              ``edit_distance``
continuation   ``"the red fox "``      ``None`` (open-ended)                       ``repetition``
calc           ``"What is 37*12?\\n"`` ``"444"`` (integer arithmetic, for tools)   ``exact_answer``
=============  ======================  ==========================================  ================

A task carries its natural reward (``TASK_REWARDS``): the env scores with it when no
``reward_fn`` is given (``calc`` with the exact answer, not the edit distance to ``"444"``).
Prompts that are not a built-in task default to ``edit_distance``.

``calc`` expressions combine two-digit numbers with ``+ - *`` and parentheses (``37*12``,
``(23+41)*17``, ``58*13-44``, ``15+27*33``): results a tiny model cannot compute in its head;
the split is decided by the expression's CRC32 like the words of the string tasks.

Splits: a string (word or continuation prompt) belongs to ``"test"`` when its CRC32 is 0 modulo
10, to ``"validation"`` when it is 5 modulo 10, else (4 in 5 strings) to ``"train"``. The split is
a property of the string, so the three sets are disjoint for any seeds, and held-out evaluation
uses words never seen in training. Tune hyperparameters (a KL target, a normalization, ...) on
``"validation"`` and report ``"test"`` once, for the chosen setting. ``"train"`` is the same set as
before validation existed (CRC32 not divisible by 5): the held-out fifth was split in two.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

ALPHABET = "abcdefgh"
MIN_LEN, MAX_LEN = 3, 8
SPLITS = ("train", "validation", "test")
HELD_OUT_MODULUS = 10  # crc32 % 10: 0 -> "test", 5 -> "validation", else "train"
_HELD_OUT = {0: "test", 5: "validation"}

# op name -> (prompt prefix, transformation)
STRING_OPS: dict[str, tuple[str, Callable[[str], str]]] = {
    "reverse": ("reverse", lambda s: s[::-1]),
    "sort": ("sort", lambda s: "".join(sorted(s))),
    "copy_edit": ("swap", lambda s: s[-1] + s[1:-1] + s[0] if len(s) > 1 else s),
}
TASK_NAMES = (*STRING_OPS, "mixed", "continuation", "calc")
CALC_FORMS = ("{a}*{b}", "({a}+{b})*{c}", "{a}*{b}-{c}", "{a}+{b}*{c}")
DEFAULT_SIZE = 1000  # prompts per string task when n is None
# each task's natural reward (a textenv.rewards registry name): what the env scores with when no
# reward_fn is given; DEFAULT_REWARD for prompts that are not a built-in task
TASK_REWARDS = {
    "reverse": "edit_distance",
    "sort": "edit_distance",
    "copy_edit": "edit_distance",
    "mixed": "edit_distance",
    "continuation": "repetition",  # no reference: distinct-3 with a minimum length
    "calc": "exact_answer",  # the last integer of the response equals the result
}
DEFAULT_REWARD = "edit_distance"

_ADJECTIVES = ("red", "old", "big", "shy", "odd", "wet", "sad", "new", "tiny", "calm", "wild")
_NOUNS = ("fox", "cat", "dog", "owl", "king", "ship", "bird", "tree", "girl", "robot", "moon")
_VERBS = ("saw", "made", "found", "said", "lost", "took", "met", "liked", "heard", "ran to")


def natural_reward(task: str | None) -> str:
    """The reward a built-in task is scored with when none is given (``TASK_REWARDS``), or
    ``DEFAULT_REWARD`` for other prompts (``task`` None)."""
    return TASK_REWARDS.get(task, DEFAULT_REWARD) if task is not None else DEFAULT_REWARD


def split_of(text: str) -> str:
    """Return the split (one of ``SPLITS``) that ``text`` belongs to."""
    return _HELD_OUT.get(zlib.crc32(text.encode("utf-8")) % HELD_OUT_MODULUS, "train")


def format_prompt(op: str, word: str) -> str:
    """The prompt of string op ``op`` (a key of ``STRING_OPS``) on ``word``."""
    return f"{STRING_OPS[op][0]}: {word}\n"


def solve(op: str, word: str) -> str:
    """The reference answer of string op ``op`` on ``word``."""
    if op not in STRING_OPS:
        raise ValueError(f"unknown string op {op!r}; known: {list(STRING_OPS)}")
    return STRING_OPS[op][1](word)


def calc_prompt(expression: str) -> str:
    """The prompt of the ``calc`` task on ``expression``."""
    return f"What is {expression}?\n"


def calc_expressions(split: str, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct random ``calc`` expressions of the given split."""
    expressions: dict[str, None] = {}  # ordered set
    while len(expressions) < n:
        form = CALC_FORMS[int(rng.integers(len(CALC_FORMS)))]
        a, b, c = (int(x) for x in rng.integers(11, 100, size=3))
        expression = form.format(a=a, b=b, c=c)
        if split_of(expression) == split:
            expressions[expression] = None
    return list(expressions)


def reference_for(prompt: str) -> str | None:
    """The reference of a string-task prompt (``"reverse: abc\\n"`` -> ``"cba"``) or of a calc
    prompt (``"What is 3*4?\\n"`` -> ``"12"``), else None."""
    if prompt.startswith("What is ") and prompt.endswith("?\n"):
        from textenv.tools import CalcError, calc

        try:
            return str(calc(prompt[len("What is ") : -2]))
        except CalcError:
            return None
    head, sep, rest = prompt.partition(": ")
    word = rest[:-1] if rest.endswith("\n") else ""
    for prefix, transform in STRING_OPS.values():
        if sep and head == prefix and word and word.isalpha() and word.islower():
            return transform(word)
    return None


def _check(name: str, split: str, n: int | None) -> None:
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; known tasks: {list(TASK_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {list(SPLITS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive int or None (task default), got {n!r}")


def _words(split: str, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct random words of the given split."""
    words: dict[str, None] = {}  # ordered set
    letters = np.array(list(ALPHABET))
    while len(words) < n:
        length = int(rng.integers(MIN_LEN, MAX_LEN + 1))
        word = "".join(letters[rng.integers(0, len(ALPHABET), size=length)])
        if split_of(word) == split:
            words[word] = None
    return list(words)


def continuation_prompts(split: str = "train") -> list[str]:
    """All open-ended continuation prompts of a split, e.g. ``"the red fox saw "``."""
    prompts = [f"the {a} {n} {v} " for a in _ADJECTIVES for n in _NOUNS for v in _VERBS]
    return [p for p in prompts if split_of(p) == split]


def make_task(
    name: str, split: str = "train", n: int | None = None, seed: int = 0
) -> list[dict[str, str | None]]:
    """Generate ``n`` prompts of built-in task ``name`` as dicts ``{"prompt", "reference"}``.

    Deterministic in ``(name, split, n, seed)``. ``n=None`` gives the default size (1000 for the
    string tasks, every prompt of the split for ``continuation``). Words are distinct within a call.
    """
    _check(name, split, n)
    rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{split}".encode())])
    if name == "continuation":
        prompts = continuation_prompts(split)
        if n is not None and n > len(prompts):
            raise ValueError(
                f"task 'continuation' has {len(prompts)} {split!r} prompts, asked for n={n}"
            )
        order = rng.permutation(len(prompts))[: n or len(prompts)]
        return [{"prompt": prompts[i], "reference": None} for i in order]
    n = DEFAULT_SIZE if n is None else int(n)
    if name == "calc":
        from textenv.tools import calc

        return [
            {"prompt": calc_prompt(e), "reference": str(calc(e))}
            for e in calc_expressions(split, n, rng)
        ]
    words = _words(split, n, rng)
    if name == "mixed":
        ops = [list(STRING_OPS)[i] for i in rng.integers(0, len(STRING_OPS), size=n)]
    else:
        ops = [name] * n
    return [
        {"prompt": format_prompt(op, w), "reference": solve(op, w)} for op, w in zip(ops, words)
    ]
