"""TextRLHFEnv: text generation as an ordinary Gymnasium RL problem."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from textenv.data import PromptDataset, make_dataset
from textenv.rewards import Reward, make_reward_fn, rewards_without_reference
from textenv.tasks import natural_reward, reference_for
from textenv.tokenizer import (
    PROMPT_FORMATS,
    check_text,
    end_of_turn_ids,
    load_tokenizer,
    make_decoder,
)
from textenv.tools import Dialogues, check_feedback, check_tools, make_dialogues

RENDER_MODES = ("ansi",)  # besides None
RESET_OPTIONS = ("prompt", "reference")


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
    feedback: Any = "score"  # "score" or a callable (prompt, responses, scores) -> str

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

    def build(self) -> tuple[Any, PromptDataset, Reward]:
        """Resolve the arguments into (tokenizer, dataset, reward)."""
        tokenizer, prompts = self.tokenizer, self.prompts
        if tokenizer is None and isinstance(prompts, PromptDataset):
            tokenizer = prompts.tokenizer
        else:
            tokenizer = load_tokenizer(tokenizer)
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
        return tokenizer, dataset, reward

    def dialogues(self, num_rows: int, tokenizer: Any) -> Dialogues | None:
        """The tool/turn bookkeeping of ``num_rows`` rows, or None when both are off."""
        return make_dialogues(
            num_rows,
            tokenizer,
            self.max_prompt_tokens,
            self.max_new_tokens,
            self.tools,
            self.max_tool_calls,
            self.max_turns,
            self.feedback,
        )


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


def make_observation_space(vocab_size: int, length: int, from_env: bool = False) -> spaces.Dict:
    """``Dict(input_ids=Box(0, V-1, (L,), int64), attention_mask=Box(0, 1, (L,), int8))``, plus
    ``from_env=Box(0, 1, (L,), int8)`` when the env writes tokens (tools or turns)."""
    boxes = {
        "input_ids": spaces.Box(0, vocab_size - 1, (length,), dtype=np.int64),
        "attention_mask": spaces.Box(0, 1, (length,), dtype=np.int8),
    }
    if from_env:
        boxes["from_env"] = spaces.Box(0, 1, (length,), dtype=np.int8)
    return spaces.Dict(boxes)


def resolve_prompt(
    dataset: PromptDataset, prompt: Any, reference: Any = None
) -> tuple[np.ndarray, np.ndarray, str, str | None]:
    """A forced prompt (dataset index or text) as (left-padded ids, mask, text, reference)."""
    if isinstance(prompt, (int, np.integer)) and not isinstance(prompt, (bool, np.bool_)):
        if not 0 <= prompt < len(dataset):
            raise ValueError(f"prompt index {prompt} out of range [0, {len(dataset)})")
        i = int(prompt)
        ref = dataset.references[i] if reference is None else reference
        return dataset.input_ids[i], dataset.attention_mask[i], dataset.prompts[i], ref
    if not isinstance(prompt, str):
        raise TypeError(
            f"a forced prompt must be a str or a dataset index (int), got {type(prompt).__name__}"
        )
    if reference is not None and not isinstance(reference, str):
        raise TypeError(f"a forced reference must be a str or None, got {type(reference).__name__}")
    if reference is not None:
        check_text(reference, "options reference", "the reference")
    i = dataset.index_of(prompt)
    if i is not None:  # a prompt of the dataset: its pre-tokenized ids and its reference
        ref = dataset.references[i] if reference is None else reference
        return dataset.input_ids[i], dataset.attention_mask[i], prompt, ref
    ids = dataset.encode(prompt, where="options prompt")
    if reference is None:  # e.g. a held-out "reverse: abc\n" forced on a train-split env
        reference = reference_for(prompt)
    P = dataset.max_prompt_tokens
    input_ids = np.full(P, dataset.tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros(P, dtype=np.int8)
    input_ids[P - len(ids) :], mask[P - len(ids) :] = ids, 1
    return input_ids, mask, prompt, reference


def check_references(reward: Reward, pairs: list[tuple[str, str | None]]) -> None:
    """Raise early if ``reward`` needs references and a forced (prompt, reference) has none."""
    if reward.needs_reference:
        for prompt, reference in pairs:
            if reference is None:
                raise ValueError(
                    f"reward {reward.name!r} needs a reference, but the forced prompt {prompt!r} "
                    "is not in the prompt set and no 'reference' was given in the reset options"
                )


def episode_stop_ids(tokenizer: Any, dataset: PromptDataset) -> tuple[int, ...]:
    """The tokens that end an episode: EOS, plus the chat template's end-of-turn token when the
    prompts are rendered with the chat template (``textenv.tokenizer.end_of_turn_ids``)."""
    return end_of_turn_ids(tokenizer) if dataset.chat else (tokenizer.eos_token_id,)


def check_action(action: Any, vocab_size: int) -> int:
    """Return ``action`` as an int, or raise TypeError/ValueError naming it and the valid range."""
    if isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu":
        action = action.item()
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
        raise TypeError(
            f"action must be an integer token id in [0, {vocab_size}), got "
            f"{type(action).__name__}: {action!r:.40}"
        )
    if not 0 <= action < vocab_size:
        raise ValueError(f"action {action} is out of range: token ids are in [0, {vocab_size})")
    return int(action)


@env_signature()
class TextRLHFEnv(gym.Env):
    """
    ## Description
    Text generation as a sequential decision problem, the RL view of RLHF. The state is a prompt
    plus the tokens generated so far; each action appends one token; the episode ends at EOS or
    at ``max_new_tokens``, and a reward function scores the finished text.

    ## Action Space
    ``Discrete(V)`` with ``V = len(tokenizer)`` (259 for the default byte tokenizer): the id of the
    next token. Out-of-range, negative, float, bool, None or string actions raise ``ValueError`` /
    ``TypeError`` and leave the state unchanged. Python and numpy integers are accepted.

    ## Observation Space
    With ``P = max_prompt_tokens``, ``N = max_new_tokens``, ``L = P + N``:
    ``Dict(input_ids=Box(0, V-1, (L,), int64), attention_mask=Box(0, 1, (L,), int8))``.
    ``input_ids[:P]`` is the prompt, LEFT-padded with the pad id (mask 0 on padding);
    ``input_ids[P + t]`` is the t-th generated token (mask 1), pad / mask 0 after it.
    With tools or several turns, the generated region also holds the env's tokens (tool results,
    feedback), and the Dict gains ``from_env=Box(0, 1, (L,), int8)``: 1 on every token the env
    wrote (the prompt, tool results, feedback), 0 on the agent's tokens and on padding. Each
    observation's attended tokens are a prefix of the next one's (see ``textenv.tools``).

    ## Rewards
    0.0 at every step but the last. At the last step, the score of ``reward_fn`` on
    ``(prompt, response, reference)``, where the response is the decoded generated text without
    EOS. With ``missing_eos_penalty=p``, a response that hits ``max_new_tokens`` without EOS gets
    ``score - p`` instead (a nudge to finish the text, as in TRL's ``missing_eos_penalty``).
    The final ``info`` holds ``prompt``, ``response``, ``reference``, ``score`` (the reward
    function's, before any penalty), ``reward_components`` (name -> float), ``eos`` and
    ``hit_length_limit``. A reward that ``wants_ended`` (e.g. ``reward_model``) is told whether
    the response ended with EOS or was cut at the limit (``textenv.rewards``).
    With tools or turns, the response is the last turn's text (tool results included); the
    episode's reward is the last turn's score, and the final ``info`` adds ``turn_scores``,
    ``responses`` and ``n_turns`` (``score_turn1``, ``score_turn2``, ... when ``max_turns > 1``),
    and with tools ``tool_calls`` ([(expression, "=result")]), ``n_tool_calls``, ``used_tool``.

    ## Starting State
    A prompt drawn uniformly from the prompt set with ``self.np_random``; ``reset(seed=...)``
    fixes the sequence of prompts. ``reset(options={"prompt": text_or_index})`` forces a prompt
    (``"reference"`` may be given too; a text found in the dataset gets its reference, and a
    built-in string-task prompt such as ``"reverse: abc\\n"`` its computed answer).

    ## Episode End
    - Termination: the action is EOS (the EOS token is part of the observation) or, for prompts
      rendered with a chat template, the template's end-of-turn token (``stop_ids``), or
      ``max_new_tokens`` tokens have been generated (``info["hit_length_limit"] = True``). The length
      limit is part of the task: the text is scored at that step, so nothing is bootstrapped.
    - Truncation: never (the env limits itself; it is registered without ``max_episode_steps``).

    ## Arguments
    ```python
    gym.make("TextRLHF-v0", tokenizer=None, prompts="reverse", split="train",
             reward_fn=None, max_new_tokens=32, max_prompt_tokens=32, render_mode=None,
             missing_eos_penalty=None, prompt_format="auto", tools=(), max_tool_calls=4,
             max_turns=1, feedback="score")
    ```
    All keyword-only; the same names, defaults and checks serve ``TextRLHFVectorEnv``
    (``TextEnvArgs``). An unknown name raises ``TypeError`` listing the allowed ones.

    - ``tokenizer``: None / ``"byte"`` (ByT5 bytes), a local tokenizer folder, or a tokenizer.
    - ``prompts``: a built-in task (``reverse``, ``sort``, ``copy_edit``, ``mixed``,
      ``continuation``), a ``PromptDataset``, a list of str / dicts, or a .json / .jsonl path.
    - ``split``: ``"train"``, ``"validation"`` or ``"test"`` for built-in tasks (``textenv.tasks``:
      disjoint; tune on validation, report test).
    - ``reward_fn``: a registry name, ``{"name": ..., **kwargs}``, ``{"weighted_sum": [...]}``,
      ``"module:function"``, a ``Reward`` or a callable (see ``textenv.rewards``). None (the
      default): a built-in task's natural reward (``textenv.tasks.TASK_REWARDS``: ``exact_answer``
      for ``calc``, ``repetition`` for ``continuation``, ``edit_distance`` for the string tasks),
      ``edit_distance`` for other prompts.
    - ``max_new_tokens``: the response length limit N (EOS included), an int >= 1.
    - ``max_prompt_tokens``: the prompt width P, an int >= 1; a longer prompt is a ``ValueError``,
      never truncated.
    - ``render_mode``: None or ``"ansi"`` (``render()`` returns prompt + text so far).
    - ``missing_eos_penalty``: None, or a number >= 0 subtracted from the final reward of a
      response that ends at ``max_new_tokens`` without EOS.
    - ``prompt_format``: ``"auto"`` (default: ``{"messages": [...]}`` records are rendered with the
      tokenizer's chat template when it has one, everything else is raw text), ``"chat"`` (every
      prompt through the chat template; a plain prompt becomes one user message) or ``"raw"``
      (the text, no template). ``info["response"]`` never holds template tokens.
    - ``tools``: tool names (``["calc"]``, with ``prompts="calc"``, scored by ``exact_answer``):
      when the agent's text since the env's last token ends with ``</calc>``, the env appends
      ``=RESULT`` (``textenv.tools``). ``max_tool_calls`` (an int >= 1) bounds the calls.
    - ``max_turns``: an int >= 1; an EOS ending turn t < max_turns makes the env append
      ``feedback`` (``"score"``: ``"\\n[score 0.62] again:\\n"``, or a callable
      ``(prompt, responses_so_far, scores) -> str``) and the episode goes on.

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(self, **kwargs: Any) -> None:
        self.args = args = TextEnvArgs.from_kwargs(type(self).__name__, kwargs)
        self.tokenizer, self.dataset, self.reward_fn = args.build()
        self.render_mode = args.render_mode
        self.missing_eos_penalty = args.missing_eos_penalty
        self.max_prompt_tokens, self.max_new_tokens = args.max_prompt_tokens, args.max_new_tokens
        self.vocab_size = len(self.tokenizer)
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.stop_ids = episode_stop_ids(self.tokenizer, self.dataset)
        self._decode = make_decoder(self.tokenizer)
        L = self.max_prompt_tokens + self.max_new_tokens
        self._dialogues = args.dialogues(1, self.tokenizer)  # None: no tools, one turn
        self.action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = make_observation_space(
            self.vocab_size, L, from_env=self._dialogues is not None
        )

        self._ids = np.full(L, self.pad_id, dtype=np.int64)  # (L,)
        self._mask = np.zeros(L, dtype=np.int8)  # (L,)
        self._from_env = np.zeros(L, dtype=np.int8)  # (L,) used with tools/turns only
        self._n_generated = 0
        self._prompt, self._reference = "", None
        self._needs_reset = True

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"input_ids": self._ids.copy(), "attention_mask": self._mask.copy()}
        if self._dialogues is not None:
            obs["from_env"] = self._from_env.copy()
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown reset options {sorted(unknown)}; allowed: {list(RESET_OPTIONS)}"
            )
        if "prompt" in options:
            ids, mask, prompt, reference = resolve_prompt(
                self.dataset, options["prompt"], options.get("reference")
            )
            check_references(self.reward_fn, [(prompt, reference)])
            self._prompt, self._reference = prompt, reference
        else:
            i = int(self.np_random.integers(len(self.dataset)))
            ids, mask = self.dataset.input_ids[i], self.dataset.attention_mask[i]
            self._prompt, self._reference = self.dataset.prompts[i], self.dataset.references[i]
        P = self.max_prompt_tokens
        self._ids[:P], self._ids[P:] = ids, self.pad_id
        self._mask[:P], self._mask[P:] = mask, 0
        self._n_generated = 0
        if self._dialogues is not None:
            self._from_env[:P], self._from_env[P:] = mask, 0
            self._dialogues.reset_rows(np.zeros(1, dtype=np.int64))
        self._needs_reset = False
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step(): the episode is over or never started")
        token = check_action(action, self.vocab_size)  # raises before any state change
        if self._dialogues is not None:
            return self._step_dialogue(token)
        P, n = self.max_prompt_tokens, self._n_generated
        eos = token in self.stop_ids
        hit_limit = n + 1 == self.max_new_tokens
        if eos or hit_limit:  # score before writing: a reward that raises changes nothing
            tokens = self._ids[P : P + n] if eos else np.append(self._ids[P : P + n], token)
            response = self._decode(tokens)  # the EOS token is not part of the response text
            ended = {"ended": [bool(eos)]} if self.reward_fn.wants_ended else {}
            total, parts = self.reward_fn.score(
                [self._prompt], [response], [self._reference], **ended
            )
        self._ids[P + n], self._mask[P + n] = token, 1
        self._n_generated += 1
        if not (eos or hit_limit):
            return self._obs(), 0.0, False, False, {}

        self._needs_reset = True
        reward = float(total[0]) - (0.0 if eos else self.missing_eos_penalty)
        info = {
            "prompt": self._prompt,
            "response": response,
            "reference": self._reference,
            "score": float(total[0]),
            "reward_components": {k: float(v[0]) for k, v in parts.items()},
            "eos": bool(eos),
            "hit_length_limit": bool(hit_limit and not eos),
        }
        return self._obs(), reward, True, False, info

    def _step_dialogue(
        self, token: int
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """``step`` with tools or turns: ``textenv.tools.Dialogues`` writes the agent's token and
        any env tokens (a tool result, a feedback text) and scores the turn that ends."""

        def score(rows: np.ndarray, responses: list[str], ended: np.ndarray) -> tuple:
            kwargs = {"ended": ended.tolist()} if self.reward_fn.wants_ended else {}
            k = len(responses)
            return self.reward_fn.score(
                [self._prompt] * k, responses, [self._reference] * k, **kwargs
            )

        n_gen = np.array([self._n_generated])
        out = self._dialogues.step(
            self._ids[None],
            self._mask[None],
            self._from_env[None],
            n_gen,
            np.zeros(1, dtype=np.int64),
            np.array([token]),
            [self._prompt],
            score,
        )
        self._n_generated = int(n_gen[0])
        if not out["finished"][0]:
            return self._obs(), 0.0, False, False, {}
        self._needs_reset = True
        eos = bool(out["eos"][0])
        total = float(out["score"][0])
        info = {
            "prompt": self._prompt,
            "response": out["response"][0],
            "reference": self._reference,
            "score": total,
            "reward_components": {k: float(v[0]) for k, v in out["parts"].items()},
            "eos": eos,
            "hit_length_limit": not eos,
        }
        for key, (values, has) in out["info"].items():
            if has[0]:
                info[key] = values[0]
        reward = total - (0.0 if eos else self.missing_eos_penalty)
        return self._obs(), reward, True, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        P = self.max_prompt_tokens
        text = self._decode(self._ids[P : P + self._n_generated])
        return self._prompt + text
