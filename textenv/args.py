"""The arguments both TextRLHF envs take: ``TextEnvArgs``, their one definition, with the checks.

``TextRLHFEnv`` takes exactly these; ``TextRLHFVectorEnv`` adds ``num_envs`` and ``autoreset_mode``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from textenv.data import PromptDataset, make_dataset
from textenv.prompt_task import PromptTask, check_feedback, score_feedback
from textenv.rewards import make_reward_fn, rewards_without_reference
from textenv.tasks import natural_reward
from textenv.text_task import is_task_spec, make_text_task
from textenv.tokenizer import PROMPT_FORMATS, load_tokenizer
from textenv.tools import check_tools
from textenv.turns import REWARD_PLACEMENTS

RENDER_MODES = ("ansi",)  # besides None


# The most tokens (prompt, response), rows, tool calls or turns an argument may ask for: longer
# than any model's context, and far from the sizes at which the (rows, tokens) arrays overflow
# (numpy's "maximum allowed dimension exceeded", naming no argument). A tool call or a turn takes
# at least one token, so those are bounded by max_new_tokens anyway.
MAX_SIZE = 2**20


def check_positive_int(name: str, value: Any, most: int = MAX_SIZE) -> int:
    """``value`` as an int in [1, most], or TypeError/ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if not 1 <= value <= most:
        raise ValueError(f"{name} must be an int in [1, {most}], got {value}")
    return int(value)


def check_missing_eos_penalty(value: Any) -> float:
    """The penalty for a response that hits ``max_new_tokens`` without EOS, as a float >= 0."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"missing_eos_penalty must be None or a number >= 0, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(
            f"missing_eos_penalty must be None or a finite number >= 0, got {value!r} "
            "(it is subtracted from the score)"
        )
    return float(value)


def check_render_mode(render_mode: Any) -> str | None:
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(
            f"render_mode {render_mode!r} not supported; allowed: {[None, *RENDER_MODES]} (SB3's "
            "make_vec_env defaults to 'rgb_array': pass env_kwargs={'render_mode': None})"
        )
    return render_mode


def unknown_arguments_error(owner: str, unknown: list[str], allowed: Sequence[str]) -> TypeError:
    """The TypeError for keyword arguments ``owner`` does not take, naming them and the allowed."""
    hints = [
        f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
        for name in unknown
        for close in [difflib.get_close_matches(name, allowed, n=1)]
    ]
    plural = "s" if len(unknown) > 1 else ""
    return TypeError(
        f"{owner} got unknown keyword argument{plural} {', '.join(hints)}; allowed: {list(allowed)}"
    )


@dataclass
class TextEnvArgs:
    """The arguments of ``TextRLHFEnv``, which ``TextRLHFVectorEnv`` shares (it adds ``num_envs`` and
    ``autoreset_mode``): their one definition, with the defaults and the checks.

    The fields are documented in ``TextRLHFEnv``'s Arguments section. Construction checks the plain
    values (``max_new_tokens``/``max_prompt_tokens`` ints >= 1, ``render_mode``,
    ``missing_eos_penalty``, which becomes a float, 0.0 for None); ``build()`` loads the tokenizer,
    the prompt set and the reward function. ``from_kwargs`` rejects unknown names.
    """

    tokenizer: Any = None
    prompts: Any = "reverse"
    split: str = "train"
    reward_fn: Any = None  # None: the task's natural reward (textenv.tasks.TASK_REWARDS)
    max_new_tokens: int = 32
    max_prompt_tokens: int = 32
    render_mode: str | None = None
    missing_eos_penalty: float | None = None
    prompt_format: str = "auto"
    tools: Any = ()  # tool names, e.g. ["calc"] (textenv.tools)
    max_tool_calls: int = 4
    max_turns: int = 1
    feedback: Any = "score"  # "score", "mask", "constant" or a callable (prompt, responses, scores)
    task: Any = None  # a text task (textenv.text_task), "rg:NAME", "ta:GAME-v0", "module:attr"
    task_kwargs: dict[str, Any] | None = None  # the config of a task given by name
    reward_placement: str | None = None  # "turn" | "final" | "last"; None: the task's default

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"prompt_format must be one of {list(PROMPT_FORMATS)}, got {self.prompt_format!r}"
            )
        self.tools = check_tools(self.tools)
        self.max_tool_calls = check_positive_int("max_tool_calls", self.max_tool_calls)
        self.max_turns = check_positive_int("max_turns", self.max_turns)
        self.feedback = check_feedback(self.feedback)
        self.max_new_tokens = check_positive_int("max_new_tokens", self.max_new_tokens)
        self.max_prompt_tokens = check_positive_int("max_prompt_tokens", self.max_prompt_tokens)
        self.render_mode = check_render_mode(self.render_mode)
        self.missing_eos_penalty = check_missing_eos_penalty(self.missing_eos_penalty)
        if self.reward_placement is not None and self.reward_placement not in REWARD_PLACEMENTS:
            raise ValueError(
                f"reward_placement must be one of {list(REWARD_PLACEMENTS)} or None, got "
                f"{self.reward_placement!r}"
            )
        if self.task_kwargs is not None and not isinstance(self.task_kwargs, dict):
            raise TypeError(f"task_kwargs must be a dict or None, got {self.task_kwargs!r:.60}")
        if is_task_spec(self.prompts):  # prompts="rg:spell_backward": the suite's task
            if self.task is not None:
                raise ValueError(f"give the task once: prompts={self.prompts!r} or task=, not both")
            self.task = self.prompts
        if self.task is not None:
            self._check_task_arguments()

    @classmethod
    def from_kwargs(
        cls, owner: str, kwargs: dict[str, Any], extra: Sequence[str] = ()
    ) -> TextEnvArgs:
        """Check ``kwargs`` against the field names (``extra``: the owner's own arguments, listed
        in the error) and build the arguments."""
        unknown = [name for name in kwargs if name not in ENV_ARGUMENTS]
        if unknown:
            raise unknown_arguments_error(owner, unknown, [*extra, *ENV_ARGUMENTS])
        return cls(**kwargs)

    def _check_task_arguments(self) -> None:
        """With ``task``, the built-in prompt set's own arguments must keep their defaults."""
        own = {"prompts": "reverse", "max_turns": 1, "feedback": score_feedback}
        given = [name for name, default in own.items() if getattr(self, name) != default]
        if self.prompts == self.task:  # prompts="rg:NAME" named the task
            given.remove("prompts")
        if given:
            raise ValueError(
                f"{given} configure the built-in prompt sets; a task (task={self.task!r:.60}) "
                "draws its own prompts and decides its own turns"
            )
        rg_default = isinstance(self.task, str) and self.task.startswith("rg:")
        if self.reward_fn is not None and not (rg_default and self.reward_fn == "rg"):
            raise ValueError(
                f"reward_fn={self.reward_fn!r}: a task scores its own turns (respond returns the "
                "reward); leave reward_fn unset (for 'rg:' tasks 'rg', reasoning-gym's own "
                "score_answer, is the default)"
            )

    def build(self) -> tuple[Any, Any]:
        """Resolve the arguments into (tokenizer, task): a ``PromptTask`` over the prompt set and
        the reward function, or the ``task`` (``textenv.text_task.make_text_task``)."""
        tokenizer, prompts = self.tokenizer, self.prompts
        if tokenizer is None and isinstance(prompts, PromptDataset):
            tokenizer = prompts.tokenizer
        else:
            tokenizer = load_tokenizer(tokenizer)
        if self.task is not None:
            return tokenizer, make_text_task(self.task, self.task_kwargs)
        dataset = make_dataset(
            prompts, tokenizer, self.max_prompt_tokens, self.split, self.prompt_format
        )
        # a built-in task carries its own rule (calc: the exact answer); other prompts: the default
        spec = self.reward_fn if self.reward_fn is not None else natural_reward(dataset.task)
        reward = make_reward_fn(spec)
        if reward.needs_reference and None in dataset.references:
            i = dataset.references.index(None)
            raise ValueError(
                f"reward {reward.name!r} needs references, but {dataset.locations[i]} (prompt "
                f"{dataset.prompts[i]!r}) has none; use prompts with references or a reward that "
                f"needs none ({rewards_without_reference()} or a callable)"
            )
        return tokenizer, PromptTask(dataset, reward, self.max_turns, self.feedback)

    @property
    def writes_tokens(self) -> bool:
        """Whether the env may write tokens of its own (tool results, feedback, a task's
        replies): then the observation has ``from_env`` and the final infos describe the turns
        and tool calls."""
        return bool(self.tools) or self.max_turns > 1 or self.task is not None


ENV_ARGUMENTS = tuple(f.name for f in fields(TextEnvArgs))


def env_signature(*own: inspect.Parameter) -> Callable[[type], type]:
    """Class decorator: ``__init__(self, *own, **kwargs)`` shows the ``TextEnvArgs`` fields as its
    keyword arguments in ``help()`` and ``inspect.signature`` (the code takes them as ``**kwargs``)."""

    def decorate(cls: type) -> type:
        keyword = inspect.Parameter.KEYWORD_ONLY
        shared = [
            inspect.Parameter(f.name, keyword, default=f.default) for f in fields(TextEnvArgs)
        ]
        self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        cls.__init__.__signature__ = inspect.Signature([self, *own, *shared])
        return cls

    return decorate
