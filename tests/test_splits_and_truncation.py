"""Built-in task splits (train / validation / test) and truncation-aware reward-model scoring.

- Splits: hyperparameters are tuned on "validation" and "test" is reported once, so the held-out
  fifth of the strings (CRC32 % 5 == 0) is split in two; "train" must stay exactly as it was (the
  committed SFT model and preference data were built from it).
- Truncation: a response cut at max_new_tokens never produced EOS, so the reward model must not
  score it as if it had ended. The envs tell rewards that ask (``wants_ended``) which responses
  ended; the reward model appends EOS only to those, and `textrlhf rm` encodes cut training
  responses the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib

import numpy as np
import pytest
import torch
from helpers import EOS, PAD, byte_ids, save_tiny_model

from agents.rlhf.preferences import PreferencePair
from agents.rlhf.reward_model import RMConfig, load_reward_model, score_pairs
from textenv import TextRLHFEnv, TextRLHFVectorEnv, make_reward_fn, make_task
from textenv.rewards import Reward, RewardModel, encode_for_reward_model
from textenv.tasks import ALPHABET, SPLITS, TASK_NAMES, continuation_prompts, split_of
from textenv.tokenizer import default_tokenizer

# ----------------------------------------------------------------------------- splits


def _old_split(text: str) -> str:
    """The rule before the validation split existed."""
    return "test" if zlib.crc32(text.encode("utf-8")) % 5 == 0 else "train"


def _all_words(max_len: int = 5) -> list[str]:
    return [
        "".join(letters)
        for n in range(3, max_len + 1)
        for letters in itertools.product(ALPHABET, repeat=n)
    ]


THREE = ("train", "validation", "test")


def test_splits_constant():
    assert SPLITS == THREE


def test_train_split_unchanged_and_held_out_split_in_two():
    strings = _all_words() + continuation_prompts("train") + continuation_prompts("validation")
    strings += continuation_prompts("test")
    assert len(strings) > 37_000
    counts = dict.fromkeys(SPLITS, 0)
    for s in strings:
        new, old = split_of(s), _old_split(s)
        counts[new] += 1
        assert (new == "train") == (old == "train"), s  # train: exactly the old train set
        assert new in SPLITS
    # the old held-out fifth, split roughly in half
    assert 0.35 < counts["validation"] / (counts["validation"] + counts["test"]) < 0.65
    assert 0.75 < counts["train"] / len(strings) < 0.85


# make_task(name, "train", seed=0) before the validation split existed (first prompt, sha256 of
# the JSON of the whole list): the committed tiny-sft and data/preferences were built from these
OLD_TRAIN = {
    "reverse": ("reverse: dhgdf\n", "eb6e082b57bf0801"),
    "sort": ("sort: ebebahfb\n", "57fab892af87bfc6"),
    "copy_edit": ("swap: bdbebbhe\n", "597d321a6caffbb8"),
    "mixed": ("sort: dbfedced\n", "7ca7e73081856ec3"),
    "continuation": ("the new king found ", "e6fad71894b3baa4"),
}


@pytest.mark.parametrize("name", sorted(OLD_TRAIN))  # tasks added later have no "before"
def test_train_prompts_are_the_same_as_before(name):
    data = make_task(name, "train", seed=0)
    first, digest = OLD_TRAIN[name]
    assert data[0]["prompt"] == first
    assert hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16] == digest


@pytest.mark.parametrize("name", TASK_NAMES)
def test_splits_disjoint_and_validation_test_non_empty(name):
    n = None if name == "continuation" else 300
    prompts = {split: {d["prompt"] for d in make_task(name, split, n, seed=3)} for split in THREE}
    for split in THREE:
        assert prompts[split], (name, split)
    for a, b in itertools.combinations(THREE, 2):
        assert not prompts[a] & prompts[b], (name, a, b)
    if name == "calc":  # the split is a property of the expression
        for split in THREE:
            expressions = {p.removeprefix("What is ").removesuffix("?\n") for p in prompts[split]}
            assert all(split_of(e) == split for e in expressions)
    elif name != "continuation":
        for split in THREE:  # the split is a property of the word
            words = {p.split(": ", 1)[1][:-1] for p in prompts[split]}
            assert all(split_of(w) == split for w in words)
    else:
        assert len(prompts["validation"]) >= 50 and len(prompts["test"]) >= 50
        total = sum(len(v) for v in prompts.values())
        assert total == len(_all_continuations())


def _all_continuations() -> set[str]:
    return {p for split in THREE for p in continuation_prompts(split)}


def test_env_accepts_validation_split_and_names_all_splits():
    env = TextRLHFEnv(prompts="reverse", split="validation", reward_fn="length")
    _, info = env.reset(seed=0)
    assert all(split_of(p.split(": ", 1)[1][:-1]) == "validation" for p in env.dataset.prompts)
    with pytest.raises(ValueError, match="'train', 'validation', 'test'"):
        make_task("reverse", "dev")
    with pytest.raises(ValueError, match="'train', 'validation', 'test'"):
        TextRLHFEnv(prompts="reverse", split="val")


# ----------------------------------------------------------------------------- truncation


def test_encode_for_reward_model_appends_eos_only_to_ended_responses():
    tok = default_tokenizer()
    prompts, responses = ["ab\n", "ab\n", "x\n"], ["cd", "cd", "efghi"]
    batch = encode_for_reward_model(tok, prompts, responses, ended=[True, False, False])
    ids, mask = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    assert ids[0] == byte_ids("ab\ncd") + [EOS] + [PAD]
    assert ids[1] == byte_ids("ab\ncd") + [PAD, PAD]  # cut: no EOS, so not read as finished
    assert ids[2] == byte_ids("x\nefghi")
    assert mask == [[1] * 6 + [0], [1] * 5 + [0, 0], [1] * 7]
    # ended=None: every response ended (the encoding of complete texts, e.g. preference pairs)
    default = encode_for_reward_model(tok, prompts, responses)
    same = encode_for_reward_model(tok, prompts, responses, ended=[True] * 3)
    assert torch.equal(default["input_ids"], same["input_ids"])
    with pytest.raises(ValueError, match="one bool per sample"):
        encode_for_reward_model(tok, prompts, responses, ended=[True])


class Recorder(Reward):
    """Records the ``ended`` flags it is given; scores 0."""

    name = "recorder"
    wants_ended = True

    def __init__(self) -> None:
        self.seen: list[list[bool]] = []

    def compute(self, prompts, responses, references, ended=None):
        self.seen.append(list(ended))
        return np.zeros(len(prompts))


class ThreeArgs(Reward):
    """A reward written for the three-argument protocol (no ``ended``)."""

    name = "three"

    def compute(self, prompts, responses, references):
        return np.array([len(r) for r in responses], dtype=float)


def test_envs_tell_rewards_that_want_it_which_responses_ended():
    a = 3 + ord("a")
    # single env: EOS at step 2 -> ended; the next episode runs into max_new_tokens -> cut
    rec = Recorder()
    env = TextRLHFEnv(prompts="reverse", reward_fn=rec, max_new_tokens=3)
    env.reset(seed=0)
    env.step(a)
    *_, info = env.step(EOS)
    assert info["eos"] and rec.seen == [[True]]
    env.reset()
    for _ in range(3):
        *_, info = env.step(a)
    assert info["hit_length_limit"] and rec.seen[-1] == [False]

    # vector env: rows finish at different steps, each finishing set scored in one call
    rec = Recorder()
    spec = {"weighted_sum": [{"name": rec, "weight": 1.0}, {"name": ThreeArgs(), "weight": 0.0}]}
    venv = TextRLHFVectorEnv(num_envs=4, prompts="reverse", reward_fn=spec, max_new_tokens=3)
    assert venv.reward_fn.wants_ended
    venv.reset(seed=0)
    venv.step(np.array([EOS, a, a, a]))  # row 0 ends
    venv.step(np.array([a, EOS, a, a]))  # row 1 ends
    _, _, term, _, info = venv.step(np.array([a, a, EOS, a]))  # row 2 ends, row 3 is cut
    assert term.all()
    assert rec.seen == [[True], [True], [True, False]]
    np.testing.assert_array_equal(info["reward_components"]["three"][2:], [2.0, 3.0])


def test_rewards_without_wants_ended_keep_the_three_argument_protocol():
    assert not make_reward_fn("length").wants_ended
    assert not make_reward_fn(lambda p, r: 1.0).wants_ended  # per-sample: unchanged
    env = TextRLHFVectorEnv(num_envs=2, prompts="reverse", reward_fn=ThreeArgs(), max_new_tokens=2)
    env.reset(seed=0)
    env.step(np.array([5, 5]))
    _, reward, term, _, _ = env.step(np.array([5, 5]))  # both cut
    assert term.all() and reward.tolist() == [2.0, 2.0]

    seen = []

    def batched(prompts, responses, references, ended=None):
        seen.append(ended)
        return np.zeros(len(prompts))

    fn = make_reward_fn(batched)
    assert fn.wants_ended
    fn(["p", "q"], ["a", "b"], ended=np.array([True, False]))
    fn(["p"], ["a"])
    assert seen == [[True, False], [True]]


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory) -> str:
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny_rm"), "gpt2", head="classifier", n_positions=64,
        layers=1, heads=2, seed=3,
    )  # fmt: skip


def _logit(model, ids: list[int]) -> float:
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_reward_model_scores_a_cut_response_without_eos(tiny_rm):
    rm = make_reward_fn({"name": "reward_model", "path": tiny_rm})
    assert isinstance(rm, RewardModel) and rm.wants_ended
    prompt, response = "reverse: abc\n", "cba"
    with_eos = _logit(rm.model, byte_ids(prompt + response) + [EOS])
    without = _logit(rm.model, byte_ids(prompt + response))
    assert abs(with_eos - without) > 1e-4
    scores = rm([prompt, prompt], [response, response], ended=[True, False])
    np.testing.assert_allclose(scores, [with_eos, without], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rm([prompt], [response]), [with_eos], rtol=1e-4, atol=1e-5)
    old = make_reward_fn({"name": "reward_model", "path": tiny_rm, "eos_on_cut": True})
    np.testing.assert_allclose(old([prompt], [response], ended=[False]), [with_eos], rtol=1e-4)

    # through the vector env: "cba" then EOS (ended) vs "cba" cut at max_new_tokens=3
    env = TextRLHFVectorEnv(
        num_envs=2, prompts=[prompt], reward_fn={"name": "reward_model", "path": tiny_rm},
        max_new_tokens=4,
    )  # fmt: skip
    env.reset(seed=0)
    c, b, a = (3 + ord(x) for x in "cba")
    for action in ([c, c], [b, b], [a, a]):
        env.step(np.array(action))
    _, reward, term, _, info = env.step(np.array([EOS, 3 + ord("d")]))
    cut = _logit(rm.model, byte_ids(prompt + "cbad"))
    assert term.all() and info["hit_length_limit"].tolist() == [False, True]
    np.testing.assert_allclose(reward, [with_eos, cut], rtol=1e-4, atol=1e-5)


def test_rm_training_encodes_cut_preference_responses_without_eos(tiny_rm):
    from agents.rlhf.reward_model import responses_ended

    model, tok = load_reward_model(tiny_rm)
    model.eval()
    assert responses_ended(tok, ["abc", "a" * 32, "b" * 31], 32) == [True, False, True]
    assert responses_ended(tok, ["a" * 40], None) == [True]
    pair = PreferencePair("reverse: ab\n", "ba", "a" * 6)
    with torch.no_grad():
        rc, rr = score_pairs(model, tok, [pair], cut_at_tokens=6)
        _, rr_ended = score_pairs(model, tok, [pair])
    assert float(rc[0]) == pytest.approx(
        _logit(model, byte_ids("reverse: ab\nba") + [EOS]), abs=1e-5
    )
    assert float(rr[0]) == pytest.approx(
        _logit(model, byte_ids("reverse: ab\n" + "a" * 6)), abs=1e-5
    )
    assert float(rr_ended[0]) == pytest.approx(
        _logit(model, byte_ids("reverse: ab\n" + "a" * 6) + [EOS]), abs=1e-5
    )
    assert RMConfig().cut_at_tokens is None
