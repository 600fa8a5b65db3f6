"""The built-in prompt sets as a text task: ``PromptTask``.

Without ``task=``, TextRLHF-v0 steps a ``PromptTask``: a prompt set (``textenv.data``) scored by a
reward function (``textenv.rewards``), with ``max_turns`` and ``feedback`` for retries. It is a text
task like any other (``textenv.text_task``: ``reset``, ``respond``), so the env has one step path;
it adds ``respond_batch``, which scores every turn that ends at a step in ONE reward call (what a
neural reward model needs), and the env's fast reset draws its prompts from the pre-tokenized
dataset.

Rewards: each turn's reward is the reward function's score of that turn. The env pays the LAST
turn's score at the episode's end (``reward_placement="last"``, the default for prompt sets), so
a retry is judged by its final answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textenv.data import PromptDataset
from textenv.rewards import Reward
from textenv.tokenizer import check_text

Feedback = Callable[..., str]


def score_feedback(prompt: str, responses: list[str], scores: list[float]) -> str:
    """``feedback="score"``: the last turn's score, e.g. ``"\\n[score 0.62] again:\\n"``."""
    return f"\n[score {scores[-1]:.2f}] again:\n"


def mask_feedback(
    prompt: str, responses: list[str], scores: list[float], reference: str | None
) -> str:
    """``feedback="mask"``: which characters of the last answer are right, Wordle-style. One
    slot per character of the reference: the character where the answer has it at the same
    position, ``_`` elsewhere, e.g. ``"\\n[ol_e_] again:\\n"`` for reference ``olleh`` and answer
    ``olxeo`` (a ``+`` at the end: the answer was longer). It tells the right length and where the answer went wrong; the score alone does not.
    Needs a reference (``ValueError`` otherwise)."""
    if reference is None:
        raise ValueError(f"feedback 'mask' needs a reference; prompt {prompt!r:.60} has none")
    answer = responses[-1]
    slots = "".join(
        c if i < len(answer) and answer[i] == c else "_" for i, c in enumerate(reference)
    )
    if len(answer) > len(reference):
        slots += "+"  # the answer was too long
    return f"\n[{slots}] again:\n"


def constant_feedback(prompt: str, responses: list[str], scores: list[float]) -> str:
    """``feedback="constant"``: the same text after every turn (``"\\n[try again]\\n"``). The
    control for the other feedbacks: a second turn that beats the first with it did not learn
    from the feedback's content."""
    return "\n[try again]\n"


FEEDBACKS: dict[str, Feedback] = {
    "score": score_feedback,
    "mask": mask_feedback,
    "constant": constant_feedback,
}


def check_feedback(feedback: Any) -> Feedback:
    """A feedback name (``FEEDBACKS``) or a callable ``(prompt, responses, scores) -> str``; one
    with a ``reference`` parameter also gets the prompt's reference (``mask`` does)."""
    if callable(feedback):
        return feedback
    if isinstance(feedback, str) and feedback in FEEDBACKS:
        return FEEDBACKS[feedback]
    raise ValueError(
        f"feedback must be one of {list(FEEDBACKS)} or a callable (prompt, responses, scores) -> "
        f"str, got {feedback!r}"
    )


def give_feedback(
    feedback: Feedback, prompt: str, responses: list[str], scores: list[float],
    reference: str | None,
) -> str:  # fmt: skip
    """Call ``feedback``, with ``reference=`` when it takes it (``wants_reference``); a result
    that is not a str is a TypeError."""
    extra = {"reference": reference} if wants_reference(feedback) else {}
    reply = feedback(prompt, responses, scores, **extra)
    if not isinstance(reply, str):
        raise TypeError(f"feedback must return a str, got {type(reply).__name__}")
    return reply


def wants_reference(feedback: Feedback) -> bool:
    """Whether ``feedback`` takes the reference (a parameter named ``reference``)."""
    try:
        return "reference" in inspect.signature(feedback).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


@dataclass
class PromptState:
    """One episode of a ``PromptTask``: its prompt, reference, and each ended turn's text and
    score."""

    prompt: str
    reference: str | None
    texts: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


class PromptTask:
    """A prompt set scored by a reward function, with ``max_turns`` tries and ``feedback``
    between them (a turn that ends with EOS before the last gets the feedback text).

    ``dataset``: a ``PromptDataset``; ``reward_fn``: a ``Reward``; ``max_turns`` >= 1;
    ``feedback``: ``(prompt, responses_so_far, scores) -> str``.
    """

    name = "prompts"
    default_placement = "last"

    def __init__(
        self,
        dataset: PromptDataset,
        reward_fn: Reward,
        max_turns: int = 1,
        feedback: Feedback = score_feedback,
    ) -> None:
        self.dataset, self.reward_fn = dataset, reward_fn
        self.max_turns, self.feedback = max_turns, feedback

    def reset(self, rng: np.random.Generator, split: str) -> tuple[str, PromptState]:
        """A prompt drawn uniformly from the dataset (``split`` chose the dataset already)."""
        i = int(rng.integers(len(self.dataset)))
        prompt = self.dataset.prompts[i]
        return prompt, PromptState(prompt, self.dataset.references[i])

    def reference(self, state: PromptState) -> str | None:
        return state.reference

    def respond(self, state: PromptState, text: str) -> tuple[str | None, float, bool]:
        """One row of ``respond_batch`` (the turn counts as ended with EOS)."""
        replies, rewards, dones, _ = self.respond_batch([state], [text], np.ones(1, dtype=bool))
        return replies[0], float(rewards[0]), bool(dones[0])

    def respond_batch(
        self, states: list[PromptState], texts: list[str], ended: np.ndarray
    ) -> tuple[list[str | None], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The k turns that end at one step, scored in one reward call: (replies, rewards (k,),
        done (k,) bool, reward components {name: (k,)}). ``ended`` (k,) bool: the turn ended
        with EOS (else at the length limit: no feedback, and a reward that ``wants_ended`` is
        told)."""
        prompts = [s.prompt for s in states]
        references = [s.reference for s in states]
        kwargs = {"ended": ended.tolist()} if self.reward_fn.wants_ended else {}
        scores, parts = self.reward_fn.score(prompts, texts, references, **kwargs)
        k = len(states)
        if self.max_turns == 1:
            return [None] * k, scores, np.ones(k, dtype=bool), parts
        replies: list[str | None] = []
        for state, text, score, eos in zip(states, texts, scores.tolist(), ended.tolist()):
            state.texts.append(text)
            state.scores.append(score)
            reply = None
            if eos and len(state.scores) < self.max_turns:
                reply = give_feedback(
                    self.feedback, state.prompt, list(state.texts), list(state.scores),
                    state.reference,
                )  # fmt: skip
                check_text(reply, f"feedback for {state.prompt!r:.60}", "the feedback text")
            replies.append(reply)
        done = np.array([r is None for r in replies], dtype=bool)
        return replies, scores, done, parts
