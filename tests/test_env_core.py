"""TextRLHFEnv: observation layout, episode end, rewards at T, seeding and determinism."""

import gymnasium as gym
import numpy as np
import pytest

import textenv
from textenv import TextRLHFEnv, make_reward_fn

EOS, PAD = 1, 0


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]


def test_default_make_works_offline_and_spaces():
    env = gym.make("TextRLHF-v0")
    obs, info = env.reset(seed=0)
    assert info == {}
    assert env.action_space == gym.spaces.Discrete(259)
    assert obs["input_ids"].shape == (64,) and obs["input_ids"].dtype == np.int64
    assert obs["attention_mask"].shape == (64,) and obs["attention_mask"].dtype == np.int8
    assert env.observation_space.contains(obs)


def test_tokenizer_contract():
    tok = textenv.default_tokenizer()
    assert len(tok) == 259 and tok.pad_token_id == 0 and tok.eos_token_id == 1
    assert tok.unk_token_id == 2
    assert textenv.load_tokenizer("byte").eos_token_id == 1
    assert textenv.load_tokenizer(tok) is tok


def test_observation_layout_left_padded_prompt_then_generated():
    env = TextRLHFEnv(max_prompt_tokens=32, max_new_tokens=8)
    obs, _ = env.reset(options={"prompt": "reverse: abc\n"})
    prompt = byte_ids("reverse: abc\n")
    P = 32
    assert obs["input_ids"][P - len(prompt) : P].tolist() == prompt
    assert (obs["input_ids"][: P - len(prompt)] == PAD).all()
    assert obs["attention_mask"][: P - len(prompt)].sum() == 0
    assert obs["attention_mask"][P - len(prompt) : P].all()
    assert obs["attention_mask"][P:].sum() == 0 and (obs["input_ids"][P:] == PAD).all()

    obs, reward, terminated, truncated, info = env.step(byte_ids("c")[0])
    assert (reward, terminated, truncated, info) == (0.0, False, False, {})
    assert obs["input_ids"][P] == byte_ids("c")[0] and obs["attention_mask"][P] == 1
    assert obs["attention_mask"][P + 1 :].sum() == 0
    # positions of real tokens form one contiguous run
    real = np.flatnonzero(obs["attention_mask"])
    assert real.tolist() == list(range(P - len(prompt), P + 1))


def test_eos_ends_episode_and_is_in_obs_and_reward_matches_direct_call():
    env = TextRLHFEnv(max_new_tokens=8)
    env.reset(options={"prompt": "reverse: abc\n"})
    for t in byte_ids("cb"):
        env.step(t)
    obs, reward, terminated, truncated, info = env.step(EOS)
    assert terminated is True and truncated is False
    assert isinstance(reward, float)
    assert obs["input_ids"][32 + 2] == EOS and obs["attention_mask"][32 + 2] == 1
    assert info["response"] == "cb" and info["reference"] == "cba"
    assert info["prompt"] == "reverse: abc\n"
    assert info["eos"] is True and info["hit_length_limit"] is False
    expected = make_reward_fn("edit_distance")(["reverse: abc\n"], ["cb"], ["cba"])[0]
    assert reward == pytest.approx(expected) == pytest.approx(2 / 3)
    assert info["score"] == reward and info["reward_components"] == {"edit_distance": reward}
    with pytest.raises(RuntimeError, match="reset"):
        env.step(100)


def test_length_limit_terminates_and_scores():
    env = TextRLHFEnv(max_new_tokens=3)
    env.reset(options={"prompt": "reverse: abc\n"})
    rewards = [env.step(t)[1] for t in byte_ids("cb")]
    obs, reward, terminated, truncated, info = env.step(byte_ids("a")[0])
    assert rewards == [0.0, 0.0]
    assert terminated is True and truncated is False
    assert info["hit_length_limit"] is True and info["eos"] is False
    assert info["response"] == "cba" and reward == 1.0
    assert obs["attention_mask"][32:].tolist() == [1, 1, 1]


def test_missing_eos_penalty_applies_only_without_eos():
    env = TextRLHFEnv(max_new_tokens=3, missing_eos_penalty=0.25)
    env.reset(options={"prompt": "reverse: abc\n"})
    for t in byte_ids("cba"):
        _, reward, terminated, _, info = env.step(t)
    assert terminated and info["hit_length_limit"] is True
    assert info["score"] == 1.0 and reward == pytest.approx(0.75)  # score kept, reward penalized
    env.reset(options={"prompt": "reverse: abc\n"})
    for t in [*byte_ids("cb"), EOS]:
        _, reward, terminated, _, info = env.step(t)
    assert info["eos"] is True and reward == info["score"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "reward_fn",
    ["repetition", {"name": "length", "target": 4}, lambda p, r: float(len(r) + len(p))],
)
def test_swapping_the_reward_is_one_argument(reward_fn):
    env = gym.make("TextRLHF-v0", reward_fn=reward_fn, max_new_tokens=6)
    env.reset(seed=3)
    for t in byte_ids("abab"):
        env.step(t)
    _, reward, terminated, _, info = env.step(EOS)
    direct = make_reward_fn(reward_fn)([info["prompt"]], ["abab"], [info["reference"]])[0]
    assert terminated and info["response"] == "abab"
    assert reward == pytest.approx(direct)


def test_weighted_sum_reports_every_component_including_weight_zero():
    spec = {
        "weighted_sum": [
            {"name": "edit_distance", "weight": 2.0},
            {"name": "length", "weight": 0.0},
        ]
    }
    env = gym.make("TextRLHF-v0", reward_fn=spec, max_new_tokens=8)
    env.reset(options={"prompt": "reverse: abc\n"})
    for t in byte_ids("cba"):
        env.step(t)
    _, reward, _, _, info = env.step(EOS)
    assert info["reward_components"] == {"edit_distance": 1.0, "length": 3 / 32}
    assert reward == 2.0


def test_render_ansi():
    env = gym.make("TextRLHF-v0", render_mode="ansi")
    env.reset(options={"prompt": "sort: cab\n"})
    env.step(byte_ids("a")[0])
    assert env.render() == "sort: cab\na"


def test_forced_held_out_task_prompt_gets_its_computed_reference():
    env = TextRLHFEnv(split="train")
    word = next(d["prompt"] for d in textenv.make_task("reverse", "test", 5))
    assert word not in env.dataset.prompts
    env.reset(options={"prompt": word})
    info = env.step(EOS)[4]
    assert info["prompt"] == word
    assert info["reference"] == word.removeprefix("reverse: ").removesuffix("\n")[::-1]


def test_forced_prompt_by_index_and_reference():
    env = TextRLHFEnv(prompts="sort")
    obs, _ = env.reset(options={"prompt": 5})
    assert obs["input_ids"][:32].tolist() == env.dataset.input_ids[5].tolist()
    info = env.step(EOS)[4]
    assert info["prompt"] == env.dataset.prompts[5]
    assert info["reference"] == env.dataset.references[5]
    assert info["reference"] == "".join(sorted(info["prompt"].removeprefix("sort: ").strip()))
    env.reset(options={"prompt": "say hi\n", "reference": "hi"})
    for t in byte_ids("hi"):
        env.step(t)
    _, reward, _, _, info = env.step(EOS)
    assert (info["prompt"], info["reference"], info["response"]) == ("say hi\n", "hi", "hi")
    assert reward == 1.0


def rollout(env, actions, seed):
    out = [env.reset(seed=seed)]
    for a in actions:
        step = env.step(a)
        out.append(step)
        if step[2]:
            out.append(env.reset())
    return out


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    else:
        assert a == b


def test_same_seed_same_actions_identical_even_when_interleaved():
    rng = np.random.default_rng(0)
    actions = [int(x) for x in rng.choice([EOS, *range(100, 108)], size=60)]
    make = lambda: gym.make("TextRLHF-v0", prompts="mixed", max_new_tokens=5)  # noqa: E731
    a, b = make(), make()
    ra, rb = [a.reset(seed=7)], [b.reset(seed=7)]
    for act in actions:  # stepped alternately
        for env, log in ((a, ra), (b, rb)):
            step = env.step(act)
            log.append(step)
            if step[2]:
                log.append(env.reset())
    assert_same(ra, rb)
    assert_same(ra, rollout(make(), actions, seed=7))
    other = rollout(make(), actions, seed=8)
    prompts = lambda log: [s[4]["prompt"] for s in log if len(s) == 5 and s[4]]  # noqa: E731
    assert prompts(other) != prompts(ra)


def test_importing_textenv_pulls_in_neither_agents_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys, textenv; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('agents', 'torch', 'transformers')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
