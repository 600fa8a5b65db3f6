"""textenv.suites.textarena: TextArena's single-player games as text tasks (rewards, replies,
reproducibility, splits, demonstrations, refused games)."""

from __future__ import annotations

import copy
import random
import sys

import numpy as np
import pytest

pytest.importorskip("textarena")

from textenv.suites.textarena import (  # noqa: E402
    SUPPORTED_GAMES,
    TextArenaTask,
    split_of,
    supported_games,
)
from textenv.text_task import TextTask  # noqa: E402


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_is_a_text_task_with_a_name():
    task = TextArenaTask("ta:GuessTheNumber-v0", {"max_number": 30})
    assert isinstance(task, TextTask)
    assert task.name == "ta:GuessTheNumber-v0"
    assert repr(task) == "TextArenaTask('GuessTheNumber-v0', {'max_number': 30})"
    assert "GuessTheNumber-v0-hardcore" in supported_games()
    assert "TowerOfHanoi-v0-raw" in supported_games()


def test_guess_the_number_hints_and_win():
    task = TextArenaTask("GuessTheNumber-v0")
    prompt, state = task.reset(rng(), "train")
    assert "between 1 and 20 within 10 turns" in prompt
    target = state.base.game_number
    wrong = 1 if target != 1 else 20
    reply, reward, done = task.respond(state, f"[{wrong}]")
    assert (reward, done) == (0.0, False)
    assert reply == f"The target number is {'higher' if wrong < target else 'lower'}."
    assert task.reference(state) is None
    assert task.respond(state, f"I guess [{target}]") == (None, 1.0, True)
    assert state.done and state.reward == 1.0
    with pytest.raises(RuntimeError, match="is over"):
        task.respond(state, "[3]")


def test_invalid_moves_get_a_retry_then_the_game_reward():
    task = TextArenaTask("GuessTheNumber-v0")
    _, state = task.reset(rng(), "train")
    reply, reward, done = task.respond(state, "no idea")  # "[no idea]": no number
    assert reply.startswith("You attempted an invalid move.") and (reward, done) == (0.0, False)
    assert task.respond(state, "still no idea") == (None, 0.0, True)  # no guess: 0% done


def test_config_reaches_the_game():
    task = TextArenaTask("GuessTheNumber-v0", {"min_number": 1, "max_number": 3, "max_turns": 2})
    prompt, state = task.reset(rng(), "train")
    assert "between 1 and 3 within 2 turns" in prompt
    assert 1 <= state.base.game_number <= 3
    prompt, _ = TextArenaTask("TowerOfHanoi-v0", {"num_disks": 4, "max_turns": 15}).reset(
        rng(), "train"
    )
    assert "with 4 disks" in prompt and "A: [4, 3, 2, 1]" in prompt
    with pytest.raises(ValueError, match=r"unknown keys \['disks'\].*num_disks"):
        TextArenaTask("TowerOfHanoi-v0", {"disks": 3})


@pytest.mark.parametrize(
    ("game_id", "move"),
    [("GuessTheNumber-v0", "[10]"), ("TowerOfHanoi-v0", "[A C]"), ("Cryptarithm-v0", "[S 9]")],
)
def test_replies_do_not_echo_the_move(game_id, move):
    task = TextArenaTask(game_id)
    _, state = task.reset(rng(), "train")
    reply, _, done = task.respond(state, move)
    assert not done and reply
    lines = reply.splitlines()
    assert move not in lines and "0" not in lines, reply  # Cryptarithm's echo would be "0"
    if game_id == "TowerOfHanoi-v0":
        assert lines[0] == "You moved disk 1 from A to C."
    if game_id == "Cryptarithm-v0":
        assert "S → 9" in reply


def test_swapped_invalid_move_arguments_are_fixed():
    """Cryptarithm calls set_invalid_move(reward, reason): the reply names the reason and the
    final reward is a number."""
    task = TextArenaTask("Cryptarithm-v0")
    _, state = task.reset(rng(), "train")
    reply, _, _ = task.respond(state, "[S 9]")
    reply, _, done = task.respond(state, "[S x]")
    assert "Reason: Bad action format. Use `[A 5]`." in reply and not done
    reply, reward, done = task.respond(state, "[S x]")
    assert reply is None and done and reward == pytest.approx(1 / 8)  # 1 of 8 letters set


def play(task: TextArenaTask, seed: int, moves: list[str], interleave_with=None) -> list:
    """Episodes of ``task`` from ``seed``, each move of ``moves`` in turn until it ends; when
    ``interleave_with`` is given, its episodes are stepped between ours."""
    a = rng(seed)
    texts = []
    for _ in range(3):
        prompt, state = task.reset(a, "train")
        texts.append(prompt)
        other = interleave_with and interleave_with.reset(rng(seed + 1), "train")[1]
        for t in range(30):
            reply, reward, done = task.respond(state, moves[t % len(moves)])
            texts.append((reply, reward, done))
            if other is not None and not other.done:
                interleave_with.respond(other, moves[(t + 1) % len(moves)])
                random.random()  # the caller's own draws do not reach the games either
            if done:
                break
    return texts


@pytest.mark.parametrize(
    ("game_id", "moves"),
    [("Blackjack-v0", ["[hit]", "[stand]"]), ("GuessTheNumber-v0", ["[10]", "[5]", "[15]"])],
)
def test_episodes_are_reproducible_interleaved_and_leave_global_random_alone(game_id, moves):
    """Blackjack draws cards from the global random during the game."""
    random.seed(1234)
    before = random.getstate()
    task = TextArenaTask(game_id)
    alone = play(task, 5, moves)
    assert random.getstate() == before
    again = play(TextArenaTask(game_id), 5, moves)
    interleaved = play(task, 5, moves, interleave_with=TextArenaTask(game_id))
    assert alone == again == interleaved == play(task, 5, moves)
    assert play(task, 6, moves) != alone


def test_task_and_episode_deep_copy():
    """Envs are deep-copied (one per vector slot): a copy of a game mid-episode plays on alone."""
    task = TextArenaTask("Cryptarithm-v0")
    _, state = task.reset(rng(), "train")
    task.respond(state, "[S 9]")
    twin_task, twin = copy.deepcopy(task), copy.deepcopy(state)
    moves = ["[x]", "[E 5]", "[x]", "[x]"]
    ours = [task.respond(state, move) for move in moves]
    assert [twin_task.respond(twin, move) for move in moves] == ours
    assert ours[0][0].startswith("You attempted an invalid move. Reason: Bad action format.")
    assert ours[-1] == (None, 0.25, True)


def test_splits_use_disjoint_seeds():
    task = TextArenaTask("GuessTheNumber-v0")
    seeds = {}
    for split in ("train", "validation", "test"):
        a = rng(3)
        seeds[split] = {task.reset(a, split)[1].seed for _ in range(50)}
        assert {split_of(s) for s in seeds[split]} == {split}
    assert {s % 10 for s in seeds["train"]} <= set(range(8))
    assert {s % 10 for s in seeds["validation"]} == {8} and {s % 10 for s in seeds["test"]} == {9}
    assert not seeds["train"] & seeds["test"] and not seeds["validation"] & seeds["test"]
    with pytest.raises(ValueError, match="split must be one of"):
        task.reset(rng(), "dev")


def replay(task: TextArenaTask, seed: int, split: str) -> tuple[str, list]:
    """A demonstration's moves played again through reset/respond, as the env would."""
    prompt, turns = task.demonstration(rng(seed), split)
    again_prompt, state = task.reset(rng(seed), split)
    assert again_prompt == prompt
    assert [(move, task.respond(state, move)[0]) for move, _ in turns] == turns
    assert state.done and state.reward == 1.0
    return prompt, turns


def test_guess_the_number_demonstrations_win():
    task = TextArenaTask("GuessTheNumber-v0")
    lengths = set()
    for seed in range(12):
        _, turns = replay(task, seed, "train")
        assert turns[-1][1] is None and all(reply for _, reply in turns[:-1])
        assert all(move.startswith("[") and move.endswith("]") for move, _ in turns)
        lengths.add(len(turns))
    assert max(lengths) <= 5 and len(lengths) > 1
    _, turns = replay(TextArenaTask("GuessTheNumber-v0", {"max_number": 100}), 0, "test")
    assert len(turns) <= 7


def test_tower_of_hanoi_demonstration_wins():
    task = TextArenaTask("TowerOfHanoi-v0", {"num_disks": 3})
    prompt, turns = replay(task, 0, "validation")
    assert "Tower of Hanoi with 3 disks" in prompt
    assert [move for move, _ in turns] == [
        "[A C]", "[A B]", "[C B]", "[A C]", "[B A]", "[B C]", "[A C]"
    ]  # fmt: skip
    assert turns[0][1].startswith("You moved disk 1 from A to C.\nCurrent Board:\nA: [3, 2]")
    assert turns[-1][1] is None
    _, turns = replay(TextArenaTask("TowerOfHanoi-v0", {"num_disks": 2}), 1, "train")
    assert len(turns) == 3
    with pytest.raises(ValueError, match="needs 15 moves, max_turns is 14"):
        TextArenaTask("TowerOfHanoi-v0", {"num_disks": 4}).demonstration(rng(), "train")


def test_other_games_have_no_demonstration():
    with pytest.raises(NotImplementedError, match="Mastermind-v0.*GuessTheNumber-v0"):
        TextArenaTask("Mastermind-v0").demonstration(rng(), "train")


def test_prompt_option():
    fixed = TextArenaTask("GuessTheNumber-v0", prompt="Guess 1..20 as [n].\n")
    assert (
        fixed.reset(rng(), "train")[0] == fixed.reset(rng(1), "train")[0] == "Guess 1..20 as [n].\n"
    )
    short = TextArenaTask("TowerOfHanoi-v0", prompt=lambda text: text.split("\n", 1)[1])
    assert short.reset(rng(), "train")[0].startswith("You have to move the disks")
    sudoku = TextArenaTask("Sudoku-v0-very-easy", prompt="fixed")  # its opening shows the grid
    sudoku.reset(rng(), "train")
    with pytest.raises(ValueError, match="differs between episodes"):
        sudoku.reset(rng(1), "train")


def test_game_prints_are_swallowed(capsys):
    task = TextArenaTask("LogicPuzzle-v0")
    _, state = task.reset(rng(), "train")
    task.respond(state, "[x]")
    task.respond(state, "[x]")
    assert capsys.readouterr().out == ""


def test_multi_player_and_refused_games():
    with pytest.raises(ValueError, match=r"'TicTacToe-v0'.*two or more players.*GuessTheNumber-v0"):
        TextArenaTask("TicTacToe-v0")
    with pytest.raises(ValueError, match=r"'Wordle-v0'.*NLTK's 'words' corpus.*TowerOfHanoi-v0"):
        TextArenaTask("Wordle-v0")
    with pytest.raises(ValueError, match=r"'TwentyQuestions-v0'.*OpenRouter"):
        TextArenaTask("TwentyQuestions-v0")
    assert "TicTacToe" not in SUPPORTED_GAMES


def test_unknown_game_suggests_close_matches():
    with pytest.raises(
        ValueError, match=r"unknown TextArena game 'GuessTheNumbr-v0'.*GuessTheNumber-v0"
    ):
        TextArenaTask("GuessTheNumbr-v0")
    with pytest.raises(ValueError, match=r"did you mean TowerOfHanoi-v0"):
        TextArenaTask("TowerOfHanoi")


def test_missing_textarena_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "textarena", None)  # `import textarena` raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tasks\]"'):
        TextArenaTask("GuessTheNumber-v0")


def test_vector_env_episodes_are_reproducible_by_seed():
    """task="ta:GuessTheNumber-v0" in make_vec: the same seed gives the same games, replies and
    rewards (four games stepped in turn), and the global random state is left alone."""
    import random

    import gymnasium as gym

    def run(seed: int) -> list:
        env = gym.make_vec("TextRLHF-v0", num_envs=4, vectorization_mode="vector_entry_point",
                           task="ta:GuessTheNumber-v0", max_prompt_tokens=512,
                           max_new_tokens=96)  # fmt: skip
        obs, _ = env.reset(seed=seed)
        moves = [b + 3 for b in b"[7]"] + [1]
        out = []
        for t in range(96):
            obs, rewards, terminated, _, info = env.step(np.full(4, moves[t % 4]))
            out.append(rewards.tolist())
            if "responses" in info:
                out.append(
                    [list(x) if m else None for x, m in zip(info["responses"], info["_responses"])]
                )
            if terminated.all():
                break
        return out + [obs["input_ids"].tolist(), obs["from_env"].tolist()]

    state = random.getstate()
    first = run(3)
    assert random.getstate() == state
    assert run(3) == first and run(4) != first
