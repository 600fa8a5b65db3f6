"""Bad input gets a clear error, and the env stays usable."""

import gymnasium as gym
import numpy as np
import pytest

import textenv  # noqa: F401
from textenv import TextRLHFEnv, default_tokenizer


@pytest.mark.parametrize(
    "action, error",
    [
        (259, ValueError),
        (-1, ValueError),
        (np.int64(1000), ValueError),
        (3.0, TypeError),
        (np.float32(4), TypeError),
        (None, TypeError),
        ("a", TypeError),
        (True, TypeError),
        (np.array([5, 6]), TypeError),
    ],
)
def test_bad_actions_raise_and_leave_state_unchanged(action, error):
    env = TextRLHFEnv(max_new_tokens=4, render_mode="ansi")
    env.reset(seed=0)
    obs_before, *_ = env.step(100)
    text_before = env.render()
    with pytest.raises(error, match=r"\[0, 259\)"):
        env.step(action)
    assert env.render() == text_before
    obs, reward, terminated, truncated, info = env.step(np.int32(1))  # numpy ints are fine
    assert terminated and info["response"] == "a"
    # the rejected action left no trace: the EOS is the second generated token, nothing else moved
    expected_ids, expected_mask = (
        obs_before["input_ids"].copy(),
        obs_before["attention_mask"].copy(),
    )
    expected_ids[33], expected_mask[33] = 1, 1
    np.testing.assert_array_equal(obs["input_ids"], expected_ids)
    np.testing.assert_array_equal(obs["attention_mask"], expected_mask)


def test_numpy_integer_and_0d_array_actions_are_valid():
    env = TextRLHFEnv(max_new_tokens=8)
    env.reset(seed=0)
    for action in (np.int64(100), np.uint8(101), np.array(102), 103):
        obs, *_ = env.step(action)
    assert env.render() is None  # no render_mode
    assert obs["input_ids"][32:37].tolist() == [100, 101, 102, 103, 0]
    assert obs["attention_mask"][32:].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_empty_and_too_long_prompts_raise():
    with pytest.raises(ValueError, match=r"prompts\[1\]: empty prompt"):
        TextRLHFEnv(prompts=["ok", ""])
    with pytest.raises(ValueError, match=r"prompts\[0\].*12 tokens.*max_prompt_tokens=8"):
        TextRLHFEnv(prompts=["x" * 12], max_prompt_tokens=8)
    env = TextRLHFEnv(prompts=["ok"], max_prompt_tokens=8, reward_fn="length")
    with pytest.raises(ValueError, match="max_prompt_tokens=8"):
        env.reset(options={"prompt": "y" * 9})
    with pytest.raises(ValueError, match="empty prompt"):
        env.reset(options={"prompt": ""})
    obs, _ = env.reset(options={"prompt": "z"})  # still usable
    assert obs["attention_mask"][:8].sum() == 1
    with pytest.raises(ValueError, match="empty list"):
        TextRLHFEnv(prompts=[])


def test_tokenizer_without_eos_or_pad_is_rejected():
    for attr in ("eos_token", "pad_token"):
        tok = default_tokenizer()
        setattr(tok, attr, None)
        with pytest.raises(ValueError, match=f"{attr}_id=None"):
            TextRLHFEnv(tokenizer=tok)
    with pytest.raises(ValueError, match="existing local folder"):
        TextRLHFEnv(tokenizer="/no/such/tokenizer")


def test_saved_tokenizer_folder_loads(tmp_path):
    default_tokenizer().save_pretrained(tmp_path)
    env = gym.make("TextRLHF-v0", tokenizer=str(tmp_path))
    assert env.action_space.n == 259


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_new_tokens"):
        TextRLHFEnv(max_new_tokens=0)
    with pytest.raises(ValueError, match="render_mode"):
        TextRLHFEnv(render_mode="human")
    with pytest.raises(ValueError, match="known tasks|built-in task"):
        TextRLHFEnv(prompts="reverse_words")
    with pytest.raises(ValueError, match="known splits"):
        TextRLHFEnv(split="dev")
    with pytest.raises(ValueError, match="built-in tasks .* only"):
        TextRLHFEnv(prompts=["a", "b"], split="test")  # never silently evaluated on train data
    env = TextRLHFEnv()
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"promt": "x"})
    with pytest.raises(RuntimeError, match="reset"):
        TextRLHFEnv().step(100)
    with pytest.raises(ValueError, match="unknown reward function"):
        gym.make("TextRLHF-v0", reward_fn="bleu")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"missing_eos_penalty .* >= 0"):
            TextRLHFEnv(missing_eos_penalty=bad)
    with pytest.raises(TypeError, match="missing_eos_penalty"):
        gym.make_vec("TextRLHF-v0", num_envs=2, missing_eos_penalty="1")


@pytest.mark.parametrize(
    "name", ["max_new_tokens", "max_prompt_tokens", "max_tool_calls", "max_turns", "num_envs"]
)
def test_sizes_have_an_upper_bound_named_in_the_error(name):
    """2**40 tokens (or rows) ended in numpy's 'maximum allowed dimension exceeded' naming no
    argument, or was taken silently (tool calls, turns)."""
    kwargs = {"prompts": "calc", "tools": ["calc"], "reward_fn": "exact_answer", name: 2**40}
    with pytest.raises(ValueError, match=rf"{name} must be an int in \[1, 1048576\], got {2**40}"):
        gym.make_vec("TextRLHF-v0", vectorization_mode="vector_entry_point", **kwargs)


def test_reward_needing_references_is_rejected_early_on_open_ended_prompts():
    with pytest.raises(ValueError, match=r"'edit_distance' needs references.*continuation\[0\]"):
        TextRLHFEnv(prompts="continuation", reward_fn="edit_distance")
    TextRLHFEnv(prompts="continuation")  # its natural reward, repetition, needs none
    spec = {
        "weighted_sum": [
            {"name": "repetition", "weight": 1},
            {"name": "edit_distance", "weight": 0},
        ]
    }
    with pytest.raises(ValueError, match="needs references"):
        TextRLHFEnv(prompts=["open prompt"], reward_fn=spec)
    TextRLHFEnv(prompts="continuation", reward_fn="repetition")  # fine
    env = TextRLHFEnv()
    with pytest.raises(ValueError, match=r"needs a reference.*'hello\\n'"):
        env.reset(options={"prompt": "hello\n"})
    env.reset(options={"prompt": "hello\n", "reference": "hi"})
