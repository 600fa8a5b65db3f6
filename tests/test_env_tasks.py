"""Text tasks users bring (textenv.text_task): a guessing game defined outside the project runs
through gym.make and make_vec, its replies are env-written tokens, its per-turn rewards reach the
steps that ended the turns, and tools may be plain functions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from guess_task import GuessNumber

import textenv  # noqa: F401  (registers TextRLHF-v0)
from textenv.text_task import make_text_task

EOS, P, M = 1, 16, 40


def decode(ids) -> str:
    return bytes(int(i) - 3 for i in ids if int(i) >= 3).decode()


def last_reply(obs: dict, row: int | None = None) -> str:
    """The text of the env's last run of tokens after the prompt."""
    ids, from_env = obs["input_ids"], obs["from_env"]
    if row is not None:
        ids, from_env = ids[row], from_env[row]
    ids, from_env = ids[P:], from_env[P:]
    env_at = np.flatnonzero(from_env)
    if not env_at.size:
        return ""
    end = env_at[-1] + 1
    start = end
    while start > 0 and from_env[start - 1]:
        start -= 1
    return decode(ids[start:end])


class BinarySearch:
    """A scripted agent: binary search over [1, 8], reading the env's hints."""

    def __init__(self) -> None:
        self.low, self.high, self.queue, self.guess, self.seen = 1, 8, [], None, ""

    def act(self, reply: str) -> int:
        if not self.queue:
            if self.guess is not None:
                if "higher" in reply:
                    self.low = self.guess + 1
                elif "lower" in reply:
                    self.high = self.guess - 1
            self.guess = (self.low + self.high) // 2
            self.queue = [b + 3 for b in str(self.guess).encode()] + [EOS]
        return self.queue.pop(0)


def play(env, seed: int):
    obs, _ = env.reset(seed=seed)
    agent, steps = BinarySearch(), []
    while True:
        action = agent.act(last_reply(obs))
        obs2, reward, terminated, truncated, info = env.step(action)
        steps.append((obs, action, reward, obs2))
        obs = obs2
        if terminated or truncated:
            return steps, info


def make_env(**kwargs):
    return gym.make("TextRLHF-v0", task=GuessNumber(), max_prompt_tokens=P, max_new_tokens=M,
                    **kwargs)  # fmt: skip


def test_a_user_task_runs_through_gym_make_with_per_turn_rewards():
    env = make_env()
    for seed in range(6):
        steps, info = play(env, seed)
        target = int(info["reference"])
        guesses = [int(t) for t in info["responses"]]
        assert guesses[-1] == target and len(guesses) == info["n_turns"] <= 3
        # each turn's reward is paid at the EOS that ended it, zero elsewhere
        expected = [-0.1] * (len(guesses) - 1) + [1.0]
        paid = [(a, r) for _, a, r, _ in steps if r != 0.0]
        assert [a for a, _ in paid] == [EOS] * len(guesses)
        np.testing.assert_allclose([r for _, r in paid], expected)
        assert info["turn_scores"] == pytest.approx(expected)
        assert info["score"] == pytest.approx(sum(expected))
        assert info["prompt"] == "Guess 1-8:" and target % 2 == 1  # the train split: odd targets
        # the replies are env-written (from_env 1), the agent's tokens are not
        final = steps[-1][3]
        gen = final["input_ids"][P:][final["attention_mask"][P:] == 1]
        env_marks = final["from_env"][P:][final["attention_mask"][P:] == 1]
        assert decode(gen[env_marks == 1]) == "".join(
            " higher:" if g < target else " lower:" for g in guesses[:-1]
        )
        assert decode(gen[env_marks == 0]) == "".join(str(g) for g in guesses)


def test_prefix_property_and_action_tokens():
    env = make_env()
    steps, _ = play(env, 0)
    for before, action, _, after in steps:
        keep = before["attention_mask"] == 1
        assert (after["input_ids"][keep] == before["input_ids"][keep]).all()
        assert (after["attention_mask"][keep] == 1).all()
        new = (after["attention_mask"] == 1) & ~keep
        first = np.flatnonzero(new)[0]
        assert after["input_ids"][first] == action and after["from_env"][first] == 0
        assert (after["from_env"][np.flatnonzero(new)[1:]] == 1).all()


@pytest.mark.parametrize("placement", ["final", "last"])
def test_reward_placement_final_and_last(placement):
    env = make_env(reward_placement=placement)
    steps, info = play(env, 1)
    rewards = [reward for _, _, reward, _ in steps]
    assert all(r == 0.0 for r in rewards[:-1])
    turns = info["turn_scores"]
    assert rewards[-1] == pytest.approx(sum(turns) if placement == "final" else turns[-1])


def test_make_vec_rows_match_single_env_episodes_and_groups_share_a_start():
    venv = gym.make_vec("TextRLHF-v0", num_envs=4, vectorization_mode="vector_entry_point",
                        task=GuessNumber(), max_prompt_tokens=P, max_new_tokens=M)  # fmt: skip
    for options in ({}, {"repeat": 2}):
        obs, _ = venv.reset(seed=5, options=options)
        agents = [BinarySearch() for _ in range(4)]
        totals, done, finals = np.zeros(4), np.zeros(4, dtype=bool), {}
        while not done.all():
            actions = np.array([EOS if done[r] else agents[r].act(last_reply(obs, r))
                                for r in range(4)])  # fmt: skip
            obs, rewards, terminated, _, info = venv.step(actions)
            totals += rewards
            for r in np.flatnonzero(info.get("_score", np.zeros(4, dtype=bool))):
                finals[r] = (info["reference"][r], info["score"][r], info["turn_scores"][r])
            done = terminated
        for r, (ref, score, turns) in finals.items():
            assert totals[r] == pytest.approx(score) == pytest.approx(sum(turns))
            assert info is not None and int(ref) % 2 == 1
        if options:  # a group's rows start from copies of one state: the same target
            assert finals[0][0] == finals[1][0] and finals[2][0] == finals[3][0]
            assert finals[0][2] == finals[1][2]


def test_same_seed_same_episodes_and_test_split():
    a = [play(make_env(), s)[1]["reference"] for s in range(8)]
    b = [play(make_env(), s)[1]["reference"] for s in range(8)]
    assert a == b and len(set(a)) > 1
    test = [play(make_env(split="test"), s)[1]["reference"] for s in range(8)]
    assert all(int(t) % 2 == 0 for t in test)


def test_check_env_gymnasium_and_sb3():
    from gymnasium.utils.env_checker import check_env

    check_env(make_env().unwrapped, skip_render_check=True)
    sb3_env_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    sb3_env_checker.check_env(make_env().unwrapped, warn=True)


def test_a_tool_function_is_called_with_the_agents_text():
    calls = []

    def lookup(argument: str) -> str:
        calls.append(argument)
        return argument.upper()

    env = gym.make("TextRLHF-v0", prompts=["find:"], reward_fn="length", tools=[lookup],
                   max_prompt_tokens=P, max_new_tokens=M)  # fmt: skip
    env.reset(seed=0)
    for b in b"x <lookup>ab c</lookup>":
        obs, *_ = env.step(b + 3)
    obs, reward, terminated, _, info = env.step(EOS)
    assert calls == ["ab c"]
    gen = obs["input_ids"][P:][obs["attention_mask"][P:] == 1]
    marks = obs["from_env"][P:][obs["attention_mask"][P:] == 1]
    assert decode(gen[marks == 1]) == "=AB C"
    assert info["tool_calls"] == [("ab c", "=AB C")] and info["used_tool"]


def test_a_tasks_own_tool_with_stop_strings():
    class Lookup(GuessNumber):
        tool_stops = ("?",)

        def tool(self, state, text):
            return (
                f" it is {'odd' if state['target'] % 2 else 'even'}."
                if text.endswith("odd?")
                else None
            )

    seen = []
    task = Lookup()
    original = task.tool
    task.tool = lambda state, text: seen.append(text) or original(state, text)
    env = gym.make("TextRLHF-v0", task=task, max_prompt_tokens=P, max_new_tokens=M)
    env.reset(seed=0)
    for b in b"a? odd?":
        obs, *_ = env.step(b + 3)
    # only at the stop strings, with the text since the env's last token
    assert seen == ["a?", "a? odd?"]
    assert last_reply(obs) == " it is odd."


def test_task_errors_name_the_problem():
    with pytest.raises(ValueError, match="reward_fn"):
        make_env(reward_fn="length")
    with pytest.raises(ValueError, match="prompts"):
        make_env(prompts="sort")
    with pytest.raises(ValueError, match="own episodes"):
        make_env().reset(options={"prompt": "Guess 1-8:"})
    with pytest.raises(TypeError, match="lacks"):
        gym.make("TextRLHF-v0", task=object())
    with pytest.raises(ValueError, match="module:attr"):
        make_text_task("no-colon")
    with pytest.raises(ValueError, match="reward_placement"):
        make_env(reward_placement="middle")

    class NaN(GuessNumber):
        def respond(self, state, text):
            return None, float("nan"), True

    env = gym.make("TextRLHF-v0", task=NaN(), max_prompt_tokens=P, max_new_tokens=M)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="'guess'.*finite"):
        env.step(EOS)


def test_a_task_by_module_name_with_kwargs():
    task = make_text_task("guess_task:GuessNumber", {"high": 4})
    assert isinstance(task, GuessNumber) and task.high == 4


def test_ppo_ratio_is_one_before_the_first_update_on_a_multi_turn_task(tmp_path):
    """The LM policy on the guessing game (per-turn rewards, env replies in the sequence): the
    rollout's log-probs equal a teacher-forced re-evaluation, and turn rewards sit mid-episode."""
    import torch
    from helpers import REPO, text_config

    from agents.run.config import load_config
    from agents.run.trainer import Trainer

    cfg = text_config(str(REPO / "agents/assets/tiny-sft"), str(tmp_path), n_steps=40,
                      batch_size=40 * 8, n_epochs=1)  # fmt: skip
    cfg["env"]["kwargs"] = {"task": "guess_task:GuessNumber", "max_prompt_tokens": P,
                            "max_new_tokens": M}  # fmt: skip
    cfg["kl"]["enabled"] = False
    cfg["total_timesteps"] = 8 * 40
    trainer = Trainer(load_config(cfg))
    trainer.collector.collect()
    buffer = trainer.buffer
    env_tokens = buffer.obs["from_env"][:, :, P:].sum(-1).amax(0)  # (N,)
    assert env_tokens.max() > 0  # the game replied inside episodes
    # rewards paid at turns that ended mid-episode (not the episode's last valid step)
    after = torch.cat([buffer.valid[1:], torch.zeros_like(buffer.valid[:1])])  # (T, N)
    last = buffer.valid & ~after
    assert ((buffer.rewards != 0) & buffer.valid & ~last).any()
    mb = buffer.full_batch(sequence=True)
    log_prob, _, value = trainer.policy.evaluate(mb)
    ratio = torch.exp(log_prob - mb.log_probs)[mb.valid]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(value[mb.valid], mb.values[mb.valid], atol=1e-5, rtol=0)


def test_sft_rows_from_a_tasks_demonstrations_follow_the_env_layout():
    """`textrlhf sft` with a task by name: prompt left-padded to P, each move + EOS in the loss,
    the replies in the sequence but not in the loss."""
    from agents.rlhf.sft import SFTConfig, task_demonstrations
    from textenv import default_tokenizer

    cfg = SFTConfig(tasks=["guess_task:GuessNumber"], n_per_task=3, max_prompt_tokens=P,
                    max_new_tokens=M, eval={"task": "guess_task:GuessNumber"})  # fmt: skip
    rows = task_demonstrations("guess_task:GuessNumber", None, cfg, default_tokenizer(),
                               np.random.default_rng(0))  # fmt: skip
    assert len(rows) == 3
    for ids, mask, loss in rows:
        prompt = decode(ids[:P][mask[:P] == 1])
        assert prompt == "Guess 1-8:" and mask[P - len(prompt) : P].all()
        gen, trained = ids[P:][mask[P:] == 1], loss[P:][mask[P:] == 1]
        moves = decode(gen[trained & (gen != EOS)])
        replies = decode(gen[~trained])
        assert moves.isdigit() and set(replies.split(":")) <= {" higher", " lower", ""}
        assert (gen[trained] == EOS).sum() == len(replies.split(":"))  # one EOS per move


class LongReply:
    """One long reply, then the episode ends at the second turn."""

    def reset(self, rng, split):
        return "Go:", {"turns": 0}

    def respond(self, state, text):
        state["turns"] += 1
        return ("." * 30 if state["turns"] == 1 else None), 0.0, state["turns"] == 2


def test_a_row_that_ends_early_after_env_tokens_does_not_outrun_the_context(gpt2_ctx64_path):
    """The batch keeps feeding a finished row a token per step; with env-written tokens its
    positions would pass the model's context (64 = P + M here) while other rows go on."""
    import torch

    from agents.policies.lm import LMPolicy

    policy = LMPolicy.from_pretrained(gpt2_ctx64_path)
    env = gym.make_vec("TextRLHF-v0", num_envs=2, vectorization_mode="vector_entry_point",
                       task=LongReply(), max_prompt_tokens=16, max_new_tokens=48)  # fmt: skip
    obs, _ = env.reset(seed=0)
    state = policy.initial_state(2)
    for t in range(48):
        tensors = {k: torch.as_tensor(v) for k, v in obs.items()}
        _, _, _, state = policy.act(tensors, state)
        act = torch.tensor([EOS if t < 2 else 3 + ord("a"), 3 + ord("b")])  # row 0 ends at t=1
        state.last_action = act
        obs, _, terminated, _, _ = env.step(act.numpy())
        if terminated.all():
            break
    assert terminated[0] and t == 47  # row 1 ran to the length limit, row 0 was done long before
