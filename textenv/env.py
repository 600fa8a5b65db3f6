"""TextRLHFEnv: text generation as an ordinary Gymnasium RL problem.

The env is a one-row ``TextBatch`` (``textenv.batch``), the batched implementation that
``TextRLHFVectorEnv`` is too: this module adds the single-env API (a scalar action, a Python
float reward and bools, a plain info dict).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from textenv.args import ENV_ARGUMENTS, RENDER_MODES, TextEnvArgs, env_signature
from textenv.batch import Finished, TextBatch

__all__ = ["ENV_ARGUMENTS", "RESET_OPTIONS", "TextEnvArgs", "TextRLHFEnv", "check_action"]

RESET_OPTIONS = ("prompt", "reference")


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
class TextRLHFEnv(TextBatch, gym.Env):
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
    With tools, turns or a task, the response is the last turn's text (tool results included);
    each turn's reward is paid as ``reward_placement`` says (the prompt sets: the last turn's
    score at the end; a task: each turn's reward at the token that ended it), ``score`` is the
    episode's (the turns' rewards summed; the last turn's with ``"last"``), and the final
    ``info`` adds ``turn_scores`` (each turn's reward), ``responses`` (each turn's text) and
    ``n_turns`` (``score_turn1``, ``score_turn2``, ... when ``max_turns > 1``), and with tools
    ``tool_calls`` ([(argument, "=result")]), ``n_tool_calls``, ``used_tool``.

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
             max_turns=1, feedback="score", task=None, task_kwargs=None,
             reward_placement=None)
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
    - ``tools``: tool names and functions (``["calc"]``, with ``prompts="calc"``, scored by
      ``exact_answer``): when the agent's text since the env's last token ends with
      ``</calc>``, the env appends ``=RESULT`` (``textenv.tools``); a function
      ``fn(argument: str) -> str`` is a tool whose tag is its name (``<fn>ARG</fn>`` ->
      ``"=" + fn(ARG)``). ``max_tool_calls`` (an int >= 1) bounds the calls.
    - ``max_turns``: an int >= 1; an EOS ending turn t < max_turns makes the env append
      ``feedback`` and the episode goes on: ``"score"`` (``"\\n[score 0.62] again:\\n"``),
      ``"mask"`` (the right characters at their places, ``"\\n[ol_e_] again:\\n"``),
      ``"constant"`` (``"\\n[try again]\\n"``, a control) or a callable
      ``(prompt, responses_so_far, scores) -> str`` (with a ``reference`` parameter it also
      gets the prompt's reference).
    - ``task``: a text task instead of the prompt set (``textenv.text_task``): any object with
      ``reset(rng, split) -> (prompt, state)`` and ``respond(state, text) -> (reply | None,
      reward, done)``, or ``"rg:NAME"`` (reasoning-gym; also as ``prompts="rg:NAME"``),
      ``"ta:GAME-v0"`` (TextArena), ``"package.module:attr"``. The task draws the prompts and
      scores each turn; its replies become env-written tokens. ``prompts``, ``reward_fn``,
      ``max_turns`` and ``feedback`` stay unset then.
    - ``task_kwargs``: the config of a task given by name (a reasoning-gym dataset's config,
      a TextArena game's arguments, a class's keyword arguments).
    - ``reward_placement``: where each turn's reward is paid: ``"turn"`` (at the agent token that
      ended the turn; the default for tasks), ``"final"`` (summed at the episode's last step) or
      ``"last"`` (only the last turn's, at the end; the default for the prompt sets, whose
      retries are judged by the final try). None: the task's default.

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(self, **kwargs: Any) -> None:
        self.args = args = TextEnvArgs.from_kwargs(type(self).__name__, kwargs)
        TextBatch.__init__(self, 1, args)
        self.render_mode = args.render_mode
        self.action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = self._row_observation_space()
        self._needs_reset = True

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"input_ids": self._ids[0].copy(), "attention_mask": self._mask[0].copy()}
        if self._writes_tokens:
            obs["from_env"] = self._from_env[0].copy()
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
            forced = ([options["prompt"]], [options.get("reference")])
            self._start_rows(None, self.np_random, *forced)
        else:
            self._start_rows(None, self.np_random)
        self._needs_reset = False
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step(): the episode is over or never started")
        token = check_action(action, self.vocab_size)  # raises before any change
        done = self._advance(np.array((token,)))
        if done is None:
            return self._obs(), 0.0, False, False, {}
        if not len(done.rows):  # a turn ended, the episode goes on: its reward ("turn")
            return self._obs(), float(done.paid[0]), False, False, {}
        self._needs_reset = True
        return self._obs(), float(done.rewards[0]), True, False, self._final_info(done)

    def _final_info(self, done: Finished) -> dict[str, Any]:
        """The info of the episode's last step, from the batch's one finished row."""
        eos = bool(done.eos[0])
        info = {
            "prompt": self._prompts[0],
            "response": done.responses[0],
            "reference": self._references[0],
            "score": float(done.score[0]),
            "reward_components": {k: float(v[0]) for k, v in done.parts.items()},
            "eos": eos,
            "hit_length_limit": not eos,
        }
        for key, (values, has) in done.turns.items():
            if has[0]:
                info[key] = values[0]
        return info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return self._row_text(0)
