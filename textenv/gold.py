"""The gold rule: a known "human labeller" for string-task prompts, registered as reward ``gold``.

Real RLHF labels pairs with people. Here a *gold rule* plays the person, so that a learned reward
model can be checked against the truth and PPO's over-optimization of it can be watched
(the preference pairs of docs/rlhf_pipeline.md are labelled with it).

Gold rule (string-task prompts ``"<op>: <word>\\n"``, e.g. the ``reverse`` task), two terms::

    gold = length_fit + vowel_term
    length_fit = max(0, 1 - |len(response) - len(word)| / len(word))           in [0, 1]
    vowel_term = min(v, 0.5) - 2 * max(0, v - 0.5),  v = share of a/e letters   in [-0.5, 0.5]

The labeller wants an answer as long as the word, and likes vowels (``a``, ``e``) up to half of
the letters but dislikes vowel-heavy answers. No other registry reward computes this (``length``
with a target is closest, but its target is a constant, not the prompt's word length, and it
ignores the letters). The vowel penalty is a deliberate trap: only about 11% of the SFT samples
have a vowel share above 0.5, so the preference data show it rarely and a reward model learns
mostly "more vowels is better". A policy optimized against that proxy without a KL penalty buys
proxy reward with vowels that the gold punishes: over-optimization.

As an env reward: ``reward_fn="gold"``, or ``{"name": "gold", "weight": 0.0}`` in a weighted sum,
which logs it as ``info["reward_components"]["gold"]`` without changing the reward.
"""

from __future__ import annotations

from textenv.tasks import STRING_OPS

VOWELS = frozenset("ae")
VOWEL_CAP, VOWEL_PENALTY = 0.5, 2.0
_OP_BY_PREFIX = {prefix: op for op, (prefix, _) in STRING_OPS.items()}


def parse_prompt(prompt: str) -> tuple[str, str]:
    """``"reverse: abc\\n"`` -> ``("reverse", "abc")``; ValueError for any other form."""
    head, sep, word = prompt.rstrip("\n").partition(": ")
    if not sep or head not in _OP_BY_PREFIX or not word:
        raise ValueError(
            f"gold reward: prompt {prompt!r} is not a string-task prompt '<op>: <word>\\n' with op "
            f"in {sorted(_OP_BY_PREFIX)}"
        )
    return _OP_BY_PREFIX[head], word


def vowel_share(response: str) -> float:
    """Share of the gold rule's vowels (``a``, ``e``) among the characters; 0.0 for ``""``."""
    return sum(c in VOWELS for c in response) / len(response) if response else 0.0


def gold_score(prompt: str, response: str) -> float:
    """The gold reward of one (prompt, response): length fit + vowel term (module docstring)."""
    _, word = parse_prompt(prompt)
    n = len(word)
    length_fit = max(0.0, 1.0 - abs(len(response) - n) / n)
    v = vowel_share(response)
    vowel_term = min(v, VOWEL_CAP) - VOWEL_PENALTY * max(0.0, v - VOWEL_CAP)
    return length_fit + vowel_term
