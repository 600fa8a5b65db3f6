"""Reward functions: built-in numbers, adapters, registry, weighted sums, errors, reward model."""

import sys

import numpy as np
import pytest
import torch
from helpers import save_tiny_model

from textenv import default_tokenizer, encode_for_reward_model, make_reward_fn, register_reward
from textenv.rewards import Reward, per_sample, reward_names


def score(spec, prompts, responses, references=None):
    references = references if references is not None else [None] * len(prompts)
    return make_reward_fn(spec)(prompts, responses, references)


def test_edit_distance_is_normalized_levenshtein_similarity():
    got = score("edit_distance", ["p"] * 4, ["abc", "abd", "", "xyz"], ["abc", "abc", "abc", "ab"])
    np.testing.assert_allclose(got, [1.0, 2 / 3, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"edit_distance.*prompt='p'.*reference None"):
        score("edit_distance", ["p"], ["abc"], [None])


def test_repetition_is_distinct_n_in_unit_interval():
    plain = {"name": "repetition", "min_length": 3}  # plain distinct-3
    got = score(plain, ["p"] * 4, ["abcdef", "aaaaaa", "ababab", "ab"])
    np.testing.assert_allclose(got, [1.0, 1 / 4, 2 / 4, 0.0])
    np.testing.assert_allclose(
        score({"name": "repetition", "n": 1, "min_length": 1}, ["p"], ["aab"]), [2 / 3]
    )
    # default min_length=16: short texts score less, long diverse ones reach 1
    got = score("repetition", ["p"] * 4, ["aaa", "abcdef", "abcdefghijklmnopqr", "ab" * 10])
    np.testing.assert_allclose(got, [1 / 14, 4 / 14, 1.0, 2 / 18])
    with pytest.raises(ValueError, match="min_length"):
        make_reward_fn({"name": "repetition", "n": 3, "min_length": 2})


def test_length_plain_and_with_target():
    np.testing.assert_allclose(score("length", ["p", "p"], ["", "abcd"]), [0.0, 4 / 32])
    np.testing.assert_allclose(
        score({"name": "length", "target": 4, "scale": 2.0}, ["p", "p"], ["ab", "abcdef"]),
        [-1.0, -1.0],
    )


def test_plain_callables_are_adapted_and_batched_callables_called_once():
    np.testing.assert_allclose(
        score(lambda p, r: len(p) * 10 + len(r), ["ab", "c"], ["x", ""]), [21, 10]
    )
    calls = []

    def batched(prompts, responses, references):
        calls.append(len(prompts))
        return [1.0] * len(prompts)

    assert score(batched, ["a", "b", "c"], ["", "", ""]).tolist() == [1.0, 1.0, 1.0]
    assert calls == [3]
    with_ref = per_sample(lambda p, r, ref: float(r == ref))
    assert score(with_ref, ["a", "b"], ["x", "y"], ["x", "z"]).tolist() == [1.0, 0.0]


def test_weighted_sum_total_and_components():
    spec = {
        "weighted_sum": [
            {"name": "edit_distance", "weight": 0.5},
            {"name": "length", "weight": 0.0},
            {"name": "length", "target": 2, "weight": 1.0},
        ]
    }
    reward = make_reward_fn(spec)
    total, parts = reward.score(["p"], ["abcd"], ["abcd"])
    assert list(parts) == ["edit_distance", "length", "length_2"]
    np.testing.assert_allclose(parts["length"], [4 / 32])
    np.testing.assert_allclose(total, [0.5 * 1.0 + 1.0 * (-2 / 32)])


def test_module_function_strings_and_registry(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        "def shout(prompt, response):\n    return float(response.isupper())\n"
        "def make_const(value):\n    return lambda p, r: value\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert score("my_rewards_mod:shout", ["p", "p"], ["AB", "ab"]).tolist() == [1.0, 0.0]
    assert make_reward_fn("my_rewards_mod:shout").name == "my_rewards_mod:shout"
    assert score({"name": "my_rewards_mod:make_const", "value": 3}, ["p"], ["x"]).tolist() == [3.0]
    with pytest.raises(ValueError, match="no attribute"):
        make_reward_fn("my_rewards_mod:nope")

    register_reward("test_len2", lambda p, r: float(len(r)) * 2, overwrite=True)
    assert "test_len2" in reward_names()
    reward = make_reward_fn("test_len2")
    assert reward.name == "test_len2" and reward(["p"], ["abc"], [None]).tolist() == [6.0]
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_len2", lambda p, r: 0.0)
    sys.modules.pop("my_rewards_mod", None)


def test_unknown_name_lists_known_names():
    with pytest.raises(
        ValueError,
        match=r"unknown reward function 'edit_distanse'.*edit_distance.*length.*repetition.*reward_model",
    ):
        make_reward_fn("edit_distanse")
    with pytest.raises(TypeError, match="reward_fn must be"):
        make_reward_fn(42)
    with pytest.raises(ValueError, match="weight"):
        make_reward_fn({"weighted_sum": [{"name": "length"}]})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "high", None])
def test_bad_scores_name_the_function_and_the_sample(bad):
    def my_reward(prompt, response):
        return bad if response == "bad" else 1.0

    with pytest.raises((ValueError, TypeError), match=r"my_reward.*prompt='q'.*response='bad'"):
        score(my_reward, ["p", "q"], ["ok", "bad"])


@pytest.mark.parametrize(
    "bad",
    [[1.0, float("nan")], ["a", "b"], [1.0], [[1.0], [2.0]], [[1.0], [2.0, 3.0]], [1.0, None]],
)
def test_bad_batched_scores_raise(bad):
    def batched_reward(prompts, responses, references):
        return bad

    with pytest.raises((ValueError, TypeError), match="batched_reward"):
        score(batched_reward, ["p", "q"], ["a", "b"])


def test_env_reports_bad_reward_and_stays_usable():
    import gymnasium as gym

    env = gym.make(
        "TextRLHF-v0", reward_fn=lambda p, r: float("nan") if r else 0.0, max_new_tokens=2
    )
    env.reset(seed=0)
    env.step(100)
    with pytest.raises(ValueError, match=r"non-finite.*response='a"):
        env.step(101)
    env.reset(seed=0)
    assert env.step(1)[1] == 0.0


@pytest.mark.parametrize("vector", [False, True])
def test_a_failing_reward_leaves_the_state_unchanged(vector):
    """The env scores before it writes: after the error the same step can be retried."""
    import gymnasium as gym
    import numpy as np

    fail = {"on": True}

    def flaky(prompt, response):
        if fail["on"]:
            raise ValueError("reward server down")
        return float(len(response))

    kwargs = {"reward_fn": flaky, "max_new_tokens": 2}
    env = (
        gym.make_vec("TextRLHF-v0", num_envs=2, **kwargs)
        if vector
        else gym.make("TextRLHF-v0", **kwargs)
    )
    env.reset(seed=0)
    first = np.array([100, 100]) if vector else 100
    last = np.array([101, 1]) if vector else 101  # ends both rows: length limit / EOS
    obs_before = env.step(first)[0]
    with pytest.raises(ValueError, match="reward server down"):
        env.step(last)
    fail["on"] = False
    obs, reward, terminated, _, info = env.step(last)  # the same step again, now scored
    assert np.array_equal(np.asarray(obs_before["attention_mask"]).sum(-1) + 1,
                          np.asarray(obs["attention_mask"]).sum(-1))  # fmt: skip
    assert np.all(terminated)
    assert np.asarray(reward).tolist() == ([2.0, 1.0] if vector else 2.0)


def test_encode_for_reward_model_layout():
    tok = default_tokenizer()
    batch = encode_for_reward_model(tok, ["ab", "c"], ["c", ""])
    assert batch["input_ids"].tolist() == [[100, 101, 102, 1], [102, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


@pytest.fixture(scope="module")
def tiny_rm_path(tmp_path_factory):
    """A random one-label GPT-2 sequence classifier (width 16, 1 layer) + the byte tokenizer."""
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny_rm"), "gpt2", head="classifier", n_positions=64,
        hidden=16, layers=1, heads=2,
    )  # fmt: skip


def test_reward_model_scores_a_batch_in_one_forward_at_the_last_token(tiny_rm_path):
    reward = make_reward_fn({"name": "reward_model", "path": tiny_rm_path})
    assert not reward.model.training
    calls = []
    reward.model.register_forward_hook(lambda mod, args, kwargs_out: calls.append(1))
    prompts, responses = ["reverse: ab\n", "sort: cab\n", "x"], ["ba", "abc", ""]
    got = reward(prompts, responses, [None] * 3)
    assert len(calls) == 1 and got.shape == (3,) and np.isfinite(got).all()
    # each score equals the logit of the unpadded sequence scored alone
    with torch.no_grad():
        for i in range(3):
            ids = torch.tensor([[b + 3 for b in (prompts[i] + responses[i]).encode()] + [1]])
            alone = reward.model(input_ids=ids).logits[0, 0].item()
            assert got[i] == pytest.approx(alone, abs=1e-5)
    assert len(set(np.round(got, 6))) == 3  # the model does not ignore its input


def test_reward_model_errors(tmp_path):
    with pytest.raises(ValueError, match="local model folder"):
        make_reward_fn({"name": "reward_model", "path": str(tmp_path / "missing")})
    with pytest.raises(TypeError, match="reward_model"):
        make_reward_fn({"name": "reward_model"})


def test_reward_base_class_subclassing():
    class Shout(Reward):
        name = "shout"

        def compute(self, prompts, responses, references):
            return [float(r.isupper()) for r in responses]

    total, parts = Shout().score(["p", "p"], ["AB", "ab"], [None, None])
    assert total.tolist() == [1.0, 0.0] and list(parts) == ["shout"]


def test_a_reward_model_device_it_cannot_run_on_is_named(tmp_path):
    """'meta' moved the model to a device without data: scoring crashed with a traceback."""
    path = save_tiny_model(tmp_path / "rm", head="classifier")
    for device in ("meta", "mps", "xla", "cuda:x", 0):
        with pytest.raises(ValueError, match=r"reward_model .*device must be 'cpu', 'cuda'"):
            make_reward_fn({"name": "reward_model", "path": path, "device": device})
    reward = make_reward_fn({"name": "reward_model", "path": path, "device": "cpu"})
    assert np.isfinite(reward(["p"], ["r"])).all()


@pytest.mark.parametrize(
    "prompts, natural",
    [("calc", "exact_answer"), ("continuation", "repetition"), ("reverse", "edit_distance"),
     ("mixed", "edit_distance"), ([{"prompt": "say hi", "reference": "hi"}], "edit_distance")],
)  # fmt: skip
def test_a_built_in_task_scores_with_its_natural_reward(prompts, natural):
    """Without reward_fn, a built-in task carries its own rule (calc: the exact answer, not the
    edit distance to "444"); your own prompts keep the default (edit distance); an explicit
    reward_fn always wins."""
    import gymnasium as gym

    env = gym.make("TextRLHF-v0", prompts=prompts).unwrapped
    assert env.reward_fn.name == natural
    vec = gym.make_vec("TextRLHF-v0", num_envs=2, prompts=prompts)
    assert vec.reward_fn.name == natural
    vec.close()
    explicit = gym.make("TextRLHF-v0", prompts=prompts, reward_fn="length").unwrapped
    assert explicit.reward_fn.name == "length"


def test_calc_default_reward_is_exact():
    from textenv import TextRLHFEnv

    env = TextRLHFEnv(prompts="calc", max_prompt_tokens=32, max_new_tokens=8)
    for answer, reward in (("444", 1.0), ("443", 0.0)):
        env.reset(options={"prompt": "What is 37*12?\n"})
        for b in answer.encode():
            env.step(b + 3)
        *_, info = env.step(1)  # EOS
        assert info["score"] == reward, answer
