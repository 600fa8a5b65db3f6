"""TextArena's single-player games as text tasks (``textenv.text_task``): ``TextArenaTask``.

One episode plays one game. The prompt is the game's opening messages (its rules, and its board
where it shows one); each agent turn (the text up to EOS) is played as one move; the env's reply is
what the game then tells the player, without the echo of the agent's own move: a hint ("The target
number is higher."), the new board, or TextArena's invalid-move message (each game allows one
invalid move in a row: the agent gets the message and moves again; a second one ends the game).
The reward is 0.0 until the game ends, then the game's final reward for player 0 (``close()``):
1.0 for a win, and for most games the fraction of the puzzle done otherwise. When the game ends
the reply is None.

    >>> task = TextArenaTask("GuessTheNumber-v0")  # env: task="ta:GuessTheNumber-v0"
    >>> prompt, state = task.reset(np.random.default_rng(0), "train")  # the target is 4
    >>> task.respond(state, "[10]")
    ('The target number is lower.', 0.0, False)
    >>> task.respond(state, "[4]")
    (None, 1.0, True)

``config`` is passed to the game's constructor on top of the registry's kwargs for ``game_id``
(TextArena's ``make(game_id, **kwargs)``), e.g. ``{"min_number": 1, "max_number": 20,
"max_turns": 10}`` for GuessTheNumber or ``{"num_disks": 3, "max_turns": 14}`` for TowerOfHanoi.
Moves go through the action wrappers the id registers (``ActionFormattingWrapper`` for most
games: a move without brackets is wrapped in ``[...]``; the ``-raw`` ids register none).
TextArena's observation wrappers (which re-send the whole history every turn) are not used: the
messages are read from the base game and written one per line.

**Splits.** TextArena games have no splits, so the game seed is drawn from ``rng`` in a set
that depends on ``split``: seeds ending in 0-7 for "train", in 8 for "validation", in 9 for
"test" (``seed % 10``), so the three splits never share a seed. Disjoint seeds are not disjoint
puzzles: GuessTheNumber 1..20 has 20 targets and TowerOfHanoi a single start.

**Reproducibility.** Games use Python's process-global ``random`` (``State.__init__`` calls
``random.seed(seed)``, moves draw from it). Each episode keeps its own ``random`` state: every
call into the game swaps it in and swaps the caller's back, so the same ``rng`` gives the same
episodes however many games are stepped in turn, in any order, and the global ``random`` is left
as it was (importing textarena draws from it too, through ``rich``: that is undone). What a game
prints on stdout (RushHour, LogicPuzzle) is swallowed.

**Games** (probed with TextArena 0.7.4 on Python 3.11, no network: each registered id was made,
reset and played): ``SUPPORTED_GAMES`` lists the single-player games that run offline, with all
their registered variants (``GuessTheNumber-v0-hardcore``, ``-train``, ``-raw``, ...). The other
single-player games are refused with the reason (``REFUSED_GAMES``): an LLM judge through
OpenRouter (an API key and the network), NLTK's ``words`` corpus (a network download), Python
3.12 f-string syntax in their source (a SyntaxError on 3.10/3.11), packages TextArena does not
install. Every other registered game is for two or more players. An unknown id gets the close
matches.

**Demonstrations** (``demonstration``, for supervised fine-tuning) are scripted for
GuessTheNumber (binary search, moves like ``[10]``) and TowerOfHanoi (the optimal solution, one
move like ``[A C]`` a turn), played through this adapter, so the texts are the env's exactly.

**Sizes** (bytes = tokens of the default byte tokenizer; measured on 300 demonstrations):

- GuessTheNumber-v0 (1..20, 10 turns): prompt 508 bytes; a reply 27-28 ("The target number is
  higher."); a move 3-4 ("[10]"). A demonstrated episode is 1-5 moves (3.7 on average): at most
  132 bytes after the prompt (89 on average), 640 in all.
- TowerOfHanoi-v0 (3 disks, 14 turns): prompt 357 (the rules and "Current Board: ..."); a reply
  67-69 ("You moved disk 1 from A to C." and the board); a move 5 ("[A C]"). A demonstrated
  episode is 7 moves and 6 replies: 35 + 410 = 445 bytes after the prompt, 802 in all.
- An invalid move's reply is TextArena's message, 177 (TowerOfHanoi) to 194 (GuessTheNumber).

So ``max_prompt_tokens=512`` holds both prompts, and ``max_new_tokens`` (agent tokens, one EOS
a turn, and env tokens) 256 a GuessTheNumber episode (137 for the longest demonstration), 512 a
TowerOfHanoi one (452). Other games' openings are longer: 2048 ~400, Bandit ~620, Minesweeper
~1000, Set ~1100, Crosswords, LogicPuzzle and Sudoku ~1500-2400. ``prompt=`` can shorten the
rules (a fixed text, or a function of TextArena's opening text); the game is unchanged. Most
games start at once; a few generate their puzzle slowly (a reset of RushHour-v0 ~0.6 s,
Sudoku-v0-hard ~0.7 s, Sokoban-v0-medium ~3.5 s on one CPU core).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import io
import random
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# The single-player games (TextArena's name, before "-v0") that run offline; see the module doc.
SUPPORTED_GAMES: tuple[str, ...] = (
    "2048",
    "Bandit",
    "Blackjack",
    "Countdown",
    "Crosswords",
    "Cryptarithm",
    "FifteenPuzzle",
    "FrozenLake",
    "GuessTheNumber",
    "LightsOut",
    "LogicPuzzle",
    "Mastermind",
    "Minesweeper",
    "PegJump",
    "RushHour",
    "Secretary",
    "Set",
    "Slitherlink",
    "Sokoban",
    "Sudoku",
    "ThreeCardMonte",
    "TowerOfHanoi",
)

_LLM = "needs an LLM through OpenRouter (an OPENROUTER_API_KEY and the network)"
_NLTK = "needs NLTK's 'words' corpus, a network download (nltk.download)"
_PY312 = (
    "its TextArena 0.7.4 source uses Python 3.12 f-string syntax (a SyntaxError before 3.12), "
    "so it could not be checked here"
)
# Single-player games that are refused, and why.
REFUSED_GAMES: dict[str, str] = {
    "GuessWho": _LLM,
    "TwentyQuestions": _LLM,
    "Hangman": _NLTK,
    "WordLadder": _NLTK,
    "Wordle": _NLTK,
    "WordSearch": _NLTK,
    "Klondike": _PY312,
    "UltimateTexasHoldem": _PY312,
    "BabyAiText": "needs the gym, babyai and babyai_text packages, which TextArena does not install",
}
_MULTI = "it is a game for two or more players; TextArenaTask plays single-player games"

_SPLITS = ("train", "validation", "test")
_DEMOS = ("GuessTheNumber", "TowerOfHanoi")


def _import_textarena() -> Any:
    """``textarena``, imported with the global ``random`` state put back (``rich`` draws from it
    on import), or an ImportError naming the extra."""
    global _TEXTARENA
    saved = random.getstate()
    try:
        import textarena
    except ImportError as e:
        raise ImportError(
            f'TextArenaTask needs textarena, which is not installed ({e}): pip install -e ".[tasks]"'
            " (or pip install textarena)"
        ) from e
    finally:
        random.setstate(saved)
    _TEXTARENA = textarena
    return textarena


_TEXTARENA: Any = None


def _textarena() -> Any:
    """The imported ``textarena`` (a task holds no module, so it can be deep-copied)."""
    return _TEXTARENA if _TEXTARENA is not None else _import_textarena()


def family(game_id: str) -> str:
    """The game's name in a TextArena id: ``"GuessTheNumber-v0-hardcore"`` -> ``"GuessTheNumber"``."""
    return re.split(r"-v\d", game_id, maxsplit=1)[0]


def supported_games() -> list[str]:
    """Every registered TextArena id this adapter plays (all variants of ``SUPPORTED_GAMES``)."""
    ta = _import_textarena()
    registry = ta.envs.registration.ENV_REGISTRY
    return [gid for gid in registry if family(gid) in SUPPORTED_GAMES]


def _supported_list() -> str:
    return (
        ", ".join(f"{name}-v0" for name in SUPPORTED_GAMES)
        + " (and their registered variants: -hardcore, -train, -raw, ...; supported_games())"
    )


def split_of(seed: int) -> str:
    """The split whose episodes use game seed ``seed``: ``seed % 10`` 0-7 train, 8 validation,
    9 test."""
    r = seed % 10
    return "validation" if r == 8 else "test" if r == 9 else "train"


def _draw_seed(rng: np.random.Generator, split: str) -> int:
    k = int(rng.integers(0, 2**28))
    if split == "train":
        return 10 * (k // 8) + k % 8
    if split == "validation":
        return 10 * k + 8
    if split == "test":
        return 10 * k + 9
    raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")


def _fix_swapped_args(state: Any) -> None:
    """Undo two argument mix-ups in TextArena 0.7.4's games, on this game's state only:

    - Countdown, Cryptarithm, Slitherlink and ThreeCardMonte call ``set_invalid_move(reward,
      reason)``, but it takes ``(reason, reward)``: the player would read "Reason: 0.5" and the
      game's final reward would be the message.
    - Countdown, Cryptarithm and Slitherlink echo a move with ``add_observation(player_id, action,
      PLAYER_ACTION)``, but it takes ``(message, observation_type, from_id)``: the echo would be
      a message "0" of an unknown type, which the reply would show.

    The fixes are methods bound to ``state`` (``copy.deepcopy`` binds them to the copy)."""
    state.set_invalid_move = types.MethodType(_set_invalid_move, state)
    state.add_observation = types.MethodType(_add_observation, state)


def _set_invalid_move(self: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs.update(zip(("reason", "reward"), args))
    if isinstance(kwargs.get("reward"), str) and isinstance(kwargs.get("reason"), int | float):
        kwargs["reason"], kwargs["reward"] = kwargs["reward"], kwargs["reason"]
    return type(self).set_invalid_move(self, **kwargs)


def _add_observation(self: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs.update(zip(("message", "observation_type", "from_id", "to_id"), args))
    player_action = _textarena().ObservationType.PLAYER_ACTION
    if kwargs.get("from_id") is player_action and isinstance(kwargs.get("message"), int):
        kwargs["message"], kwargs["observation_type"], kwargs["from_id"] = (
            kwargs["observation_type"],
            player_action,
            kwargs["message"],
        )
    return type(self).add_observation(self, **kwargs)


def _format(messages: list[tuple[int, str, Any]], player_action: Any) -> str:
    """The game's messages to the player, one per line (trailing spaces dropped), without the
    echo of the player's own moves (a single-player game's moves are all the agent's: some
    games send them from player 0, TowerOfHanoi from the game)."""
    lines = []
    for _, message, kind in messages:
        if kind is player_action:
            continue
        text = "\n".join(line.rstrip() for line in str(message).strip("\n").splitlines())
        if text.strip():
            lines.append(text)
    return "\n".join(lines)


class TextArenaGame:
    """One episode's state: the game (``env``, TextArena's wrapped env; ``base``, the game under
    the wrappers), its own ``random`` state, its ``seed``, and once it is over ``done`` and
    ``reward``."""

    def __init__(self, env: Any, base: Any, seed: int, random_state: tuple) -> None:
        self.env, self.base, self.seed = env, base, seed
        self.random_state = random_state
        self.done, self.reward, self.turns = False, 0.0, 0

    def __repr__(self) -> str:
        end = f", reward={self.reward}" if self.done else ""
        return f"TextArenaGame({self.base.env_id}, seed={self.seed}, turns={self.turns}{end})"


class TextArenaTask:
    """A text task that plays one single-player TextArena game per episode (module docstring).

    Args:
        game_id: a TextArena id, e.g. ``"GuessTheNumber-v0"`` or ``"TowerOfHanoi-v0"`` (a
            leading ``"ta:"`` is dropped); one of ``supported_games()``.
        config: keyword arguments for the game's constructor, over the registry's for
            ``game_id``, e.g. ``{"max_number": 50}`` or ``{"num_disks": 4, "max_turns": 30}``.
        prompt: None (default) keeps the game's opening text as TextArena writes it; a str
            replaces it (only for games whose opening text is the same every episode, e.g.
            GuessTheNumber, TowerOfHanoi: checked); a callable gets the opening text and returns
            the prompt (e.g. a shorter one). The game is unchanged either way.
    """

    def __init__(
        self,
        game_id: str,
        config: dict[str, Any] | None = None,
        *,
        prompt: str | Callable[[str], str] | None = None,
    ) -> None:
        ta = _import_textarena()
        if game_id.startswith("ta:"):
            game_id = game_id[3:]
        registry = ta.envs.registration.ENV_REGISTRY
        if game_id not in registry:
            close = difflib.get_close_matches(game_id, list(registry), n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown TextArena game {game_id!r}{hint} Supported: {_supported_list()}"
            )
        name = family(game_id)
        if name not in SUPPORTED_GAMES:
            reason = REFUSED_GAMES.get(name, _MULTI)
            raise ValueError(
                f"TextArena game {game_id!r} is not supported: {reason}. "
                f"Supported: {_supported_list()}"
            )
        if prompt is not None and not (isinstance(prompt, str) or callable(prompt)):
            raise TypeError(f"prompt must be None, a str or a callable, got {prompt!r}")
        self.game_id, self.family = game_id, name
        self.config = dict(config or {})
        self.prompt, self._opening = prompt, None
        self.name = f"ta:{game_id}"
        spec = registry[game_id]
        self.kwargs = {**spec.kwargs, **self.config}
        entry = spec.entry_point
        if isinstance(entry, str):  # import the game's module once, outside any game's random
            module, cls = entry.split(":")
            entry = self._quiet_random(lambda: getattr(importlib.import_module(module), cls))
        params = inspect.signature(entry.__init__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = set(self.config) - set(params) - {"self"}
        if unknown and not takes_any:
            raise ValueError(
                f"config for {game_id}: unknown keys {sorted(unknown)}; {entry.__name__} takes "
                f"{[p for p in params if p != 'self']} (registry defaults: {spec.kwargs})"
            )
        self._quiet_random(lambda: ta.make(game_id, **self.config))  # the config's values too

    def __repr__(self) -> str:
        config = f", {self.config}" if self.config else ""
        return f"TextArenaTask({self.game_id!r}{config})"

    # -- calls into the game, under its own random state ------------------------------------------

    @staticmethod
    def _quiet_random(fn: Callable[[], Any]) -> Any:
        saved = random.getstate()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return fn()
        finally:
            random.setstate(saved)

    @contextlib.contextmanager
    def _in_game(self, game: TextArenaGame) -> Iterator[None]:
        """Swap the game's ``random`` state in (and stdout out) for a call into the game."""
        saved = random.getstate()
        random.setstate(game.random_state)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            game.random_state = random.getstate()
            random.setstate(saved)

    def _observe(self, game: TextArenaGame) -> str:
        _, messages = game.base.get_observation()
        return _format(messages, _textarena().ObservationType.PLAYER_ACTION)

    # -- the text-task protocol ------------------------------------------------------------------

    def reset(self, rng: np.random.Generator, split: str) -> tuple[str, TextArenaGame]:
        """A new game with a seed drawn from ``rng`` in ``split``'s seed set: (its opening
        messages, or ``prompt``'s text; the game state)."""
        seed = _draw_seed(rng, split)
        saved = random.getstate()
        random.seed(seed)
        game = TextArenaGame(None, None, seed, random.getstate())
        random.setstate(saved)
        with self._in_game(game):
            game.env = _textarena().make(self.game_id, **self.config)
            base = game.env
            while isinstance(base, _textarena().Wrapper):
                base = base.env
            game.base = base
            base.reset(num_players=1, seed=seed)
            _fix_swapped_args(base.state)
            opening = self._observe(game)
        return self._prompt(opening), game

    def _prompt(self, opening: str) -> str:
        if self.prompt is None:
            return opening
        if callable(self.prompt):
            return self.prompt(opening)
        if self._opening is None:
            self._opening = opening
        elif opening != self._opening:
            raise ValueError(
                f"{self.game_id}: the game's opening text differs between episodes (it shows the "
                "board), so a fixed prompt str would hide it; pass prompt as a callable of the "
                "opening text instead"
            )
        return self.prompt

    def respond(self, state: TextArenaGame, text: str) -> tuple[str | None, float, bool]:
        """Play ``text`` as the agent's move: (the game's new messages, or None when it ended;
        0.0, or the final reward when it ended; whether it ended)."""
        if state.done:
            raise RuntimeError(f"{state!r} is over; reset for a new episode")
        with self._in_game(state):
            done, _ = state.env.step(text)
            state.turns += 1
            if not done:
                return self._observe(state), 0.0, False
            rewards, _ = state.env.close()
        state.done = True
        state.reward = _final_reward(rewards, self.game_id)
        return None, state.reward, True

    def reference(self, state: TextArenaGame) -> str | None:
        """None: a game has no reference answer."""
        return None

    # -- scripted demonstrations -----------------------------------------------------------------

    def demonstration(
        self, rng: np.random.Generator, split: str
    ) -> tuple[str, list[tuple[str, str | None]]]:
        """A winning episode for supervised fine-tuning, played through this adapter: (the
        prompt, [(agent turn text, env reply or None), ...]). GuessTheNumber: binary search;
        TowerOfHanoi: the optimal solution. Other games: NotImplementedError."""
        if self.family not in _DEMOS:
            raise NotImplementedError(
                f"no scripted demonstration for {self.game_id}: only for "
                f"{', '.join(f'{g}-v0' for g in _DEMOS)} (and their variants)"
            )
        prompt, game = self.reset(rng, split)
        script = _guess_the_number(game.base) if self.family == "GuessTheNumber" else None
        moves = _hanoi_moves(game.base) if self.family == "TowerOfHanoi" else None
        turns: list[tuple[str, str | None]] = []
        reply: str | None = None
        while not game.done:
            move = script.send(reply) if script is not None else next(moves)
            reply, _, _ = self.respond(game, move)
            turns.append((move, reply))
        if game.reward != 1.0:
            raise RuntimeError(
                f"the scripted {self.game_id} demonstration did not win ({game!r}, config "
                f"{self.kwargs}): is max_turns too small for the game?"
            )
        return prompt, turns


def _final_reward(rewards: Any, game_id: str) -> float:
    try:
        return float(rewards[0])
    except (TypeError, KeyError, ValueError):
        raise RuntimeError(
            f"{game_id} ended with rewards {rewards!r}: no number for player 0"
        ) from None


def _guess_the_number(base: Any) -> Any:
    """Binary search: yields "[n]", is sent each reply ("... higher." / "... lower.")."""
    lo, hi = base.min_number, base.max_number
    if (hi - lo + 1).bit_length() > base.max_turns:
        raise ValueError(
            f"GuessTheNumber {lo}..{hi} needs up to {(hi - lo + 1).bit_length()} guesses, "
            f"max_turns is {base.max_turns}"
        )
    while True:
        guess = (lo + hi) // 2
        reply = yield f"[{guess}]"
        if reply is None:
            return
        if "higher" in reply:
            lo = guess + 1
        elif "lower" in reply:
            hi = guess - 1
        else:
            raise RuntimeError(f"GuessTheNumber: unexpected reply {reply!r}")


def _hanoi_moves(base: Any) -> Iterator[str]:
    """The optimal solution, "[A C]" moves from A to C."""
    n = base.num_disks
    if 2**n - 1 > base.max_turns:
        raise ValueError(
            f"TowerOfHanoi with {n} disks needs {2**n - 1} moves, max_turns is {base.max_turns}"
        )

    def solve(k: int, src: str, dst: str, via: str) -> Iterator[str]:
        if k:
            yield from solve(k - 1, src, via, dst)
            yield f"[{src} {dst}]"
            yield from solve(k - 1, via, dst, src)

    return solve(n, "A", "C", "B")
