"""Reward functions: a batched protocol, built-ins, a registry by name, and weighted sums.

Modules: ``protocol`` (``Reward``, its checks and errors, the adapters of plain callables,
``WeightedSum``), ``registry`` (names, ``register_reward``, ``make_reward_fn``), ``rules`` (the
built-in rules), ``model`` (the ``reward_model`` reward and ``encode_for_reward_model``). Import
from ``textenv.rewards``.

Protocol: ``fn(prompts: list[str], responses: list[str], references: list[str | None])`` returns
an array of floats of shape ``(B,)``. Every reward built here is a ``Reward`` object with a
``name``; calling it checks the scores (numeric, finite, right shape) and names the reward function
and the sample on failure; an exception raised by the reward function itself is re-raised with the
reward's name and the sample in the message (same type where it can be rebuilt from a message,
else ``RewardFunctionError``), chained to the original. ``Reward.score(...)`` returns
``(total, components)`` in one evaluation, which the envs use to fill ``info["reward_components"]``.

Truncation: a reward that sets ``wants_ended = True`` also receives ``ended``, one bool per sample
(True: the response ended with EOS; False: it was cut at ``max_new_tokens``), as a keyword of
``compute(prompts, responses, references, ended=...)``. Both envs pass it, to such rewards only (a
weighted sum passes it on to the components that want it), so every other reward and every
per-sample callable keeps the three-argument protocol. A batched callable with a parameter named
``ended`` wants it too. ``ended=None`` (a direct call that does not say) means every response ended.
The ``reward_model`` reward wants it: it appends EOS only to responses that ended, so a cut response
is scored as unfinished (``encode_for_reward_model``).

Built-ins (``make_reward_fn("name")`` or ``{"name": ..., **kwargs}``):

==============  =============================================================  ============
name            score                                                          range
==============  =============================================================  ============
edit_distance   rapidfuzz normalized Levenshtein similarity to the reference    [0, 1]
repetition      distinct-n with a minimum length: unique character n-grams /    [0, 1]
                ``max(total n-grams, min_length - n + 1)`` (``n=3``,
                ``min_length=16``); 0 for texts shorter than n
length          ``len(response) / scale`` (``scale=32``); with ``target=t``:     [0, ...)
                ``-abs(len(response) - t) / scale``                             (..., 0]
reward_model    scalar logit of a local ``AutoModelForSequenceClassification``  real
                (kwarg ``path``), one batched forward pass, no grad
gold            the gold rule of ``textenv.gold`` (string-task prompts only):   [-0.5, 1.5]
                fit to the word's length + a vowel term
exact_answer    1.0 when the last integer of the response, outside tool calls   {0, 1}
                and their results (``<calc>...</calc>=...``), equals the
                reference (an integer), else 0.0
==============  =============================================================  ============
"""

from textenv.rewards.model import RewardModel, encode_for_reward_model
from textenv.rewards.protocol import (
    BatchedCallable,
    PerSample,
    Reward,
    RewardFunction,
    RewardFunctionError,
    WeightedSum,
    check_ended,
    check_scores,
    per_sample,
)
from textenv.rewards.registry import (
    make_reward_fn,
    register_reward,
    reward_names,
    rewards_without_reference,
)
from textenv.rewards.rules import (
    EditDistance,
    ExactAnswer,
    GoldReward,
    Length,
    Repetition,
    last_integer,
)

__all__ = [
    "BatchedCallable",
    "EditDistance",
    "ExactAnswer",
    "GoldReward",
    "Length",
    "PerSample",
    "Repetition",
    "Reward",
    "RewardFunction",
    "RewardFunctionError",
    "RewardModel",
    "WeightedSum",
    "check_ended",
    "check_scores",
    "encode_for_reward_model",
    "last_integer",
    "make_reward_fn",
    "per_sample",
    "register_reward",
    "reward_names",
    "rewards_without_reference",
]
