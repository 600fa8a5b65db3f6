"""TextRLHFVectorEnv: N text episodes stepped together in numpy, finished rows scored in one call.

The rows are a ``TextBatch`` (``textenv.batch``), the implementation ``TextRLHFEnv`` is a view
over: this module adds the vector API (lockstep or next-step autoreset, reset options, batched
action checks, Gymnasium-style vectorized infos).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.args import RENDER_MODES, TextEnvArgs, check_positive_int, env_signature
from textenv.batch import Finished, TextBatch

NEXT_STEP_NAMES = ("next_step", AutoresetMode.NEXT_STEP.value)  # "next_step", "NextStep"
VECTOR_RESET_OPTIONS = ("prompts", "references", "repeat")
OWN_ARGUMENTS = ("num_envs", "autoreset_mode")  # the vector env's arguments besides TextEnvArgs


class _LockstepModeType(type):
    def __repr__(cls) -> str:
        return (
            "'lockstep' (TextRLHFVectorEnv's default autoreset_mode, not a Gymnasium AutoresetMode: "
            "a finished row stays terminated, its actions ignored, until the next reset() of all "
            "rows, which Gymnasium's vector wrappers such as RecordEpisodeStatistics do not "
            "support; pass autoreset_mode='next_step' to use them)"
        )


class LockstepMode(str, metaclass=_LockstepModeType):
    """``metadata["autoreset_mode"]`` of a lockstep env: a str equal to ``"lockstep"``.

    Gymnasium's vector wrappers (``RecordEpisodeStatistics``, ``TransformObservation``, ...) accept
    only an ``AutoresetMode`` there and raise ``TypeError(f"... got {type(value)}")``; the repr of
    this type turns that into an explanation of lockstep and of ``autoreset_mode="next_step"``.
    """


LOCKSTEP = LockstepMode("lockstep")
AUTORESET_MODES = (LOCKSTEP, *NEXT_STEP_NAMES)


@env_signature(
    inspect.Parameter("num_envs", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1),
    inspect.Parameter("autoreset_mode", inspect.Parameter.KEYWORD_ONLY, default=LOCKSTEP),
)
class TextRLHFVectorEnv(TextBatch, VectorEnv):
    """A natively batched TextRLHF env: ``TextRLHFEnv``'s arguments plus ``num_envs`` and
    ``autoreset_mode``.

    ## Arguments
    ```python
    gym.make_vec("TextRLHF-v0", num_envs=1, vectorization_mode="vector_entry_point",
                 autoreset_mode="lockstep", **env_arguments)
    ```
    ``env_arguments``: the keyword arguments of ``TextRLHFEnv`` (``tokenizer``, ``prompts``,
    ``split``, ``reward_fn``, ``max_new_tokens``, ``max_prompt_tokens``, ``render_mode``,
    ``missing_eos_penalty``, ``prompt_format``, ``tools``, ``max_tool_calls``, ``max_turns``,
    ``feedback``, ``task``, ``task_kwargs``, ``reward_placement``; see its Arguments section),
    with the same defaults
    and checks (``TextEnvArgs``). An unknown name raises ``TypeError`` listing the allowed ones.

    - ``num_envs``: number of rows N, an int >= 1.
    - ``autoreset_mode``:
      - ``"lockstep"`` (default, used by the LM agent): all rows start at ``reset()``; a row that
        finishes stays finished (later actions ignored, reward 0, terminated stays True) until the
        next ``reset()``. Batched decoding with a KV cache keeps all rows aligned this way.
        Gymnasium's vector wrappers (e.g. ``RecordEpisodeStatistics``) need an ``AutoresetMode``
        and refuse this mode with a ``TypeError`` that says so.
      - ``"next_step"`` (or ``AutoresetMode.NEXT_STEP``): Gymnasium's autoreset; the step after a row
        finishes resets that row to a new prompt (its action is ignored, reward 0). Gymnasium's
        vector wrappers work on it.

    ``render_mode="ansi"``: ``render()`` returns a tuple of the N texts (prompt + text so far).

    Stepping is pure numpy; the rows that finish at a step are decoded and scored in ONE call of
    the reward function. Final-step infos are vectorized Gymnasium-style: ``info["response"]`` is an
    object array with ``info["_response"]`` the mask of the rows that finished; likewise
    ``prompt``, ``reference``, ``score``, ``eos``, ``hit_length_limit`` and the nested dict
    ``reward_components`` (``score`` is the reward function's, before ``missing_eos_penalty``).
    ``reset(options={"prompts": [...]})`` forces N prompts (texts or dataset
    indices), e.g. for held-out evaluation; ``"references"`` may be given alongside.
    ``reset(options={"repeat": K})`` (lockstep only) draws N / K prompts and gives each to K
    consecutive rows: the groups of critic-free advantage estimators (GRPO, RLOO).
    ``metadata["reset_options"]`` lists the reset options this env takes.
    """

    metadata = {"render_modes": list(RENDER_MODES), "autoreset_mode": LOCKSTEP}

    def __init__(
        self, num_envs: int = 1, *, autoreset_mode: str | AutoresetMode = LOCKSTEP, **kwargs: Any
    ) -> None:
        try:
            num_envs = check_positive_int("num_envs", num_envs)
        except TypeError as err:
            raise ValueError(str(err)) from None  # as before: a ValueError for any bad num_envs
        mode = autoreset_mode.value if isinstance(autoreset_mode, AutoresetMode) else autoreset_mode
        if not isinstance(mode, str) or mode not in AUTORESET_MODES:
            raise ValueError(
                f"autoreset_mode {autoreset_mode!r} not supported; allowed: {list(AUTORESET_MODES)}"
            )
        self.args = args = TextEnvArgs.from_kwargs(type(self).__name__, kwargs, OWN_ARGUMENTS)
        TextBatch.__init__(self, int(num_envs), args)
        self.num_envs, self.render_mode = int(num_envs), args.render_mode
        self.lockstep = mode == LOCKSTEP  # else one of NEXT_STEP_NAMES
        if self.lockstep:
            # "lockstep" is not a Gymnasium AutoresetMode member (the contract in
            # docs/ARCHITECTURE.md sets metadata["autoreset_mode"] = "lockstep"), so make_vec warns
            # about its type after building us. Silence exactly that warning, for this class only.
            warnings.filterwarnings(
                "ignore",
                message=r".*TextRLHFVectorEnv\(.*metadata\['autoreset_mode'\] is not an instance",
                category=UserWarning,
            )
        self.metadata = {
            "render_modes": list(RENDER_MODES),
            "autoreset_mode": LOCKSTEP if self.lockstep else AutoresetMode.NEXT_STEP,
            "reset_options": list(VECTOR_RESET_OPTIONS),
        }
        self.stop_ids = np.array(self.stop_ids, dtype=np.int64)
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self.single_observation_space = self._row_observation_space()
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._done = np.ones(self.num_envs, dtype=bool)  # finished (lockstep) / to reset (next)
        self._rows = np.arange(self.num_envs)
        self._needs_reset = True

    # ---------------------------------------------------------------- reset
    def _load_rows(
        self,
        rows: np.ndarray | None,
        forced: list | None = None,
        refs: list | None = None,
        repeat: int = 1,
    ) -> None:
        """New episodes in ``rows`` (None: all), drawn with ``np_random`` (one generator for all
        rows)."""
        self._start_rows(rows, self.np_random, forced, refs, repeat)
        self._done[slice(None) if rows is None else rows] = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)  # one generator (self.np_random) draws the prompts of all rows
        options = options or {}
        unknown = set(options) - set(VECTOR_RESET_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown reset options {sorted(unknown)}; allowed: {list(VECTOR_RESET_OPTIONS)}"
            )
        forced, refs = options.get("prompts"), options.get("references")
        if forced is not None:
            if isinstance(forced, str) or len(forced) != self.num_envs:
                raise ValueError(
                    f"options['prompts'] must be a list of {self.num_envs} prompts (str or dataset "
                    f"index), got {forced!r:.80}"
                )
            refs = [None] * self.num_envs if refs is None else list(refs)
            if len(refs) != self.num_envs:
                raise ValueError(
                    f"options['references'] must have {self.num_envs} entries, got {len(refs)}"
                )
        elif refs is not None:
            raise ValueError("options['references'] needs options['prompts']")
        repeat = options.get("repeat", 1)
        if repeat != 1:
            if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
                raise ValueError(f"options['repeat'] must be an int >= 1, got {repeat!r}")
            if self.num_envs % repeat:
                raise ValueError(f"options['repeat']={repeat} must divide num_envs={self.num_envs}")
            if not self.lockstep:
                raise ValueError(
                    "options['repeat'] needs autoreset_mode='lockstep' (with next_step "
                    "autoreset, rows restart one by one and groups would not stay together)"
                )
            if forced is not None:
                raise ValueError("options['repeat'] draws the prompts; it cannot take 'prompts'")
        self._load_rows(None, forced, refs, int(repeat))
        self._needs_reset = False
        return self._obs(), {}

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"input_ids": self._ids.copy(), "attention_mask": self._mask.copy()}
        if self._writes_tokens:
            obs["from_env"] = self._from_env.copy()
        return obs

    # ---------------------------------------------------------------- step
    def _check_actions(self, actions: Any, active: np.ndarray) -> np.ndarray:
        a = actions.detach().cpu().numpy() if hasattr(actions, "detach") else np.asarray(actions)
        if a.dtype.kind not in "iu":
            raise TypeError(
                f"actions must be integer token ids in [0, {self.vocab_size}), got dtype {a.dtype}"
            )
        if a.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {a.shape}")
        if a.min() < 0 or a.max() >= self.vocab_size:  # fast path: every row valid
            # the actions of finished rows are ignored, so only the live rows must be valid
            live = a[active]
            bad = live[(live < 0) | (live >= self.vocab_size)]
            if bad.size:
                raise ValueError(
                    f"action {bad[0]} is out of range: token ids are in [0, {self.vocab_size})"
                )
        return a

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        N = self.num_envs
        was_done = self._done.copy()  # (N,) finished rows (lockstep) / rows to reset (next_step)
        any_done = was_done.any()
        active = ~was_done  # (N,) rows that take this action
        a = self._check_actions(actions, active)
        done = self._advance(a, active if any_done else None)
        rewards = np.zeros(N, dtype=np.float64)
        finished = np.zeros(N, dtype=bool)
        info: dict[str, Any] = {}
        if done is not None:
            rewards[done.paid_rows] = done.paid  # turns that ended, episode going on ("turn")
            if len(done.rows):
                rewards[done.rows], finished[done.rows] = done.rewards, True
                info = self._vector_info(done, finished)
        if any_done and not self.lockstep:  # NEXT_STEP: reset the rows that finished last step
            self._load_rows(np.flatnonzero(was_done))
        self._done |= finished
        terminated = self._done.copy() if self.lockstep else finished
        return self._obs(), rewards, terminated, np.zeros(N, dtype=bool), info

    def _vector_info(self, done: Finished, finished: np.ndarray) -> dict[str, Any]:
        """Gymnasium-style vectorized final infos: a column per key, ``_key`` its (N,) mask."""
        N, rows = self.num_envs, done.rows
        prompts = [self._prompts[r] for r in rows.tolist()]
        references = [self._references[r] for r in rows.tolist()]

        def column(values: Any, dtype: Any) -> np.ndarray:
            out = np.empty(N, dtype=object) if dtype is object else np.zeros(N, dtype=dtype)
            out[rows] = values  # an empty object array holds None
            return out

        mask = finished.copy()
        info: dict[str, Any] = {}
        for key, values, dtype in (
            ("prompt", prompts, object),
            ("response", done.responses, object),
            ("reference", references, object),
            ("score", done.score, np.float64),
            ("eos", done.eos, bool),
            ("hit_length_limit", ~done.eos, bool),
        ):
            info[key], info[f"_{key}"] = column(values, dtype), mask
        components: dict[str, Any] = {}
        for name, values in done.parts.items():
            components[name], components[f"_{name}"] = column(values, np.float64), mask
        info["reward_components"], info["_reward_components"] = components, mask
        for key, (values, has) in done.turns.items():
            info[key], info[f"_{key}"] = turn_column(N, rows, values, has)
        return info

    # ---------------------------------------------------------------- misc
    def render(self) -> tuple[str, ...] | None:
        if self.render_mode != "ansi":
            return None
        return tuple(self._row_text(r) for r in range(self.num_envs))


def turn_column(
    N: int, rows: np.ndarray, values: list, has: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A turn info (``textenv.turns.final_infos``) of the finished ``rows`` as an (N,) column and
    its mask: bool or float64 when every value is, else an object column (0 where absent)."""
    column = np.zeros(N, dtype=object)
    mask = np.zeros(N, dtype=bool)
    for r, value, h in zip(rows.tolist(), values, has):
        if h:
            column[r], mask[r] = value, True
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        column = column.astype(bool)
    elif all(isinstance(v, (int, float, np.number)) for v in values):
        column = column.astype(np.float64)
    return column, mask
