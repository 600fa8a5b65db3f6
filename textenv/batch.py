"""TextBatch: N text episodes as token arrays, and the one step that both envs take.

``TextBatch`` is the base of both envs: ``TextRLHFVectorEnv`` is a batch of ``num_envs`` rows,
``TextRLHFEnv`` a batch of one row (as Gymnasium's classic-control vector envs share their dynamics
with the single envs). So there is one step path, with or without tools and turns: a behaviour fix
lands once. The envs add the Gymnasium API around it: action checks, autoreset, the shape of infos.

Layout of a row, with ``P = max_prompt_tokens``, ``M = max_new_tokens``: ``_ids[r, :P]`` is the
prompt, left-padded; ``_ids[r, P + t]`` the t-th token after it (the agent's, or the env's:
``_from_env``); ``_n_generated[r]`` counts the tokens after the prompt. These arrays are the
episode state, attributes of the env itself, so a generic snapshot of an env's numpy attributes
(the trainer's checkpoints) saves and restores them. The per-turn logic (scores, feedback, tools)
is ``textenv.turns.TurnRules``; this module writes the tokens it asks for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from textenv.args import TextEnvArgs
from textenv.data import PromptDataset, encode_prompt
from textenv.prompt_task import PromptState, PromptTask
from textenv.rewards import Reward
from textenv.tasks import reference_for
from textenv.tokenizer import (
    check_text,
    encode_text,
    end_of_turn_ids,
    make_batch_decoder,
    make_decoder,
)
from textenv.turns import TurnRules, TurnState, final_infos


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


def episode_stop_ids(tokenizer: Any, chat: bool) -> tuple[int, ...]:
    """The tokens that end a turn: EOS, plus the chat template's end-of-turn token when the
    prompts are rendered with the chat template (``textenv.tokenizer.end_of_turn_ids``)."""
    return end_of_turn_ids(tokenizer) if chat else (tokenizer.eos_token_id,)


_EMPTY_ROWS = np.zeros(0, dtype=np.int64)
_EMPTY_REWARDS = np.zeros(0, dtype=np.float64)


@dataclass
class EndedTurns:
    """The k turns that end at a step (``TextBatch._advance``'s own bookkeeping)."""

    rows: np.ndarray  # (k,)
    eos: np.ndarray  # (k,) bool: the turn ended with a stop token
    texts: list[str]
    rewards: np.ndarray  # (k,) each turn's reward from the task
    parts: dict[str, np.ndarray]
    going_on: list[int]  # the rows whose episode goes on (their reply, if any, is written)


@dataclass
class Finished:
    """What a step ended: the k rows whose episode ended (and what their final infos hold), and
    the rows whose turn ended with a reward paid while their episode goes on."""

    rows: np.ndarray  # (k,) row indices
    responses: list[str]  # the last turn's text (EOS not included)
    # (k,) the episode's score: its turns' rewards summed (the last turn's alone with
    # reward_placement "last"), before missing_eos_penalty
    score: np.ndarray
    parts: dict[str, np.ndarray]  # component name -> (k,)
    eos: np.ndarray  # (k,) bool: ended with EOS (else at the length limit)
    rewards: np.ndarray  # (k,) this step's reward, less missing_eos_penalty without EOS
    turns: dict[str, tuple[list, np.ndarray]]  # turn/tool infos (textenv.turns.final_infos)
    paid_rows: np.ndarray  # (j,) rows whose turn ended, episode going on ("turn" placement)
    paid: np.ndarray  # (j,) their turn's reward


@dataclass(frozen=True, eq=False)
class Layout:
    """What the step derives from the arguments once: sizes and lookup tables (not episode
    state: kept out of the env's own numpy attributes, which a checkpoint snapshots)."""

    N: int  # rows
    P: int  # max_prompt_tokens
    M: int  # max_new_tokens
    rows: np.ndarray  # (N,) arange(N)
    is_stop: np.ndarray  # (V,) bool: the token ends a turn (EOS, the chat end-of-turn token)
    is_last: np.ndarray  # (M + 1,) bool: n_generated -> this token is the last that fits
    max_tool_calls: int
    # one row without tools (TextRLHFEnv): numpy's cost per call exceeds the work on one
    # element, so a step that ends nothing skips the (N,) masks, and writes are scalar
    one_row_fast: bool


class TextBatch:
    """N episodes of one prompt set, and the one step: the base of both envs.

    ``_start_rows`` starts episodes, ``_advance`` steps them, ``_row_text`` renders one. Built
    from ``TextEnvArgs``: ``tokenizer``, ``task`` (the text task: a ``PromptTask`` over the
    prompt set unless ``task=`` gave one), ``dataset`` and ``reward_fn`` (the prompt set's; None
    for other tasks) and the sizes become attributes of the env.
    """

    def __init__(self, num_rows: int, args: TextEnvArgs) -> None:
        self.tokenizer, self.task = args.build()
        prompt_task = self.task if isinstance(self.task, PromptTask) else None
        self._prompt_task = prompt_task
        self.dataset = prompt_task.dataset if prompt_task else None
        self.reward_fn = prompt_task.reward_fn if prompt_task else None
        self.split, self.prompt_format = args.split, args.prompt_format
        self.reward_placement = args.reward_placement or getattr(
            self.task, "default_placement", "turn"
        )
        self.missing_eos_penalty = args.missing_eos_penalty
        P, M = self.max_prompt_tokens, self.max_new_tokens = (
            args.max_prompt_tokens,
            args.max_new_tokens,
        )
        self.vocab_size = len(self.tokenizer)
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        chat = prompt_task.dataset.chat if prompt_task else args.prompt_format == "chat"
        self.stop_ids = episode_stop_ids(self.tokenizer, chat)
        self._decode = make_decoder(self.tokenizer)
        self._decode_batch = make_batch_decoder(self.tokenizer)
        self._rules = TurnRules(self.task, args.tools)
        self._writes_tokens = args.writes_tokens  # tools, turns, a task: from_env, turn infos
        # score_turn1.. infos: the prompt set's retries (a task's turn count is its own business)
        self._per_turn_keys = args.max_turns if prompt_task and args.max_turns > 1 else 0
        self._prompt_ids: dict[str, np.ndarray] = {}  # a task's prompt text -> its token ids
        N, L = num_rows, P + M
        is_stop, is_last = np.zeros(self.vocab_size, dtype=bool), np.zeros(M + 1, dtype=bool)
        is_stop[list(self.stop_ids)], is_last[M - 1] = True, True
        one_row_fast = N == 1 and not self._rules.has_tools
        self._layout = Layout(
            N, P, M, np.arange(N), is_stop, is_last, args.max_tool_calls, one_row_fast
        )
        # the episode state
        self._ids = np.full((N, L), self.pad_id, dtype=np.int64)  # (N, L)
        self._mask = np.zeros((N, L), dtype=np.int8)  # (N, L)
        self._from_env = np.zeros((N, L), dtype=np.int8)  # (N, L) 1 on env tokens
        self._n_generated = np.zeros(N, dtype=np.int64)  # (N,) tokens after the prompt
        self._prompts: list[str] = [""] * N
        self._references: list[str | None] = [None] * N
        self._states: list[Any] = [None] * N  # each row's task state
        self._turns = TurnState(N)  # used when the env writes tokens

    def _row_observation_space(self) -> spaces.Dict:
        L = self.max_prompt_tokens + self.max_new_tokens
        return make_observation_space(self.vocab_size, L, self._writes_tokens)

    # ---------------------------------------------------------------- reset
    def _start_rows(
        self,
        rows: np.ndarray | None,
        rng: np.random.Generator,
        forced: list | None = None,
        refs: list | None = None,
        repeat: int = 1,
    ) -> None:
        """Start new episodes in ``rows`` (None: every row): prompts drawn with ``rng`` (each
        draw given to ``repeat`` consecutive rows) or ``forced`` (texts / dataset indices, with
        ``refs``)."""
        P, ds = self.max_prompt_tokens, self.dataset
        at = slice(None) if rows is None else rows  # every row: a slice costs less than indices
        row_list = range(self._layout.N) if rows is None else rows.tolist()
        if self._prompt_task is None:
            if forced is not None:
                raise ValueError(
                    f"a task ({getattr(self.task, 'name', type(self.task).__name__)}) draws its "
                    "own episodes: forced prompts need the built-in prompt sets (no task=)"
                )
            self._start_task_rows(row_list, rng, repeat)
        elif forced is None:
            n_draws = len(row_list) // repeat
            if n_draws == 1:  # one prompt for every row: a scalar draw (the same value, faster)
                i = int(rng.integers(len(ds)))
                self._ids[at, :P], self._mask[at, :P] = ds.input_ids[i], ds.attention_mask[i]
                idx = [i] * len(row_list)
            else:
                draws = np.repeat(rng.integers(len(ds), size=n_draws), repeat)
                self._ids[at, :P] = ds.input_ids[draws]
                self._mask[at, :P] = ds.attention_mask[draws]
                idx = draws.tolist()
            for r, i in zip(row_list, idx):
                self._prompts[r], self._references[r] = ds.prompts[i], ds.references[i]
                self._states[r] = PromptState(ds.prompts[i], ds.references[i])
        else:  # resolve every forced prompt before writing, so a bad one changes nothing
            resolved = [resolve_prompt(ds, prompt, ref) for prompt, ref in zip(forced, refs)]
            check_references(self.reward_fn, [(text, ref) for _, _, text, ref in resolved])
            for r, (ids, mask, text, ref) in zip(row_list, resolved):
                self._ids[r, :P], self._mask[r, :P] = ids, mask
                self._prompts[r], self._references[r] = text, ref
                self._states[r] = PromptState(text, ref)
        self._ids[at, P:] = self.pad_id
        self._mask[at, P:] = 0
        self._n_generated[at] = 0
        if self._writes_tokens:
            self._from_env[at] = self._mask[at]
            self._turns.reset_rows(at, row_list)

    def _start_task_rows(self, rows: Any, rng: np.random.Generator, repeat: int) -> None:
        """Start a task's episodes in ``rows``: ``task.reset(rng, split)`` once per group of
        ``repeat`` consecutive rows, each of which gets its own copy of the state."""
        P, rows = self.max_prompt_tokens, list(rows)
        reference = getattr(self.task, "reference", None)
        for g in range(len(rows) // repeat):
            out = self.task.reset(rng, self.split)
            if not isinstance(out, tuple) or len(out) != 2 or not isinstance(out[0], str):
                raise TypeError(
                    f"task reset(rng, split) must return (prompt: str, state), got {out!r:.80}"
                )
            prompt, state = out
            ids = self._task_prompt_ids(prompt)
            ref = reference(state) if reference is not None else None
            group = rows[g * repeat : (g + 1) * repeat]
            for k, r in enumerate(group):
                self._ids[r, :P], self._mask[r, :P] = self.pad_id, 0
                self._ids[r, P - len(ids) : P], self._mask[r, P - len(ids) : P] = ids, 1
                self._prompts[r], self._references[r] = prompt, ref
                self._states[r] = state if k == 0 else copy.deepcopy(state)

    def _task_prompt_ids(self, prompt: str) -> np.ndarray:
        """A task prompt's token ids (tokenized once per distinct text)."""
        ids = self._prompt_ids.get(prompt)
        if ids is None:
            where = f"the prompt of task {getattr(self.task, 'name', type(self.task).__name__)}"
            chat = self.prompt_format == "chat"
            ids = np.asarray(
                encode_prompt(self.tokenizer, prompt, self.max_prompt_tokens, chat, where),
                dtype=np.int64,
            )
            if len(self._prompt_ids) >= 65536:  # a task with endless distinct prompts
                self._prompt_ids.clear()
            self._prompt_ids[prompt] = ids
        return ids

    def _row_text(self, row: int) -> str:
        """Prompt and text so far of ``row`` (for ``render``)."""
        P = self.max_prompt_tokens
        return self._prompts[row] + self._decode(self._ids[row, P : P + self._n_generated[row]])

    # ---------------------------------------------------------------- step
    def _advance(self, actions: np.ndarray, live: np.ndarray | None = None) -> Finished | None:
        """Write each live row's action and the env's tokens after it; end the turns and the
        episodes that end at this step.

        ``actions`` (N,) valid token ids; ``live`` (N,) bool, the rows that act (None: all).
        Every turn that ends is scored in ONE reward call, before anything is written: a reward,
        feedback or tool that raises leaves the batch as it was. Returns the rows whose episode
        ended (``Finished``, with their rewards), or None.
        """
        lay, n = self._layout, self._n_generated
        if lay.one_row_fast and live is None:  # TextRLHFEnv: see Layout.one_row_fast
            token, n0 = int(actions[0]), int(n[0])
            if not (lay.is_stop[token] or lay.is_last[n0]):  # the turn goes on, no tool asked
                self._append_one(token, n0)
                return None
        # table lookups: indexing a small array costs less than a ufunc call
        if live is None:
            eos = lay.is_stop[actions]  # (N,) EOS (or the chat end-of-turn token)
            ends = eos | lay.is_last[n]  # (N,) the turn ends: EOS, or the last token that fits
        else:  # the actions of rows that do not act are not checked: clip them
            eos = lay.is_stop.take(actions, mode="clip") & live
            ends = (eos | lay.is_last[n]) & live
        replies: dict[int, np.ndarray] = {}  # row -> env tokens to write after the agent's token
        calls: dict[int, tuple[str, str]] = {}  # row -> the tool call those tokens answer
        if self._rules.has_tools:  # a tool result that does not fit ends the turn (in ``ends``)
            self._ask_tools(actions, live, ends, replies, calls)
        turns = None
        if np.count_nonzero(ends):
            turns = self._end_turns(ends.nonzero()[0], actions, eos, replies)
        self._write(actions, live, replies, calls)
        return None if turns is None else self._finish(turns)

    def _ask_tools(
        self,
        actions: np.ndarray,
        live: np.ndarray | None,
        ends: np.ndarray,
        replies: dict[int, np.ndarray],
        calls: dict[int, tuple[str, str]],
    ) -> None:
        """Ask the tools about each live row whose turn goes on and that has calls left."""
        P, M, turns = self.max_prompt_tokens, self.max_new_tokens, self._turns
        asked = ~ends if live is None else live & ~ends
        for r in np.flatnonzero(asked).tolist():
            n = int(self._n_generated[r])
            if len(turns.history[r].calls) >= self._layout.max_tool_calls:
                continue
            since_env = self._ids[r, P + turns.env_end[r] : P + n]
            call = self._rules.tool(self._states[r], self._decode(np.append(since_env, actions[r])))
            if call is not None:
                tokens = self._encode(call[1])
                if n + 1 + len(tokens) >= M:  # no room for the result and one more agent token
                    ends[r] = True
                else:
                    replies[r], calls[r] = tokens, call

    def _end_turns(
        self,
        rows: np.ndarray,
        actions: np.ndarray,
        eos: np.ndarray,
        replies: dict[int, np.ndarray],
    ) -> EndedTurns:
        """Hand the turns that end in ``rows`` (k,) to the task (one batch); the replies of the
        episodes that go on, when they fit, go into ``replies``."""
        eos = eos[rows]
        texts = self._turn_texts(rows, actions, eos)
        row_list = rows.tolist()
        out = self._rules.respond([self._states[r] for r in row_list], texts, eos)
        going_on = []
        if out.done is not None:
            for r, reply, done in zip(row_list, out.replies, out.done.tolist()):
                if done:
                    continue
                tokens = self._encode(reply) if reply else None
                m = 0 if tokens is None else len(tokens)
                if self._n_generated[r] + 1 + m < self.max_new_tokens:
                    if m:
                        replies[r] = tokens
                    going_on.append(r)
                # else no room for the reply and one more agent token: the episode ends here
        return EndedTurns(rows, eos, texts, out.rewards, out.parts, going_on)

    def _turn_texts(self, rows: np.ndarray, actions: np.ndarray, eos: np.ndarray) -> list[str]:
        """The text of the turn that ``actions`` (not yet written) end in each of ``rows``:
        from the turn's start (env tokens included) to the action, without a stop token."""
        P, M, start = self.max_prompt_tokens, self.max_new_tokens, self._turns.turn_start
        if len(rows) < 4:  # a few rows: one decode each costs less than the batch's overhead
            texts = []
            for r, ended in zip(rows.tolist(), eos.tolist()):
                turn = self._ids[r, P + start[r] : P + self._n_generated[r]]
                texts.append(self._decode(turn if ended else np.append(turn, actions[r])))
            return texts
        n = self._n_generated[rows]
        tokens = self._ids[rows, P:]  # (k, M) a copy
        tokens[np.arange(len(rows)), n] = actions[rows]
        lengths = n + 1 - eos
        if self._writes_tokens and start[rows].any():  # a later turn: shift it to the front
            cols = np.minimum(start[rows, None] + np.arange(M), M - 1)
            tokens = np.take_along_axis(tokens, cols, axis=1)
            lengths -= start[rows]
        return self._decode_batch(tokens, lengths)

    def _write(
        self,
        actions: np.ndarray,
        live: np.ndarray | None,
        replies: dict[int, np.ndarray],
        calls: dict[int, tuple[str, str]],
    ) -> None:
        """Write each live row's action, then the env tokens of ``replies`` after it."""
        n, lay = self._n_generated, self._layout
        if live is None and lay.N == 1:  # (scalars: see Layout.one_row_fast)
            self._append_one(int(actions[0]), int(n[0]))
        else:
            rows = lay.rows if live is None else np.flatnonzero(live)
            cols = lay.P + n[rows]
            self._ids[rows, cols], self._mask[rows, cols] = actions[rows], 1
            n[rows] += 1
        if not replies:
            return
        for r, tokens in replies.items():
            col, m = lay.P + n[r], len(tokens)
            self._ids[r, col : col + m] = tokens
            self._mask[r, col : col + m], self._from_env[r, col : col + m] = 1, 1
            n[r] += m
            self._turns.env_end[r] = n[r]
        for r, call in calls.items():
            self._turns.history[r].calls.append(call)

    def _append_one(self, token: int, n: int) -> None:
        """Write ``token`` after the ``n`` tokens of the one row (Python scalars)."""
        col = self._layout.P + n
        self._ids[0, col], self._mask[0, col] = token, 1
        self._n_generated[0] = n + 1

    def _finish(self, turns: EndedTurns) -> Finished | None:
        """Record the ended turns; describe the rows whose episode finished, with this step's
        rewards (``reward_placement``), and the rewards paid to the rows that go on."""
        rows, eos, texts, rewards = turns.rows, turns.eos, turns.texts, turns.rewards
        parts, placement = turns.parts, self.reward_placement
        if self._writes_tokens:
            for r, text, reward in zip(rows.tolist(), texts, rewards.tolist()):
                self._turns.history[r].texts.append(text)
                self._turns.history[r].scores.append(reward)
            for r in turns.going_on:  # the next turn starts after the reply
                self._turns.turn_start[r] = self._turns.env_end[r] = self._n_generated[r]
        paid_rows, paid = _EMPTY_ROWS, _EMPTY_REWARDS
        if turns.going_on:
            keep = ~np.isin(rows, turns.going_on)  # (k,)
            if placement == "turn":
                paid_rows, paid = rows[~keep], rewards[~keep]
            if not keep.any():
                if placement != "turn":
                    return None
                return Finished(_EMPTY_ROWS, [], _EMPTY_REWARDS, {}, _EMPTY_ROWS.astype(bool),
                                _EMPTY_REWARDS, {}, paid_rows, paid)  # fmt: skip
            rows, eos, rewards = rows[keep], eos[keep], rewards[keep]
            texts = [t for t, k in zip(texts, keep) if k]
            parts = {name: values[keep] for name, values in parts.items()}
        histories = [self._turns.history[r] for r in rows.tolist()] if self._writes_tokens else []
        score = rewards  # one turn, or "last": the last turn's reward
        if placement != "last" and self._writes_tokens:
            score = np.array([sum(h.scores) for h in histories], dtype=np.float64)
        step_reward = rewards if placement == "turn" else score
        penalty = self.missing_eos_penalty
        step_reward = step_reward - penalty * ~eos if penalty else step_reward
        infos = {}
        if self._writes_tokens:
            infos = final_infos(histories, self._per_turn_keys, self._rules.has_tools)
        return Finished(rows, texts, score, parts, eos, step_reward, infos, paid_rows, paid)

    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(encode_text(self.tokenizer, text), dtype=np.int64)
