"""TextBatch: N text episodes as token arrays, and the one step that both envs take.

``TextRLHFVectorEnv`` steps a ``TextBatch`` of ``num_envs`` rows; ``TextRLHFEnv`` is a view over a
``TextBatch`` of one row (as Gymnasium's classic-control vector envs share their dynamics with the
single envs). So there is one step path, with or without tools and turns: a behaviour fix lands
once. The envs add the Gymnasium API around it: action checks, autoreset, the shape of infos.

Layout of a row, with ``P = max_prompt_tokens``, ``M = max_new_tokens``: ``ids[:P]`` is the prompt,
left-padded; ``ids[P + t]`` the t-th token after it (the agent's, or the env's: ``from_env``).
``n_gen`` counts the tokens after the prompt. The per-turn logic (scores, feedback, tools) is
``textenv.turns.TurnRules``; this module writes the tokens it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from textenv.args import TextEnvArgs
from textenv.data import PromptDataset
from textenv.rewards import Reward
from textenv.tasks import reference_for
from textenv.tokenizer import encode_text, end_of_turn_ids, make_batch_decoder, make_decoder
from textenv.turns import History, TurnRules, final_infos


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
    """The tokens that end a turn: EOS, plus the chat template's end-of-turn token when the
    prompts are rendered with the chat template (``textenv.tokenizer.end_of_turn_ids``)."""
    return end_of_turn_ids(tokenizer) if dataset.chat else (tokenizer.eos_token_id,)


@dataclass
class EndedTurns:
    """The k turns that end at a step (``TextBatch.step``'s own bookkeeping)."""

    rows: np.ndarray  # (k,)
    eos: np.ndarray  # (k,) bool: the turn ended with a stop token
    texts: list[str]
    scores: np.ndarray  # (k,)
    parts: dict[str, np.ndarray]
    going_on: list[int]  # the rows whose feedback was written: their episode goes on


@dataclass
class Finished:
    """The k rows whose episode ended at a step, and what their final infos hold."""

    rows: np.ndarray  # (k,) row indices
    responses: list[str]  # the last turn's text (EOS not included)
    score: np.ndarray  # (k,) the reward function's score of the last turn
    parts: dict[str, np.ndarray]  # component name -> (k,)
    eos: np.ndarray  # (k,) bool: ended with EOS (else at the length limit)
    rewards: np.ndarray  # (k,) score, less missing_eos_penalty without EOS
    turns: dict[str, tuple[list, np.ndarray]]  # turn/tool infos (textenv.turns.final_infos)


class TextBatch:
    """N episodes of one prompt set: token arrays, prompts and references, the one ``step``.

    Built from ``TextEnvArgs``; the envs read their settings (tokenizer, dataset, reward_fn, ...)
    from it. ``load_rows`` starts episodes, ``step`` advances them, ``obs`` copies the arrays.
    """

    def __init__(self, num_rows: int, args: TextEnvArgs) -> None:
        self.tokenizer, self.dataset, self.reward_fn = args.build()
        self.num_rows, self.missing_eos_penalty = num_rows, args.missing_eos_penalty
        self.P, self.M = P, M = args.max_prompt_tokens, args.max_new_tokens
        self.vocab_size = len(self.tokenizer)
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.stop_ids = episode_stop_ids(self.tokenizer, self.dataset)
        self.decode = make_decoder(self.tokenizer)
        self._decode_batch = make_batch_decoder(self.tokenizer)
        self.rules = TurnRules(self.reward_fn, args.tools, args.max_turns, args.feedback)
        self.max_tool_calls = args.max_tool_calls
        self.writes_tokens = args.writes_tokens  # tools or turns: from_env and the turn infos
        N, L = num_rows, P + M
        self.observation_space = make_observation_space(self.vocab_size, L, self.writes_tokens)

        self.ids = np.full((N, L), self.pad_id, dtype=np.int64)  # (N, L)
        self.mask = np.zeros((N, L), dtype=np.int8)  # (N, L)
        self.from_env = np.zeros((N, L), dtype=np.int8)  # (N, L) 1 on env tokens
        self.n_gen = np.zeros(N, dtype=np.int64)  # (N,) tokens after the prompt
        self.prompts: list[str] = [""] * N
        self.references: list[str | None] = [None] * N
        # the writes of env tokens (only when writes_tokens): where the turn and the agent's
        # text since the env's last token begin, and each row's turns so far
        self.turn_start = np.zeros(N, dtype=np.int64)  # (N,)
        self.env_end = np.zeros(N, dtype=np.int64)  # (N,)
        self.history = [History() for _ in range(N)]
        self._next = P + np.arange(N) * L  # (N,) flat index of each row's first generated token
        self._flat_ids, self._flat_mask = self.ids.reshape(-1), self.mask.reshape(-1)  # views
        self._is_stop = np.zeros(self.vocab_size, dtype=bool)  # (V,) token -> ends a turn
        self._is_stop[list(self.stop_ids)] = True
        self._is_last = np.zeros(M + 1, dtype=bool)  # (M + 1,) n_gen -> the last token fits
        self._is_last[M - 1] = True
        # One row (TextRLHFEnv): numpy's cost per call exceeds the work on one element, so a
        # step that ends nothing and asks no tool skips the (N,) masks, and writes are scalar.
        self._one_row_fast = N == 1 and not self.rules.has_tools

    # ---------------------------------------------------------------- reset
    def load_rows(
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
        P, ds = self.P, self.dataset
        at = slice(None) if rows is None else rows  # every row: a slice costs less than indices
        row_list = range(self.num_rows) if rows is None else rows.tolist()
        if forced is None:
            n_draws = len(row_list) // repeat
            if n_draws == 1:  # one prompt for every row: a scalar draw (the same value, faster)
                i = int(rng.integers(len(ds)))
                self.ids[at, :P], self.mask[at, :P] = ds.input_ids[i], ds.attention_mask[i]
                idx = [i] * len(row_list)
            else:
                draws = np.repeat(rng.integers(len(ds), size=n_draws), repeat)
                self.ids[at, :P], self.mask[at, :P] = ds.input_ids[draws], ds.attention_mask[draws]
                idx = draws.tolist()
            for r, i in zip(row_list, idx):
                self.prompts[r], self.references[r] = ds.prompts[i], ds.references[i]
        else:  # resolve every forced prompt before writing, so a bad one changes nothing
            resolved = [resolve_prompt(ds, prompt, ref) for prompt, ref in zip(forced, refs)]
            check_references(self.reward_fn, [(text, ref) for _, _, text, ref in resolved])
            for r, (ids, mask, text, ref) in zip(row_list, resolved):
                self.ids[r, :P], self.mask[r, :P] = ids, mask
                self.prompts[r], self.references[r] = text, ref
        self.ids[at, P:] = self.pad_id
        self.mask[at, P:] = 0
        self.n_gen[at] = 0
        if self.writes_tokens:
            self.from_env[at] = self.mask[at]
            self.turn_start[at], self.env_end[at] = 0, 0
            for r in row_list:
                self.history[r] = History()

    def obs(self) -> dict[str, np.ndarray]:
        """Copies of the (N, L) arrays (``from_env`` only when the env writes tokens)."""
        obs = {"input_ids": self.ids.copy(), "attention_mask": self.mask.copy()}
        if self.writes_tokens:
            obs["from_env"] = self.from_env.copy()
        return obs

    def text(self, row: int) -> str:
        """Prompt and text so far of ``row`` (for ``render``)."""
        return self.prompts[row] + self.decode(self.ids[row, self.P : self.P + self.n_gen[row]])

    # ---------------------------------------------------------------- step
    def step(self, actions: np.ndarray, live: np.ndarray | None = None) -> Finished | None:
        """Write each live row's action and the env's tokens after it; end the turns and the
        episodes that end at this step.

        ``actions`` (N,) valid token ids; ``live`` (N,) bool, the rows that act (None: all).
        Every turn that ends is scored in ONE reward call, before anything is written: a reward,
        feedback or tool that raises leaves the batch as it was. Returns the rows whose episode
        ended (``Finished``, with their rewards), or None.
        """
        if (  # TextRLHFEnv's usual step: the token is written and nothing else happens
            self._one_row_fast
            and live is None
            and not (self._is_stop[actions[0]] or self._is_last[self.n_gen[0]])
        ):
            self._write(actions, live, {}, {})
            return None
        n = self.n_gen
        # table lookups: indexing a small array costs less than a ufunc call
        if live is None:
            eos = self._is_stop[actions]  # (N,) EOS (or the chat end-of-turn token)
            ends = eos | self._is_last[n]  # (N,) the turn ends: EOS, or the last token that fits
        else:  # the actions of rows that do not act are not checked: clip them
            eos = self._is_stop.take(actions, mode="clip") & live
            ends = (eos | self._is_last[n]) & live
        replies: dict[int, np.ndarray] = {}  # row -> env tokens to write after the agent's token
        calls: dict[int, tuple[str, str]] = {}  # row -> the tool call those tokens answer
        if self.rules.has_tools:  # a tool result that does not fit ends the turn (in ``ends``)
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
        P, M = self.P, self.M
        asked = ~ends if live is None else live & ~ends
        for r in np.flatnonzero(asked).tolist():
            history, n = self.history[r], int(self.n_gen[r])
            if len(history.calls) >= self.max_tool_calls:
                continue
            call = self.rules.tool(
                self.decode(np.append(self.ids[r, P + self.env_end[r] : P + n], actions[r]))
            )
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
        """Score the turns that end in ``rows`` (k,) in one call; the feedback that fits goes
        into ``replies``."""
        eos = eos[rows]
        texts = self._turn_texts(rows, actions, eos)
        row_list = rows.tolist()
        prompts = [self.prompts[r] for r in row_list]
        references = [self.references[r] for r in row_list]
        histories = [self.history[r] for r in row_list] if self.writes_tokens else None
        scores, parts, feedback = self.rules.respond(prompts, references, texts, eos, histories)
        going_on = []
        for r, text in zip(row_list, feedback or ()):
            if text is not None:
                tokens = self._encode(text)
                if self.n_gen[r] + 1 + len(tokens) < self.M:  # else the episode ends here
                    replies[r] = tokens
                    going_on.append(r)
        return EndedTurns(rows, eos, texts, scores, parts, going_on)

    def _turn_texts(self, rows: np.ndarray, actions: np.ndarray, eos: np.ndarray) -> list[str]:
        """The text of the turn that ``actions`` (not yet written) end in each of ``rows``:
        from the turn's start (env tokens included) to the action, without a stop token."""
        if len(rows) < 4:  # a few rows: one decode each costs less than the batch's overhead
            P, texts = self.P, []
            for r, ended in zip(rows.tolist(), eos.tolist()):
                turn = self.ids[r, P + self.turn_start[r] : P + self.n_gen[r]]
                texts.append(self.decode(turn if ended else np.append(turn, actions[r])))
            return texts
        n = self.n_gen[rows]
        tokens = self.ids[rows, self.P :]  # (k, M) a copy
        tokens[np.arange(len(rows)), n] = actions[rows]
        lengths = n + 1 - eos
        if self.writes_tokens:
            start = self.turn_start[rows]
            if start.any():  # a later turn: shift it to the front
                cols = np.minimum(start[:, None] + np.arange(self.M), self.M - 1)
                tokens = np.take_along_axis(tokens, cols, axis=1)
                lengths -= start
        return self._decode_batch(tokens, lengths)

    def _write(
        self,
        actions: np.ndarray,
        live: np.ndarray | None,
        replies: dict[int, np.ndarray],
        calls: dict[int, tuple[str, str]],
    ) -> None:
        """Write each live row's action, then the env tokens of ``replies`` after it."""
        n = self.n_gen
        if live is None and self.num_rows == 1:  # (scalars: see _one_row_fast)
            col = self.P + int(n[0])
            self.ids[0, col], self.mask[0, col] = actions[0], 1
            n[0] += 1
        elif live is None:
            at = self._next + n  # (N,) flat index of each row's next token
            self._flat_ids[at], self._flat_mask[at] = actions, 1
            n += 1
        else:
            rows = np.flatnonzero(live)
            at = self._next[rows] + n[rows]
            self._flat_ids[at], self._flat_mask[at] = actions[rows], 1
            n[rows] += 1
        for r, tokens in replies.items():
            col, m = self.P + n[r], len(tokens)
            self.ids[r, col : col + m] = tokens
            self.mask[r, col : col + m], self.from_env[r, col : col + m] = 1, 1
            n[r] += m
            self.env_end[r] = n[r]
        for r, call in calls.items():
            self.history[r].calls.append(call)

    def _finish(self, turns: EndedTurns) -> Finished | None:
        """Record the ended turns; describe the rows whose episode finished, with their rewards."""
        rows, eos, texts, scores, parts = (
            turns.rows,
            turns.eos,
            turns.texts,
            turns.scores,
            turns.parts,
        )
        if self.writes_tokens:
            for r, text, score in zip(rows.tolist(), texts, scores.tolist()):
                self.history[r].texts.append(text)
                self.history[r].scores.append(score)
            for r in turns.going_on:  # the next turn starts after the feedback
                self.turn_start[r] = self.n_gen[r]
        if turns.going_on:
            keep = ~np.isin(rows, turns.going_on)  # (k,)
            if not keep.any():
                return None
            rows, eos, scores = rows[keep], eos[keep], scores[keep]
            texts = [t for t, k in zip(texts, keep) if k]
            parts = {name: values[keep] for name, values in parts.items()}
        penalty = self.missing_eos_penalty
        rewards = scores - penalty * ~eos if penalty else scores
        infos = {}
        if self.writes_tokens:
            histories = [self.history[r] for r in rows.tolist()]
            infos = final_infos(histories, self.rules.max_turns, self.rules.has_tools)
        return Finished(rows, texts, scores, parts, eos, rewards, infos)

    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(encode_text(self.tokenizer, text), dtype=np.int64)
