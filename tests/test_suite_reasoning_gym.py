"""textenv.suites.reasoning_gym: reasoning-gym datasets as text tasks.

Rewards are exactly the dataset's own score_answer, splits are disjoint by question text (also
where seed-based splitting repeats questions), draws are reproducible, and the errors are clear.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

reasoning_gym = pytest.importorskip("reasoning_gym")

from textenv.suites import reasoning_gym as rgt  # noqa: E402
from textenv.suites.reasoning_gym import SPLITS, ReasoningGymTask, split_of  # noqa: E402
from textenv.text_task import TextTask  # noqa: E402

POOL = 3000  # smaller than the default pool: the tests stay fast
CONFIGS = {
    "spell_backward": {"min_word_len": 3, "max_word_len": 5},
    "basic_arithmetic": {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 2,
        "max_digits": 2,
        "operators": ("+", "-"),
        "allow_parentheses": False,
        "allow_negation": False,
    },
    "letter_counting": {"min_words": 2, "max_words": 3},
    "chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2},
    "count_bits": {"max_n": 255},
}
NAMES = list(CONFIGS)


@pytest.fixture(scope="module")
def tasks() -> dict[str, ReasoningGymTask]:
    return {
        name: ReasoningGymTask(name, config, pool_size=POOL) for name, config in CONFIGS.items()
    }


def _near_misses(answer: str) -> list[str]:
    changed = answer[:-1] + ("0" if answer[-1] != "0" else "1")
    return [
        answer,
        f"  {answer}\n",
        answer + "x",
        answer + answer,
        "-" + answer,
        "+0" + answer,
        answer + ".0",
        answer[:-1],
        changed,
        answer.upper(),
        f"The answer is {answer}",
        "",
        " ",
    ]


def _random_strings(rng: np.random.Generator, n: int) -> list[str]:
    alphabet = list("0123456789-+.,eE abcxyzAB\n\t") + ["é", "日"]
    return ["".join(rng.choice(alphabet, size=rng.integers(0, 8))) for _ in range(n)]


@pytest.mark.parametrize("name", NAMES)
def test_rewards_are_the_datasets_own_score(tasks, name) -> None:
    task = tasks[name]
    scorer = reasoning_gym.create_dataset(name, seed=1, size=10, **CONFIGS[name])  # independent
    rng = np.random.default_rng(0)
    seen = set()
    for split in SPLITS:
        for _ in range(15):
            prompt, entry = task.reset(rng, split)
            for text in _near_misses(entry["answer"]) + _random_strings(rng, 10):
                reply, reward, done = task.respond(entry, text)
                expected = scorer.score_answer(text.strip(), entry)
                assert (reply, done) == (None, True)
                assert type(reward) is float and reward == expected, (text, reward, expected)
                assert math.isfinite(reward) and 0.0 <= reward <= 1.0
                seen.add("one" if reward == 1.0 else "zero" if reward == 0.0 else "partial")
    assert seen == {"one", "zero", "partial"}  # the responses exercised every kind of score


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_disjoint_by_question_and_non_empty(tasks, name) -> None:
    task = tasks[name]
    questions = {s: [e["question"] for e in task.entries(s)] for s in SPLITS}
    for s in SPLITS:
        assert questions[s], s
        assert len(set(questions[s])) == len(questions[s]) == task.split_sizes[s]
        assert all(split_of(q) == s for q in questions[s])
    assert not set(questions["train"]) & set(questions["validation"])
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["validation"]) & set(questions["test"])
    # every draw of a split comes from that split
    rng = np.random.default_rng(1)
    for s in SPLITS:
        allowed = set(questions[s])
        for _ in range(20):
            prompt, entry = task.reset(rng, s)
            assert prompt == entry["question"] + "\n" and entry["question"] in allowed


@pytest.mark.parametrize("name", ["chain_sum", "count_bits"])
def test_seed_splitting_would_repeat_questions_where_the_task_does_not(tasks, name) -> None:
    def questions(seed: int, size: int) -> set[str]:
        dataset = reasoning_gym.create_dataset(name, seed=seed, size=size, **CONFIGS[name])
        return {dataset[i]["question"] for i in range(size)}

    assert questions(0, 2000) & questions(10**6, 200)  # the naive split leaks test questions
    task = tasks[name]
    train = {e["question"] for e in task.entries("train")}
    assert not train & {e["question"] for e in task.entries("test")}


def test_split_of_a_question_is_fixed_by_its_text(tasks) -> None:
    # a stable hash (the same in every process): pinned values
    q = "How many 1 bits are there in the binary representation of the number 217?"
    assert rgt.question_fraction(q) == pytest.approx(0.38787650768840953, abs=1e-15)
    assert split_of(q) == "train" and split_of("Calculate 5 - 33.") == "test"
    # a question's split does not depend on the pool it came from
    small = ReasoningGymTask("chain_sum", CONFIGS["chain_sum"], pool_size=500, pool_seed=7)
    large = tasks["chain_sum"]
    for s in SPLITS:
        assert all(split_of(e["question"]) == s for e in small.entries(s))
    shared = {e["question"] for e in small.entries("test")} & {
        e["question"] for s in SPLITS for e in large.entries(s)
    }
    assert shared <= {e["question"] for e in large.entries("test")}


def test_same_seed_same_items(tasks, monkeypatch) -> None:
    task = tasks["spell_backward"]

    def draws(t: ReasoningGymTask, seed: int, split: str = "train") -> list[str]:
        rng = np.random.default_rng(seed)
        return [t.reset(rng, split)[0] for _ in range(20)]

    assert draws(task, 3) == draws(task, 3)
    assert draws(task, 3) != draws(task, 4)
    assert draws(task, 3, "test") == draws(task, 3, "test")
    # a pool built afresh (as in another process) is the same pool
    monkeypatch.setattr(rgt, "_POOLS", {})
    rebuilt = ReasoningGymTask("spell_backward", CONFIGS["spell_backward"], pool_size=POOL)
    assert rebuilt.dataset is not task.dataset
    assert rebuilt.split_sizes == task.split_sizes
    assert draws(rebuilt, 3) == draws(task, 3)
    # reset and demonstration draw the same question from the same rng state
    prompts = [task.demonstration(np.random.default_rng(s), "train")[0] for s in range(5)]
    assert prompts == [task.reset(np.random.default_rng(s), "train")[0] for s in range(5)]


@pytest.mark.parametrize("name", NAMES)
def test_demonstration_scores_one_and_reference_is_the_answer(tasks, name) -> None:
    task = tasks[name]
    rng = np.random.default_rng(2)
    for split in SPLITS:
        for _ in range(10):
            prompt, turns = task.demonstration(rng, split)
            assert prompt.endswith("\n") and len(turns) == 1
            (answer, reply) = turns[0]
            assert reply is None and isinstance(answer, str) and answer
            entry = next(e for e in task.entries(split) if e["question"] + "\n" == prompt)
            assert task.reference(entry) == entry["answer"] == answer
            assert task.respond(entry, answer) == (None, 1.0, True)


def test_name_repr_and_protocol(tasks) -> None:
    task = tasks["count_bits"]
    assert task.name == "rg:count_bits" and isinstance(task, TextTask)
    assert "rg:count_bits" in repr(task) and "max_n" in repr(task) and len(repr(task)) < 200
    assert ReasoningGymTask("rg:count_bits", {"max_n": 255}, pool_size=POOL).name == task.name
    assert sum(task.split_sizes.values()) == 255  # every number of the small space, once


def test_small_item_space_empty_split_and_the_shared_option() -> None:
    with pytest.raises(ValueError, match=r"empty.*disjoint=False"):
        ReasoningGymTask("count_bits", {"max_n": 3}, pool_size=100)
    task = ReasoningGymTask("count_bits", {"max_n": 3}, pool_size=100, disjoint=False)
    assert task.split_sizes == {"train": 3, "validation": 3, "test": 3}
    assert task.entries("train") == task.entries("test")
    assert "disjoint=False" in repr(task)


def test_errors(tasks, monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"'no_such_set'.*spell_backward"):
        ReasoningGymTask("no_such_set")
    with pytest.raises(ValueError, match=r"did you mean 'spell_backward'"):
        ReasoningGymTask("spel_backward")
    with pytest.raises(ValueError, match=r"\['max_len'\].*min_word_len.*max_word_len"):
        ReasoningGymTask("spell_backward", {"max_len": 5})
    with pytest.raises(ValueError, match=r"\['seed'\].*pool_seed"):
        ReasoningGymTask("spell_backward", {"seed": 5})
    with pytest.raises(ValueError, match=r"max_word_len must be >= min_word_len"):
        ReasoningGymTask("spell_backward", {"min_word_len": 5, "max_word_len": 3})
    with pytest.raises(ValueError, match=r"failed to generate item 0"):
        ReasoningGymTask("spell_backward", {"min_word_len": 11, "max_word_len": 12}, pool_size=10)
    with pytest.raises(ValueError, match="fractions"):
        ReasoningGymTask("count_bits", {"max_n": 255}, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="pool_size"):
        ReasoningGymTask("count_bits", {"max_n": 255}, pool_size=0)
    task = tasks["chain_sum"]
    rng = np.random.default_rng(0)
    for method in (task.reset, task.demonstration):
        with pytest.raises(ValueError, match=r"'valid'.*'train', 'validation', 'test'"):
            method(rng, "valid")
    # a score outside [0, 1] is the dataset's bug: a clear error, not a silent reward
    entry = task.entries("train")[0]
    for bad in (1.5, -0.1, float("nan"), "1"):
        fake = type("Fake", (), {"score_answer": lambda self, a, e, bad=bad: bad})()
        monkeypatch.setattr(task, "dataset", fake)
        with pytest.raises(RuntimeError, match="not a number in"):
            task.respond(entry, "3")
    monkeypatch.undo()
    # reasoning-gym missing: the extra to install is named
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tasks\]"'):
        ReasoningGymTask("chain_sum", CONFIGS["chain_sum"], pool_size=POOL)


def test_through_the_env_rewards_equal_score_answer():
    """prompts="rg:NAME" in make_vec: each finished row's reward is the dataset's score_answer
    of the decoded response, on random responses."""
    import gymnasium as gym

    config = {"min_word_len": 3, "max_word_len": 5, "pool_size": POOL}
    env = gym.make_vec("TextRLHF-v0", num_envs=8, vectorization_mode="vector_entry_point",
                       prompts="rg:spell_backward", task_kwargs=config,
                       max_prompt_tokens=64, max_new_tokens=6)  # fmt: skip
    task = env.unwrapped.task if hasattr(env, "unwrapped") else env.task
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    seen = 0
    for _ in range(6):
        actions = rng.choice([1, *range(3 + 97, 3 + 123)], size=8)  # EOS or a lowercase letter
        obs, rewards, terminated, _, info = env.step(actions)
        for r in np.flatnonzero(info.get("_score", np.zeros(8, dtype=bool))):
            entry = next(
                e for e in task.entries("train") if e["question"] + "\n" == info["prompt"][r]
            )
            expected = task.dataset.score_answer(info["response"][r].strip(), entry)
            assert (
                rewards[r] == pytest.approx(expected, abs=0)
                and info["reference"][r] == entry["answer"]
            )
            seen += 1
    assert seen == 8
