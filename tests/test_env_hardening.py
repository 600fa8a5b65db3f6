"""textenv hardening: one definition of the env arguments, the gold reward in textenv, reward
exceptions named, prompt-file encoding errors located, Gymnasium's vector wrappers."""

from dataclasses import fields
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium.wrappers.vector import RecordEpisodeStatistics

import textenv  # noqa: F401
from textenv import (
    RewardFunctionError,
    TextEnvArgs,
    TextRLHFEnv,
    TextRLHFVectorEnv,
    gold_score,
    make_reward_fn,
)
from textenv.env import ENV_ARGUMENTS
from textenv.rewards import GoldReward, reward_names

REPO = Path(__file__).resolve().parent.parent
EOS = 1


def letters(text: str) -> list[int]:
    return [3 + b for b in text.encode()]  # the byte tokenizer: byte b is id b + 3


# ----------------------------------------------------------------------------- 1. env arguments


def test_unknown_env_argument_names_it_and_lists_the_allowed_ones():
    with pytest.raises(TypeError, match=r"'max_tokens' \(did you mean 'max_new_tokens'\?\)") as e:
        gym.make("TextRLHF-v0", max_tokens=3)
    assert all(name in str(e.value) for name in ENV_ARGUMENTS)
    with pytest.raises(TypeError, match=r"TextRLHFVectorEnv .*'colour'.*allowed: \['num_envs', "):
        gym.make_vec("TextRLHF-v0", num_envs=2, vectorization_mode="vector_entry_point", colour=1)
    with pytest.raises(TypeError, match="autoreset_mode"):  # the vector env's own names listed too
        TextRLHFVectorEnv(num_envs=2, rewards="length")


def test_both_envs_take_the_same_arguments_from_one_definition():
    kwargs = dict(prompts="sort", split="test", reward_fn="length", max_new_tokens=5,
                  max_prompt_tokens=20, render_mode="ansi", missing_eos_penalty=1)  # fmt: skip
    env = gym.make("TextRLHF-v0", **kwargs).unwrapped
    venv = gym.make_vec(
        "TextRLHF-v0", num_envs=3, vectorization_mode="vector_entry_point", **kwargs
    )
    assert env.args == venv.args == TextEnvArgs(**kwargs)
    assert venv.args.missing_eos_penalty == 1.0 and isinstance(venv.args.missing_eos_penalty, float)
    for e in (env, venv):
        assert (e.max_new_tokens, e.max_prompt_tokens, e.render_mode) == (5, 20, "ansi")
        assert e.dataset.prompts[0].startswith("sort: ") and e.reward_fn.name == "length"
    bad_values = [("max_new_tokens", 0, ValueError), ("render_mode", "human", ValueError),
                  ("missing_eos_penalty", "1", TypeError)]  # fmt: skip
    for name, value, error in bad_values:
        for make in (TextRLHFEnv, TextRLHFVectorEnv):
            with pytest.raises(error, match=name):
                make(**{name: value})


def test_every_env_argument_is_documented():
    names = [f.name for f in fields(TextEnvArgs)]
    assert tuple(names) == ENV_ARGUMENTS
    single_doc = TextRLHFEnv.__doc__.split("## Arguments")[1].split("## Version History")[0]
    vector_doc = TextRLHFVectorEnv.__doc__.split("## Arguments")[1]
    table = (REPO / "docs" / "textenv.md").read_text()
    for name in names:
        assert f"``{name}``" in single_doc and f"``{name}``" in vector_doc
        assert f"| `{name}` |" in table
    for name in ("num_envs", "autoreset_mode"):
        assert f"``{name}``" in vector_doc


# ----------------------------------------------------------------------------- 2. gold in textenv


def test_gold_is_a_registry_reward_and_the_configs_name_it():
    assert "gold" in reward_names()
    reward = make_reward_fn("gold")
    assert isinstance(reward, GoldReward) and reward.name == "gold"
    prompts, responses = ["reverse: abcd\n", "sort: abcd\n"], ["aeae", "ab"]
    np.testing.assert_allclose(reward(prompts, responses), [0.5, 1.0])
    np.testing.assert_allclose(
        reward(prompts, responses), [gold_score(*x) for x in zip(prompts, responses)]
    )
    for config in ("text_reward_model.yaml", "text_reward_model_nokl.yaml"):
        terms = yaml.safe_load((REPO / "configs" / config).read_text())["env"]["kwargs"][
            "reward_fn"
        ]
        assert {"name": "gold", "weight": 0.0} in terms["weighted_sum"]
    total, parts = make_reward_fn({"weighted_sum": [{"name": "length", "weight": 1.0},
                                                    {"name": "gold", "weight": 0.0}]}).score(
        prompts, responses, [None, None])  # fmt: skip
    np.testing.assert_allclose(total, parts["length"])
    np.testing.assert_allclose(parts["gold"], [0.5, 1.0])


# ----------------------------------------------------------------------------- 4a. reward errors


@pytest.mark.parametrize(
    "value", [torch.tensor(0.5), torch.tensor([0.5]), torch.tensor(0.5, requires_grad=True)]
)
def test_per_sample_reward_may_return_a_one_element_torch_tensor(value):
    env = TextRLHFEnv(reward_fn=lambda prompt, response: value)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(EOS)
    assert terminated and reward == 0.5 and type(reward) is float
    venv = TextRLHFVectorEnv(num_envs=3, reward_fn=lambda prompt, response: value, max_new_tokens=2)
    venv.reset(seed=0)
    _, rewards, *_ = venv.step(np.array([EOS] * 3))
    np.testing.assert_array_equal(rewards, [0.5] * 3)


def test_per_sample_reward_that_raises_is_named_with_its_sample_and_leaves_the_env_unchanged():
    def flaky(prompt, response):
        if response == "ab":
            raise ZeroDivisionError("division by zero")
        return 1.0

    env = TextRLHFEnv(reward_fn=flaky, max_new_tokens=8, render_mode="ansi")
    env.reset(seed=0, options={"prompt": "reverse: abc\n"})
    for t in letters("ab"):
        env.step(t)
    before = env.render()  # "reverse: abc\nab"
    match = (
        r"reward function '.*flaky' raised ZeroDivisionError on sample 0 "
        r"\(prompt='reverse: abc\\n', response='ab'\): division by zero"
    )
    with pytest.raises(ZeroDivisionError, match=match) as e:
        env.step(EOS)
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    assert env.render() == before == "reverse: abc\nab"  # the failed EOS changed nothing
    env.step(letters("c")[0])  # still usable: "abc" scores
    assert env.step(EOS)[1] == 1.0


def test_batched_reward_that_raises_is_named_with_the_batch_samples():
    def broken(prompts, responses, references):
        return {}[responses[0]]  # KeyError: its str is a repr, so it cannot carry a message

    venv = TextRLHFVectorEnv(num_envs=2, reward_fn=broken, max_new_tokens=4, render_mode="ansi")
    venv.reset(seed=0, options={"prompts": ["reverse: abc\n", "sort: cab\n"]})
    venv.step(np.array(letters("x") * 2))
    before = venv.render()
    match = (
        r"'.*broken' raised KeyError on a batch of 2 samples: sample 0 "
        r"\(prompt='reverse: abc\\n', response='x'\); sample 1 \(prompt='sort: cab\\n', response='x'\)"
    )
    with pytest.raises(RewardFunctionError, match=match) as e:
        venv.step(np.array([EOS, EOS]))
    assert isinstance(e.value.__cause__, KeyError)
    assert venv.render() == before == ("reverse: abc\nx", "sort: cab\nx")

    def value_error(prompts, responses, references):
        raise ValueError("model not loaded")

    env = TextRLHFEnv(reward_fn=value_error)
    env.reset(seed=0, options={"prompt": "sort: ba\n"})
    match = r"'.*value_error' raised ValueError on sample 0 \(prompt='sort: ba\\n', response=''\): model"
    with pytest.raises(ValueError, match=match):
        env.step(EOS)


def test_errors_that_already_name_the_reward_are_not_wrapped_twice():
    with pytest.raises(ValueError) as e:
        make_reward_fn("edit_distance")(["p"], ["r"], [None])
    assert str(e.value).count("reward function 'edit_distance'") == 1
    with pytest.raises(TypeError) as e:
        make_reward_fn(lambda p, r: "high")(["p"], ["r"])
    assert str(e.value).count("reward function") == 1 and "non-numeric" in str(e.value)


# ----------------------------------------------------------------------------- 4b. encodings


def test_non_utf8_prompt_files_name_the_file_and_line(tmp_path):
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_bytes(b'{"prompt": "a"}\n\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"prompts\.jsonl:3: not valid UTF-8 .*byte 0xe9") as e:
        TextRLHFEnv(prompts=str(jsonl), reward_fn="length")
    assert isinstance(e.value.__cause__, UnicodeDecodeError)
    data = tmp_path / "prompts.json"
    data.write_bytes(b'[\n  "a",\n  "caf\xe9"\n]\n')
    with pytest.raises(ValueError, match=r"prompts\.json:3: not valid UTF-8"):
        TextRLHFEnv(prompts=str(data), reward_fn="length")
    jsonl.write_bytes('{"prompt": "café"}\r\n\r\n{"prompt": "b"}\r\n'.encode())  # CRLF, UTF-8: fine
    env = TextRLHFEnv(prompts=str(jsonl), reward_fn="length")
    assert env.dataset.prompts == ["café", "b"]
    assert env.dataset.locations == [f"{jsonl}:1", f"{jsonl}:3"]


# ----------------------------------------------------------------------------- 4c. vector wrappers


def test_record_episode_statistics_on_next_step_counts_each_text_once():
    venv = gym.make_vec("TextRLHF-v0", num_envs=4, vectorization_mode="vector_entry_point",
                        autoreset_mode="next_step", reward_fn="length", max_new_tokens=4)  # fmt: skip
    env = RecordEpisodeStatistics(venv)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    episodes, expected = 0, []
    for _ in range(40):
        obs, rewards, terminated, truncated, info = env.step(rng.choice([EOS, 100, 101], size=4))
        if "episode" in info:
            done = info["_episode"]
            np.testing.assert_array_equal(done, terminated | truncated)
            np.testing.assert_allclose(info["episode"]["r"][done], rewards[done])
            np.testing.assert_allclose(info["episode"]["r"][done], info["score"][done])
            # the response's characters plus one EOS, or max_new_tokens without one
            chars = np.array([len(r) if r is not None else 0 for r in info["response"]])
            np.testing.assert_array_equal(info["episode"]["l"][done], (chars + info["eos"])[done])
            episodes += done.sum()
            expected.extend(rewards[done])
    assert episodes == len(env.return_queue) > 20
    np.testing.assert_allclose(list(env.return_queue), expected[-len(env.return_queue) :])


def test_vector_wrappers_on_a_lockstep_env_fail_with_an_explanation():
    venv = gym.make_vec("TextRLHF-v0", num_envs=4, vectorization_mode="vector_entry_point")
    assert venv.metadata["autoreset_mode"] == "lockstep"
    match = r"lockstep.*finished row stays terminated.*autoreset_mode='next_step'"
    with pytest.raises(TypeError, match=match):
        RecordEpisodeStatistics(venv)
