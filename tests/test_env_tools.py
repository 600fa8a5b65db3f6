"""Tools and turns in TextRLHF-v0 (textenv/tools.py): the env writes tokens into the sequence."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from helpers import byte_ids

import textenv  # noqa: F401  (registers TextRLHF-v0)
from textenv.rewards import last_integer, make_reward_fn
from textenv.tools import CalcError, CalcTool, calc

EOS = 1  # the default byte tokenizer's EOS id
P = 32


def calc_env(num_envs: int, split: str = "test", **kwargs):
    args = dict(prompts="calc", split=split, tools=["calc"], reward_fn="exact_answer")
    args["max_new_tokens"] = kwargs.pop("max_new_tokens", 48)
    return gym.make_vec(
        "TextRLHF-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **args, **kwargs
    )


def response_text(obs: dict, row: int) -> str:
    ids, mask = obs["input_ids"][row, P:], obs["attention_mask"][row, P:]
    return bytes(int(i) - 3 for i in ids[mask == 1] if i >= 3).decode()


def run_scripted(env, use_tool: bool, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """A scripted agent on every row: `<calc>EXPR</calc>`, then a space, the tool's result and
    EOS (use_tool), or the first operand of the question and EOS (no tool). Checks the prefix
    property and the from_env marks at every step. Returns the rewards and the final infos."""
    obs, _ = env.reset(seed=seed)
    N = env.num_envs
    questions = [env.unwrapped._prompts[r] for r in range(N)]
    exprs = [q[len("What is ") : -2] for q in questions]
    plans = [byte_ids(f"<calc>{e}</calc>") if use_tool else [] for e in exprs]
    if not use_tool:
        plans = [byte_ids(e.strip("(").split("*")[0].split("+")[0]) + [EOS] for e in exprs]
    pos = np.zeros(N, dtype=int)
    total = np.zeros(N)
    infos = [None] * N
    done = np.zeros(N, dtype=bool)
    for _ in range(env.unwrapped.max_new_tokens):
        actions = np.zeros(N, dtype=np.int64)
        for r in range(N):
            if pos[r] == len(plans[r]) and use_tool and not done[r]:
                result = response_text(obs, r).rsplit("=", 1)[1]
                plans[r] = plans[r] + byte_ids(" " + result) + [EOS]
            if pos[r] < len(plans[r]):
                actions[r] = plans[r][pos[r]]
            pos[r] += 1
        new, reward, terminated, _, info = env.step(actions)
        for r in range(N):  # every observation's tokens are a prefix of the next one's
            seen = obs["attention_mask"][r] == 1
            assert (new["input_ids"][r][seen] == obs["input_ids"][r][seen]).all()
            assert (new["attention_mask"][r][seen] == 1).all()
            assert (new["from_env"][r][seen] == obs["from_env"][r][seen]).all()
        for r in np.flatnonzero(info.get("_response", np.zeros(N, bool))):
            infos[r] = {k: v[r] for k, v in info.items() if k[0] != "_" and not isinstance(v, dict)}
        obs, total, done = new, total + reward, terminated
        if terminated.all():
            break
    return total, infos


def test_calc_parser_values_and_errors():
    assert calc("37*12") == 444
    assert calc("(23+41)*17") == 1088
    assert calc("2+3*4") == 14 and calc("2*3+4") == 10 and calc("10-4-3") == 3
    assert calc(" -(2 - 5) * 3 ") == 9
    for bad in ("", "2+", "(2+3", "2/3", "2**3", "__import__('os')", "1e3", "2 3", "x"):
        with pytest.raises(CalcError):
            calc(bad)
    with pytest.raises(CalcError, match="beyond"):
        calc("99999999*99999999*99999999")
    with pytest.raises(CalcError, match="nested"):
        calc("(" * 20 + "1" + ")" * 20)
    tool = CalcTool()
    assert tool("I think <calc>3*4</calc>") == ("3*4", "=12")
    assert tool("<calc>3*</calc>") == ("3*", "=error")
    assert tool("<calc>3*4</calc> and") is None and tool("</calc>") == ("", "=error")


def test_scripted_tool_agent_solves_held_out_calc_and_guessing_fails():
    env = calc_env(32, split="test")
    rewards, infos = run_scripted(env, use_tool=True)
    assert rewards.tolist() == [1.0] * 32
    assert all(i["used_tool"] and i["n_tool_calls"] == 1 and i["eos"] for i in infos)
    expr, result = infos[0]["tool_calls"][0]
    assert result == f"={calc(expr)}" and infos[0]["reference"] == str(calc(expr))
    guess, guess_infos = run_scripted(calc_env(32, split="test"), use_tool=False)
    assert guess.mean() <= 0.05
    assert not any(i["used_tool"] for i in guess_infos)


def test_env_tokens_are_marked_and_rows_get_different_counts_at_one_step():
    env = calc_env(2, split="train")
    obs, _ = env.reset(
        options={"prompts": ["What is 3*4?\n", "What is 11*13?\n"], "references": ["12", "143"]}
    )
    assert set(obs) == {"input_ids", "attention_mask", "from_env"}
    np.testing.assert_array_equal(obs["from_env"], obs["attention_mask"])  # the prompt
    texts = ["<calc>3*4</calc>", "<calc>11*13</calc>"]
    plan = [byte_ids(t.rjust(18, " ")) for t in texts]  # both close the call at the same step
    for t in range(18):
        obs, *_ = env.step(np.array([plan[0][t], plan[1][t]]))
    assert response_text(obs, 0).endswith("</calc>=12") and response_text(obs, 1).endswith("=143")
    n = obs["attention_mask"][:, P:].sum(1)
    assert n.tolist() == [18 + 3, 18 + 4]  # '=12' vs '=143': different counts at one step
    assert obs["from_env"][0, P : P + 21].tolist() == [0] * 18 + [1] * 3
    assert obs["from_env"][1, P : P + 22].tolist() == [0] * 18 + [1] * 4
    agent = (obs["from_env"] == 0) & (obs["attention_mask"] == 1)
    assert set(obs["input_ids"][agent].tolist()) <= set(byte_ids(" " + "".join(texts)))


def test_two_turns_with_score_feedback_and_a_callable():
    env = gym.make("TextRLHF-v0", prompts="reverse", max_turns=2, max_new_tokens=48)
    obs, _ = env.reset(options={"prompt": "reverse: abcd\n"})
    for token in byte_ids("dcbx") + [EOS]:
        obs, reward, terminated, _, info = env.step(token)
    assert not terminated and reward == 0.0
    written = obs["input_ids"][P:][obs["from_env"][P:] == 1]
    assert bytes(int(i) - 3 for i in written).decode() == "\n[score 0.75] again:\n"
    assert obs["input_ids"][P + 4] == EOS and obs["from_env"][P + 4] == 0  # the agent's EOS
    for token in byte_ids("dcba") + [EOS]:
        obs, reward, terminated, _, info = env.step(token)
    assert terminated and reward == 1.0  # the last turn's score
    assert info["turn_scores"] == [0.75, 1.0] and info["responses"] == ["dcbx", "dcba"]
    assert info["score_turn1"] == 0.75 and info["score_turn2"] == 1.0 and info["n_turns"] == 2

    seen = []

    def feedback(prompt, responses, scores):
        seen.append((prompt, list(responses), list(scores)))
        return "\nno:"

    env = gym.make("TextRLHF-v0", prompts="reverse", max_turns=3, feedback=feedback)
    env.reset(options={"prompt": "reverse: abc\n"})
    for token in [*byte_ids("x"), EOS, *byte_ids("y"), EOS, *byte_ids("cba"), EOS]:
        _, reward, terminated, _, info = env.step(token)
    assert terminated and reward == 1.0 and info["n_turns"] == 3
    assert seen == [("reverse: abc\n", ["x"], [0.0]), ("reverse: abc\n", ["x", "y"], [0.0, 0.0])]


def test_mask_and_constant_feedback_and_a_callable_that_takes_the_reference():
    env = gym.make("TextRLHF-v0", prompts="reverse", max_turns=2, feedback="mask",
                   max_new_tokens=48)  # fmt: skip
    for answer, slots in (("dxbaa", "d_ba+"), ("dc", "dc__"), ("dcba", "dcba")):
        obs, _ = env.reset(options={"prompt": "reverse: abcd\n"})
        for token in byte_ids(answer) + [EOS]:
            obs, reward, terminated, _, _ = env.step(token)
        assert not terminated and reward == 0.0
        written = obs["input_ids"][P:][obs["from_env"][P:] == 1]
        assert bytes(int(i) - 3 for i in written).decode() == f"\n[{slots}] again:\n"

    env = gym.make("TextRLHF-v0", prompts="reverse", max_turns=2, feedback="constant")
    obs, _ = env.reset(options={"prompt": "reverse: abcd\n"})
    for token in byte_ids("dcbx") + [EOS]:
        obs, *_ = env.step(token)
    written = obs["input_ids"][P:][obs["from_env"][P:] == 1]
    assert bytes(int(i) - 3 for i in written).decode() == "\n[try again]\n"

    seen = []

    def feedback(prompt, responses, scores, reference):
        seen.append(reference)
        return "\nno:"

    env = gym.make("TextRLHF-v0", prompts="reverse", max_turns=2, feedback=feedback)
    env.reset(options={"prompt": "reverse: abc\n"})
    for token in [*byte_ids("x"), EOS]:
        env.step(token)
    assert seen == ["cba"]


def test_env_text_that_does_not_fit_ends_the_episode():
    env = gym.make("TextRLHF-v0", prompts="calc", tools=["calc"], reward_fn="exact_answer",
                   max_new_tokens=18, missing_eos_penalty=0.5)  # fmt: skip
    env.reset(options={"prompt": "What is 3*4?\n"})
    for token in byte_ids("<calc>3*4</calc>")[:-1]:
        env.step(token)
    _, reward, terminated, _, info = env.step(byte_ids(">")[0])
    assert terminated and info["hit_length_limit"] and info["n_tool_calls"] == 0
    assert reward == pytest.approx(0.0 - 0.5)


def test_max_tool_calls_bounds_the_calls():
    env = gym.make("TextRLHF-v0", prompts="calc", tools=["calc"], reward_fn="exact_answer",
                   max_new_tokens=64, max_tool_calls=1)  # fmt: skip
    obs, _ = env.reset(options={"prompt": "What is 3*4?\n"})
    for token in byte_ids("<calc>1*2</calc><calc>3*4</calc>12") + [EOS]:
        obs, reward, terminated, _, info = env.step(token)
    assert info["response"] == "<calc>1*2</calc>=2<calc>3*4</calc>12"
    assert info["n_tool_calls"] == 1 and reward == 1.0


def test_without_tools_or_turns_the_observation_is_unchanged():
    env = gym.make("TextRLHF-v0")
    assert set(env.observation_space.spaces) == {"input_ids", "attention_mask"}
    env = gym.make("TextRLHF-v0", max_turns=2)
    assert env.observation_space["from_env"] == gym.spaces.Box(0, 1, (64,), np.int8)


@pytest.mark.parametrize("kwargs", [{"tools": ["calc"], "prompts": "calc",
                                     "reward_fn": "exact_answer"}, {"max_turns": 2}])  # fmt: skip
def test_checkers_pass_with_tools_and_turns(kwargs):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("TextRLHF-v0", **kwargs).unwrapped
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_single_and_vector_env_agree_and_seeds_repeat():
    def episode_texts(seed: int) -> list[str]:
        env = calc_env(4, split="train")
        _, infos = run_scripted(env, use_tool=True, seed=seed)
        return [i["response"] for i in infos]

    assert episode_texts(5) == episode_texts(5)
    assert episode_texts(5) != episode_texts(6)
    env = gym.make("TextRLHF-v0", prompts="calc", tools=["calc"], reward_fn="exact_answer",
                   max_new_tokens=48)  # fmt: skip
    env.reset(options={"prompt": "What is 11*13?\n"})
    for token in byte_ids("<calc>11*13</calc> 143") + [EOS]:
        obs, reward, terminated, _, info = env.step(token)
    vec = calc_env(1, split="train")
    vec.reset(options={"prompts": ["What is 11*13?\n"]})
    for token in byte_ids("<calc>11*13</calc> 143") + [EOS]:
        vobs, vreward, vterminated, _, vinfo = vec.step(np.array([token]))
    assert info["response"] == vinfo["response"][0] == "<calc>11*13</calc>=143 143"
    for key in obs:
        np.testing.assert_array_equal(obs[key], vobs[key][0])
    assert reward == vreward[0] == 1.0


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="unknown tool 'abacus'"):
        gym.make("TextRLHF-v0", tools=["abacus"])
    with pytest.raises(TypeError, match="tools must be a list"):
        gym.make("TextRLHF-v0", tools="calc")
    with pytest.raises(ValueError, match=r"max_turns must be an int in \[1, 1048576\], got 0"):
        gym.make("TextRLHF-v0", max_turns=0)
    with pytest.raises(ValueError, match="feedback must be one of"):
        gym.make("TextRLHF-v0", max_turns=2, feedback="praise")
    with pytest.raises(ValueError, match="needs an integer reference"):
        env = gym.make("TextRLHF-v0", prompts="reverse", reward_fn="exact_answer")
        env.reset(seed=0)
        for token in byte_ids("ab") + [EOS]:
            env.step(token)


def test_calc_and_exact_answer_read_ascii_digits_only():
    """`\\d` and int() also take Arabic-Indic, fullwidth and other Unicode digits: a response
    '١٢' scored as 12."""
    for text in ("\u0663+4", "\uff14*2", "1\u0660", "\u0664", "\U0001d7d9"):
        with pytest.raises(CalcError, match="unexpected"):
            calc(text)
    assert CalcTool()("<calc>\u0663*4</calc>") == ("\u0663*4", "=error")
    exact = make_reward_fn("exact_answer")
    prompts = ["What is 3*4?\n"] * 3
    responses = ["12", "\u0661\u0662", "\uff11\uff12"]
    assert exact(prompts, responses, ["12"] * 3).tolist() == [1.0, 0.0, 0.0]
    assert last_integer("7 <calc>3*4</calc>=12 \u0661\u0662") == 7  # was 12 (the Arabic-Indic)
    with pytest.raises(ValueError, match="needs an integer reference"):
        exact(prompts[:1], ["12"], ["\u0661\u0662"])


def test_feedback_text_that_is_not_unicode_names_the_feedback():
    """A feedback callable returning a lone surrogate was a UnicodeEncodeError from the
    tokenizer, naming nothing."""
    env = gym.make("TextRLHF-v0", prompts="reverse", max_turns=2,
                   feedback=lambda prompt, responses, scores: "\nno\ud800:")  # fmt: skip
    env.reset(options={"prompt": "reverse: abc\n"})
    env.step(byte_ids("x")[0])
    with pytest.raises(ValueError, match=r"feedback for 'reverse: abc\\n': the feedback text"):
        env.step(EOS)
    env = gym.make("TextRLHF-v0", prompts="reverse")
    with pytest.raises(ValueError, match="the reference .* lone surrogate"):
        env.reset(options={"prompt": "reverse: abc\n", "reference": "\udfff"})
