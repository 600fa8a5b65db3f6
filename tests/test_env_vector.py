"""TextRLHFVectorEnv: lockstep and next-step autoreset, one reward call per step, infos."""

import gymnasium as gym
import numpy as np
import pytest

from textenv import TextRLHFEnv, TextRLHFVectorEnv

EOS, PAD = 1, 0
A, B = 100, 101  # bytes "a", "b"


class CountingReward:
    """Batched reward (prompts, responses, references) that records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, responses, references):
        self.calls.append(list(responses))
        return np.array([float(len(r)) for r in responses])


def test_make_vec_64_scores_all_rows_finishing_at_a_step_in_one_call():
    counter = CountingReward()
    venv = gym.make_vec("TextRLHF-v0", num_envs=64, reward_fn=counter, max_new_tokens=6)
    assert isinstance(venv, TextRLHFVectorEnv)
    venv.reset(seed=0)
    finish_at = np.arange(64) % 4  # row i emits EOS at step i % 4
    for t in range(4):
        actions = np.where(finish_at == t, EOS, A)
        _, rewards, terminated, truncated, info = venv.step(actions)
        assert len(counter.calls) == t + 1  # exactly one call per step with finishing rows
        assert len(counter.calls[-1]) == 16
        assert np.array_equal(info["_response"], finish_at == t)
        assert np.array_equal(rewards[finish_at == t], np.full(16, float(t)))
        assert np.array_equal(terminated, finish_at <= t) and not truncated.any()
    _, rewards, terminated, _, info = venv.step(np.full(64, A))  # all done: no call
    assert len(counter.calls) == 4 and info == {} and terminated.all() and not rewards.any()


def test_lockstep_finished_rows_are_frozen_until_reset():
    venv = TextRLHFVectorEnv(num_envs=3, max_new_tokens=4)
    obs0, _ = venv.reset(seed=1)
    obs, _, term, _, info = venv.step(np.array([EOS, A, A]))
    assert term.tolist() == [True, False, False]
    frozen = obs["input_ids"][0].copy()
    obs, rewards, term, _, _ = venv.step(np.array([B, B, EOS]))
    assert np.array_equal(obs["input_ids"][0], frozen)  # action of the finished row ignored
    assert rewards[0] == 0.0 and term.tolist() == [True, False, True]
    assert obs["attention_mask"][1, 32:].tolist() == [1, 1, 0, 0]
    obs, _, term, _, info = venv.step(np.array([B, B, B]))
    obs, _, term, _, info = venv.step(np.array([B, B, B]))
    assert term.all() and info["hit_length_limit"].tolist() == [False, True, False]
    assert info["response"][1] == "abbb"
    obs, _ = venv.reset()
    assert obs["attention_mask"][:, 32:].sum() == 0


def test_missing_eos_penalty_in_the_vector_env_matches_the_single_env():
    venv = TextRLHFVectorEnv(num_envs=2, max_new_tokens=2, missing_eos_penalty=0.5)
    venv.reset(options={"prompts": ["reverse: ab\n", "reverse: ab\n"]})
    venv.step(np.array([B, B]))
    _, rewards, term, _, info = venv.step(np.array([EOS, A]))  # row 0 ends with EOS, row 1 not
    assert term.all() and info["hit_length_limit"].tolist() == [False, True]
    assert info["score"].tolist() == pytest.approx([0.5, 1.0])
    assert rewards.tolist() == pytest.approx([0.5, 0.5])  # row 1: 1.0 - 0.5
    env = TextRLHFEnv(max_new_tokens=2, missing_eos_penalty=0.5)
    env.reset(options={"prompt": "reverse: ab\n"})
    env.step(B)
    assert env.step(A)[1] == pytest.approx(rewards[1])


def test_next_step_autoreset_resets_finished_rows_on_the_following_step():
    venv = TextRLHFVectorEnv(num_envs=2, max_new_tokens=4, autoreset_mode="next_step")
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    venv.reset(seed=0)
    _, _, term, _, info = venv.step(np.array([EOS, A]))
    assert term.tolist() == [True, False] and info["_score"].tolist() == [True, False]
    obs, rewards, term, trunc, info = venv.step(np.array([B, A]))  # row 0 resets, B ignored
    assert term.tolist() == [False, False] and rewards.tolist() == [0.0, 0.0] and info == {}
    assert obs["attention_mask"][0, 32:].sum() == 0
    assert obs["attention_mask"][1, 32:].sum() == 2
    obs, *_ = venv.step(np.array([B, A]))
    assert obs["input_ids"][0, 32] == B


def test_vector_rows_match_single_env_on_forced_prompts():
    prompts = ["reverse: abc\n", "sort: cab\n", "swap: abcd\n"]
    responses = [[A, B, EOS], [A, A, A, A], [B, EOS]]
    venv = TextRLHFVectorEnv(num_envs=3, max_new_tokens=4)
    references = ["cba", "abc", "dbca"]
    venv.reset(options={"prompts": prompts, "references": references})
    v_rewards, v_info = np.zeros(3), {}
    for t in range(4):
        actions = np.array([r[t] if t < len(r) else PAD for r in responses])
        _, rewards, _, _, info = venv.step(actions)
        v_rewards += rewards
        for k in ("response", "reference"):
            for i in np.flatnonzero(info.get(f"_{k}", np.zeros(3, bool))):
                v_info[(k, i)] = info[k][i]
    env = TextRLHFEnv(max_new_tokens=4)
    for i, (prompt, tokens) in enumerate(zip(prompts, responses)):
        env.reset(options={"prompt": prompt, "reference": references[i]})
        for tok in tokens:
            _, reward, terminated, _, info = env.step(tok)
        assert terminated and reward == pytest.approx(v_rewards[i])
        assert info["response"] == v_info[("response", i)]
        assert info["reference"] == v_info[("reference", i)]


def test_vector_infos_are_vectorized_gymnasium_style():
    spec = {
        "weighted_sum": [
            {"name": "edit_distance", "weight": 1.0},
            {"name": "length", "weight": 0.0},
        ]
    }
    venv = TextRLHFVectorEnv(num_envs=2, reward_fn=spec, max_new_tokens=4)
    venv.reset(options={"prompts": ["reverse: ab\n", 0], "references": ["ba", None]})
    _, rewards, _, _, info = venv.step(np.array([EOS, A]))
    assert info["response"].dtype == object and info["_response"].tolist() == [True, False]
    assert info["response"][0] == "" and info["reference"][0] == "ba"
    comps = info["reward_components"]
    assert set(comps) == {"edit_distance", "_edit_distance", "length", "_length"}
    assert comps["_length"].tolist() == [True, False] and comps["length"][0] == 0.0
    assert info["eos"].tolist() == [True, False]


def test_vector_same_seed_is_deterministic_and_actions_validated():
    def run(seed):
        venv = TextRLHFVectorEnv(num_envs=8, prompts="mixed", max_new_tokens=3)
        obs, _ = venv.reset(seed=seed)
        out = [obs["input_ids"]]
        for t in range(3):
            obs, rewards, *_ = venv.step(np.full(8, A + t))
            out += [obs["input_ids"], rewards]
        return out

    a, b, c = run(5), run(5), run(6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])

    def after(obs, t, actions):  # `obs` with `actions` written at generated position t
        ids, mask = obs["input_ids"].copy(), obs["attention_mask"].copy()
        ids[:, 32 + t], mask[:, 32 + t] = actions, 1
        return ids, mask

    venv = TextRLHFVectorEnv(num_envs=2)
    obs, _ = venv.reset(seed=0)
    for bad, err in [
        (np.array([1.0, 2.0]), TypeError),
        (np.array([A]), ValueError),
        (np.array([A, 259]), ValueError),
        (np.array([-1, A]), ValueError),
        (np.array(["a", "b"]), TypeError),
    ]:
        with pytest.raises(err):
            venv.step(bad)
    # unchanged: the next valid step writes the first generated token onto the same prompts
    step_obs = venv.step(np.array([A, B]))[0]
    for got, want in zip(
        (step_obs["input_ids"], step_obs["attention_mask"]), after(obs, 0, [A, B])
    ):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="2 prompts"):
        venv.reset(options={"prompts": ["x\n"]})
    with pytest.raises(ValueError, match="needs a reference"):
        venv.reset(options={"prompts": [0, "hello\n"]})  # not in the prompt set, no reference
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        venv.reset(options={"prompts": [0, "x" * 40], "references": [None, "y"]})
    # a failed reset changes nothing: the episodes go on where they were
    next_obs = venv.step(np.array([B, A]))[0]
    for got, want in zip((next_obs["input_ids"], next_obs["attention_mask"]),
                         after(step_obs, 1, [B, A])):  # fmt: skip
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="autoreset_mode"):
        TextRLHFVectorEnv(num_envs=2, autoreset_mode="same_step")


def test_vector_render_ansi_and_reset_before_step():
    venv = TextRLHFVectorEnv(num_envs=2, render_mode="ansi", max_new_tokens=4)
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.array([A, A]))
    venv.reset(options={"prompts": ["sort: ba\n", "reverse: ab\n"]})
    venv.step(np.array([A, B]))
    assert venv.render() == ("sort: ba\na", "reverse: ab\nb")
    _, rewards, _, _, info = venv.step(np.array([EOS, EOS]))
    assert venv.reward_fn.name == "edit_distance" and info["reference"].tolist() == ["ab", "ba"]
    assert info["response"].tolist() == ["a", "b"] and rewards.tolist() == [0.5, 0.5]
