"""TextRLHFVectorEnv: N text episodes stepped together in numpy, finished rows scored in one call."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.env import (
    RENDER_MODES,
    TextEnvArgs,
    check_positive_int,
    check_references,
    env_signature,
    episode_stop_ids,
    make_observation_space,
    resolve_prompt,
)
from textenv.tokenizer import make_batch_decoder, make_decoder

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
class TextRLHFVectorEnv(VectorEnv):
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
    ``feedback``; see its Arguments section), with the same defaults
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
        self.tokenizer, self.dataset, self.reward_fn = args.build()
        self.num_envs, self.render_mode = int(num_envs), args.render_mode
        self.missing_eos_penalty = args.missing_eos_penalty
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
        self.max_prompt_tokens, self.max_new_tokens = args.max_prompt_tokens, args.max_new_tokens
        self.vocab_size = len(self.tokenizer)
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.stop_ids = np.array(episode_stop_ids(self.tokenizer, self.dataset), dtype=np.int64)
        self._decode = make_decoder(self.tokenizer)
        self._decode_batch = make_batch_decoder(self.tokenizer)
        N, L = self.num_envs, self.max_prompt_tokens + self.max_new_tokens
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self._dialogues = args.dialogues(N, self.tokenizer)  # None: no tools, one turn
        self.single_observation_space = make_observation_space(
            self.vocab_size, L, from_env=self._dialogues is not None
        )
        self.action_space = batch_space(self.single_action_space, N)
        self.observation_space = batch_space(self.single_observation_space, N)

        self._ids = np.full((N, L), self.pad_id, dtype=np.int64)  # (N, L)
        self._mask = np.zeros((N, L), dtype=np.int8)  # (N, L)
        self._from_env = np.zeros((N, L), dtype=np.int8)  # (N, L) used with tools/turns only
        self._n_generated = np.zeros(N, dtype=np.int64)  # (N,)
        self._done = np.ones(N, dtype=bool)  # (N,) finished (lockstep) / to reset (next_step)
        self._rows = np.arange(N)
        self._prompts: list[str] = [""] * N
        self._references: list[str | None] = [None] * N
        self._needs_reset = True

    # ---------------------------------------------------------------- reset
    def _load_rows(
        self,
        rows: np.ndarray,
        forced: list | None = None,
        refs: list | None = None,
        repeat: int = 1,
    ) -> None:
        """Put new prompts into ``rows``: drawn with ``np_random`` (each draw given to ``repeat``
        consecutive rows) or forced (texts / indices)."""
        P, ds = self.max_prompt_tokens, self.dataset
        if forced is None:
            idx = self.np_random.integers(len(ds), size=len(rows) // repeat)
            if repeat > 1:
                idx = np.repeat(idx, repeat)
            self._ids[rows, :P] = ds.input_ids[idx]
            self._mask[rows, :P] = ds.attention_mask[idx]
            for r, i in zip(rows.tolist(), idx.tolist()):
                self._prompts[r], self._references[r] = ds.prompts[i], ds.references[i]
        else:  # resolve every forced prompt before writing, so a bad one changes nothing
            resolved = [resolve_prompt(ds, prompt, ref) for prompt, ref in zip(forced, refs)]
            check_references(self.reward_fn, [(text, ref) for _, _, text, ref in resolved])
            for r, (ids, mask, text, ref) in zip(rows.tolist(), resolved):
                self._ids[r, :P], self._mask[r, :P] = ids, mask
                self._prompts[r], self._references[r] = text, ref
        self._ids[rows, P:] = self.pad_id
        self._mask[rows, P:] = 0
        self._n_generated[rows] = 0
        self._done[rows] = False
        if self._dialogues is not None:
            self._from_env[rows] = self._mask[rows]
            self._dialogues.reset_rows(rows)

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
        self._load_rows(self._rows, forced, refs, int(repeat))
        self._needs_reset = False
        return self._obs(), {}

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"input_ids": self._ids.copy(), "attention_mask": self._mask.copy()}
        if self._dialogues is not None:
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
            live = a[
                active
            ]  # actions of finished rows are ignored, so only live rows must be valid
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
        N, P = self.num_envs, self.max_prompt_tokens
        was_done = self._done.copy()  # (N,) finished rows (lockstep) / rows to reset (next_step)
        active = ~was_done  # (N,) rows that take this action
        a = self._check_actions(actions, active)
        if self._dialogues is not None:
            return self._step_dialogues(a, was_done, active)
        n_gen = self._n_generated
        eos = (np.isin(a, self.stop_ids) if len(self.stop_ids) > 1 else a == self.eos_id) & active
        finished = (eos | (n_gen + 1 == self.max_new_tokens)) & active  # (N,)

        # score first: a reward function that raises leaves the env as it was
        rewards = np.zeros(N, dtype=np.float64)
        info: dict[str, Any] = {}
        if finished.any():
            info = self._score(np.flatnonzero(finished), a, eos, finished, rewards)

        any_done = was_done.any()
        if any_done and not self.lockstep:  # NEXT_STEP: reset the rows that finished last step
            self._load_rows(np.flatnonzero(was_done))
        rows = self._rows if not any_done else np.flatnonzero(active)
        cols = P + n_gen[rows]
        self._ids[rows, cols] = a[rows]
        self._mask[rows, cols] = 1
        n_gen[rows] += 1
        self._done |= finished
        terminated = self._done.copy() if self.lockstep else finished
        return self._obs(), rewards, terminated, np.zeros(N, dtype=bool), info

    def _step_dialogues(
        self, a: np.ndarray, was_done: np.ndarray, active: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """``step`` with tools or turns: ``textenv.tools.Dialogues`` writes each active row's
        token and its env tokens (rows may get different numbers at the same step) and scores
        every row whose turn ends in one reward call."""
        N = self.num_envs
        rows = np.flatnonzero(active)

        def score(idx: np.ndarray, responses: list[str], ended: np.ndarray) -> tuple:
            kwargs = {"ended": ended.tolist()} if self.reward_fn.wants_ended else {}
            prompts = [self._prompts[r] for r in idx.tolist()]
            references = [self._references[r] for r in idx.tolist()]
            return self.reward_fn.score(prompts, responses, references, **kwargs)

        out = self._dialogues.step(
            self._ids,
            self._mask,
            self._from_env,
            self._n_generated,
            rows,
            a,
            self._prompts,
            score,
        )
        finished = np.zeros(N, dtype=bool)
        finished[rows] = out["finished"]
        rewards = np.zeros(N, dtype=np.float64)
        info: dict[str, Any] = {}
        if finished.any():
            done = out["finished"]
            done_rows = rows[done]
            eos = out["eos"][done]
            total = out["score"][done]
            rewards[done_rows] = total - self.missing_eos_penalty * ~eos
            parts = {k: v[done] for k, v in out["parts"].items()}
            responses = [r for r, d in zip(out["response"], done) if d]
            info = self._vector_info(done_rows, finished, responses, total, eos, parts)
            for key, (values, has) in out["info"].items():
                column = np.zeros(N, dtype=object)
                mask = np.zeros(N, dtype=bool)
                for r, value, h in zip(rows.tolist(), values, has):
                    if h:
                        column[r], mask[r] = value, True
                if all(isinstance(v, (bool, np.bool_)) for v in values):
                    column = column.astype(bool)
                elif all(isinstance(v, (int, float, np.number)) for v in values):
                    column = column.astype(np.float64)
                info[key], info[f"_{key}"] = column, mask
        if was_done.any() and not self.lockstep:  # NEXT_STEP: reset the rows that finished
            self._load_rows(np.flatnonzero(was_done))
        self._done |= finished
        terminated = self._done.copy() if self.lockstep else finished
        return self._obs(), rewards, terminated, np.zeros(N, dtype=bool), info

    def _score(
        self,
        rows: np.ndarray,
        actions: np.ndarray,
        eos: np.ndarray,
        finished: np.ndarray,
        rewards: np.ndarray,
    ) -> dict[str, Any]:
        """Decode the ``rows`` that this step's ``actions`` finish (not yet written to the state),
        score them in one reward call, fill ``rewards`` and return the vectorized infos."""
        P = self.max_prompt_tokens
        n_gen = self._n_generated[rows]  # tokens before this step
        tokens = self._ids[rows, P:].copy()  # (k, max_new_tokens)
        tokens[np.arange(len(rows)), n_gen] = actions[rows]
        lengths = n_gen + 1 - eos[rows]  # the EOS is not part of the response
        prompts = [self._prompts[r] for r in rows.tolist()]
        references = [self._references[r] for r in rows.tolist()]
        responses = self._decode_batch(tokens, lengths)
        ended = {"ended": eos[rows].tolist()} if self.reward_fn.wants_ended else {}
        total, parts = self.reward_fn.score(prompts, responses, references, **ended)
        rewards[rows] = total - self.missing_eos_penalty * ~eos[rows]
        return self._vector_info(rows, finished, responses, total, eos[rows], parts)

    def _vector_info(
        self,
        rows: np.ndarray,
        finished: np.ndarray,
        responses: list[str],
        total: np.ndarray,
        eos: np.ndarray,
        parts: dict[str, np.ndarray],
    ) -> dict[str, Any]:
        """Gymnasium-style vectorized final infos of the finished ``rows`` (k,)."""
        N = self.num_envs
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
            ("response", responses, object),
            ("reference", references, object),
            ("score", total, np.float64),
            ("eos", eos, bool),
            ("hit_length_limit", ~eos, bool),
        ):
            info[key], info[f"_{key}"] = column(values, dtype), mask
        components: dict[str, Any] = {}
        for name, values in parts.items():
            components[name], components[f"_{name}"] = column(values, np.float64), mask
        info["reward_components"], info["_reward_components"] = components, mask
        return info

    # ---------------------------------------------------------------- misc
    def render(self) -> tuple[str, ...] | None:
        if self.render_mode != "ansi":
            return None
        P = self.max_prompt_tokens
        return tuple(
            self._prompts[r] + self._decode(self._ids[r, P : P + self._n_generated[r]])
            for r in range(self.num_envs)
        )
