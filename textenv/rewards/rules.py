"""The built-in reward rules: ``edit_distance``, ``repetition``, ``length``, ``gold``,
``exact_answer`` (the table in ``textenv.rewards``)."""

from __future__ import annotations

import re

import numpy as np
from rapidfuzz.distance import Levenshtein

from textenv.gold import gold_score
from textenv.rewards.protocol import Reward, _named, _sample
from textenv.tools import TOOL_SPAN


class EditDistance(Reward):
    """Normalized Levenshtein similarity to the reference (rapidfuzz), in [0, 1]; 1 = exact."""

    name = "edit_distance"
    needs_reference = True

    def compute(self, prompts, responses, references):
        for i, ref in enumerate(references):
            if ref is None:
                raise _named(
                    ValueError(
                        f"reward function 'edit_distance' needs a reference, but "
                        f"{_sample(prompts, responses, i)} has reference None; use prompts with "
                        "references (e.g. the 'reverse' task) or a reward that needs none "
                        f"{_rewards_without_reference()}"
                    )
                )
        sim = Levenshtein.normalized_similarity
        return np.fromiter(
            (sim(r, ref) for r, ref in zip(responses, references)), np.float64, len(responses)
        )


class Repetition(Reward):
    """Distinct-n of the response with a minimum length, in [0, 1] (1 = long and no repeats).

    ``unique n-grams / max(total n-grams, min_length - n + 1)`` over characters. Plain distinct-n
    (``min_length=1``) gives 1.0 to any text of exactly n characters, so a policy trained on it
    learns to stop early; the minimum length makes short texts score proportionally less.
    """

    name = "repetition"

    def __init__(self, n: int = 3, min_length: int = 16) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"repetition: n must be an int >= 1, got {n!r}")
        if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < n:
            raise ValueError(f"repetition: min_length must be an int >= n={n}, got {min_length!r}")
        self.n, self.min_ngrams = n, min_length - n + 1

    def compute(self, prompts, responses, references):
        out = np.zeros(len(responses))
        n = self.n
        for i, r in enumerate(responses):
            total = len(r) - n + 1
            if total > 0:
                out[i] = len({r[j : j + n] for j in range(total)}) / max(total, self.min_ngrams)
        return out


class Length(Reward):
    """``len(response) / scale``, or ``-abs(len(response) - target) / scale`` with a target."""

    name = "length"

    def __init__(self, target: int | None = None, scale: float = 32.0) -> None:
        if target is not None and (
            isinstance(target, bool) or not isinstance(target, int) or target < 0
        ):
            raise ValueError(f"length: target must be None or an int >= 0, got {target!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"length: scale must be a number > 0, got {scale!r}")
        self.target, self.scale = target, float(scale)

    def compute(self, prompts, responses, references):
        lengths = np.fromiter((len(r) for r in responses), np.float64, len(responses))
        if self.target is None:
            return lengths / self.scale
        return -np.abs(lengths - self.target) / self.scale


class GoldReward(Reward):
    """The gold rule (``textenv.gold.gold_score``) as a batched reward, registered as ``gold``.

    Only for string-task prompts ``"<op>: <word>\\n"``; as a weight-0 component of a weighted sum
    it is logged in ``info["reward_components"]["gold"]`` without changing the reward.
    """

    name = "gold"

    def compute(self, prompts, responses, references):
        return np.array([gold_score(p, r) for p, r in zip(prompts, responses)], dtype=np.float64)


_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits: `\d` also reads e.g. Arabic-Indic ones


def last_integer(response: str) -> int | None:
    """The last integer of ``response`` outside tool calls and their results, or None."""
    numbers = _INTEGER.findall(TOOL_SPAN.sub(" ", response))
    return int(numbers[-1]) if numbers else None


class ExactAnswer(Reward):
    """1.0 when the last integer of the response (tool calls and results left out) equals the
    reference, else 0.0 (the ``calc`` task; ``info["tool_calls"]`` lists the calls)."""

    name = "exact_answer"
    needs_reference = True

    def compute(self, prompts, responses, references):
        scores = np.zeros(len(responses))
        for i, (response, ref) in enumerate(zip(responses, references)):
            if ref is None or not _INTEGER.fullmatch(ref.strip()):
                raise _named(
                    ValueError(
                        f"reward function 'exact_answer' needs an integer reference, but "
                        f"{_sample(prompts, responses, i)} has reference {ref!r}; use the 'calc' "
                        "task or prompts with integer references"
                    )
                )
            scores[i] = float(last_integer(response) == int(ref))
        return scores


def _rewards_without_reference() -> list[str]:
    from textenv.rewards.registry import rewards_without_reference  # the registry imports us

    return rewards_without_reference()
