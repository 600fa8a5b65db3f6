"""Chat-formatted prompts: `{"messages": [...]}` rendered with the tokenizer's own template."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from helpers import byte_ids, save_chat_tokenizer

import textenv  # noqa: F401  (registers TextRLHF-v0)
from textenv.tokenizer import end_of_turn_ids, load_tokenizer

IM_START, IM_END = 259, 260
RECORDS = [
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "reverse: abc"},
                  {"role": "assistant", "content": "cba"}]},
    {"messages": [{"role": "user", "content": "copy: xy"}], "solution": "xy"},
]  # fmt: skip


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory) -> str:
    return save_chat_tokenizer(tmp_path_factory.mktemp("chat-tok"))


def test_prompt_ids_equal_apply_chat_template(chat_tokenizer):
    tok = load_tokenizer(chat_tokenizer)
    env = gym.make("TextRLHF-v0", tokenizer=chat_tokenizer, prompts=RECORDS, max_prompt_tokens=64)
    for i, record in enumerate(RECORDS):
        obs, _ = env.reset(options={"prompt": i})
        expected = tok.apply_chat_template(
            [m for m in record["messages"] if m["role"] != "assistant"],
            add_generation_prompt=True,
        )["input_ids"]
        ids, mask = obs["input_ids"][:64], obs["attention_mask"][:64]
        assert ids[mask == 1].tolist() == list(expected)
        assert expected[0] == IM_START and IM_END in expected
        assert list(expected[-11:]) == [IM_START, *byte_ids("assistant\n")]
    env.close()


def test_episode_ends_at_the_turn_terminator_and_the_response_is_clean(chat_tokenizer):
    tok = load_tokenizer(chat_tokenizer)
    assert end_of_turn_ids(tok) == (1, IM_END)
    env = gym.make("TextRLHF-v0", tokenizer=chat_tokenizer, prompts=RECORDS, max_prompt_tokens=64)
    env.reset(seed=0, options={"prompt": 0})
    for token in byte_ids("cb"):
        assert env.step(token)[2] is False
    _, reward, terminated, truncated, info = env.step(IM_END)
    assert terminated and not truncated and info["eos"] and not info["hit_length_limit"]
    assert info["response"] == "cb" and info["reference"] == "cba"
    assert reward == pytest.approx(2 / 3)
    # the vector env stops rows at EOS or the terminator alike, and scores them in one call
    venv = gym.make_vec(
        "TextRLHF-v0", num_envs=3, vectorization_mode="vector_entry_point",
        tokenizer=chat_tokenizer, prompts=RECORDS, max_prompt_tokens=64, max_new_tokens=4,
    )  # fmt: skip
    venv.reset(seed=0)
    a = byte_ids("x")[0]
    _, _, term, _, _ = venv.step(np.array([a, a, a]))
    assert not term.any()
    _, _, term, _, info = venv.step(np.array([IM_END, 1, a]))
    assert term.tolist() == [True, True, False]
    assert info["response"][:2].tolist() == ["x", "x"]
    venv.close()
    env.close()


def test_prompt_format_raw_chat_and_auto(chat_tokenizer):
    record = RECORDS[1]
    raw = gym.make("TextRLHF-v0", tokenizer=chat_tokenizer, prompts=[record], prompt_format="raw")
    obs, _ = raw.reset(seed=0)
    assert obs["input_ids"][obs["attention_mask"] == 1].tolist() == byte_ids("copy: xy\n")
    assert raw.unwrapped.stop_ids == (1,)  # raw text: only EOS ends the episode
    # chat: a plain string prompt becomes one user message
    chat = gym.make(
        "TextRLHF-v0", tokenizer=chat_tokenizer, prompts=["hi"], prompt_format="chat",
        reward_fn="length", max_prompt_tokens=40,
    )  # fmt: skip
    obs, _ = chat.reset(seed=0)
    rendered = obs["input_ids"][obs["attention_mask"] == 1].tolist()
    assert rendered[0] == IM_START and rendered[-len(byte_ids("assistant\n")) :] == byte_ids(
        "assistant\n"
    )
    # auto with the default byte tokenizer (no template): raw text, EOS only
    auto = gym.make("TextRLHF-v0", prompts=[record])
    obs, _ = auto.reset(seed=0)
    assert obs["input_ids"][obs["attention_mask"] == 1].tolist() == byte_ids("copy: xy\n")
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        gym.make("TextRLHF-v0", prompts=[record], prompt_format="chat")
    with pytest.raises(ValueError, match=r"prompt_format must be one of \['auto', 'chat', 'raw'\]"):
        gym.make("TextRLHF-v0", prompts=[record], prompt_format="jinja")
    for env in (raw, chat, auto):
        env.close()


def test_the_turn_terminator_ends_a_turn_with_turns_and_tools_too(chat_tokenizer):
    # one step path: the tokens that end an episode without turns end a turn with them
    kwargs = dict(tokenizer=chat_tokenizer, prompts=RECORDS, max_prompt_tokens=64,
                  max_new_tokens=40, max_turns=2)  # fmt: skip
    env = gym.make("TextRLHF-v0", **kwargs)
    env.reset(seed=0, options={"prompt": 0})
    for token in byte_ids("cb"):
        env.step(token)
    obs, reward, terminated, _, _ = env.step(IM_END)
    assert not terminated and reward == 0.0 and obs["from_env"][64 + 3 :].any()  # feedback
    for token in [*byte_ids("cba"), IM_END]:
        _, reward, terminated, _, info = env.step(token)
    assert terminated and info["eos"] and info["responses"] == ["cb", "cba"]
    assert info["turn_scores"] == [pytest.approx(2 / 3), 1.0] and reward == 1.0
    venv = gym.make_vec("TextRLHF-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        tools=["calc"], **{**kwargs, "max_turns": 1})  # fmt: skip
    venv.reset(seed=0, options={"prompts": [0, 0]})
    _, _, term, _, info = venv.step(np.array([IM_END, byte_ids("c")[0]]))
    assert term.tolist() == [True, False] and info["eos"][0] and info["response"][0] == ""
    venv.close()
    env.close()
