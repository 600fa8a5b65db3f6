"""The LM policy on episodes where the env writes tokens too (tool results, feedback).

Env-written tokens enter the KV cache in one batched forward and are never actions: the PPO ratio
of a fresh rollout is exactly 1, and cached logits after an injection equal a fresh forward.
"""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import byte_ids, text_config

import textenv.tools
from agents.policies.lm import LMPolicy
from agents.policies.sequences import position_ids_from_mask
from agents.run.config import load_config
from agents.run.trainer import Trainer

EOS = 1


@torch.no_grad()
def fresh_logits(policy: LMPolicy, obs: dict, row: int) -> torch.Tensor:
    """Logits of the next token from a full, uncached forward of the model on one row."""
    mask = torch.as_tensor(obs["attention_mask"][row]).long()
    end = int(mask.nonzero().max()) + 1
    ids = torch.as_tensor(obs["input_ids"][row, :end]).long().unsqueeze(0)
    mask = mask[:end].unsqueeze(0)
    out = policy.model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
    )
    return out.logits[0, -1]


def forced_rollout(policy: LMPolicy, env, scripts, answer_after_tool: bool = False):
    """Drive `env` (lockstep vector env) with scripted tokens, scoring each one with the policy's
    cached `act` (its log-prob under the policy; `state.last_action` set to the scripted token).
    Returns a (T, B) batch, the act() log-probs and values, and the largest difference between
    cached logits and a fresh full forward at the steps right after env tokens were written."""
    obs, _ = env.reset(options={"prompts": [s[0] for s in scripts]})
    B = env.num_envs
    plans = [list(s[1]) for s in scripts]
    state = policy.initial_state(B)
    done = np.zeros(B, dtype=bool)
    steps, logps, values, valids, actions = [], [], [], [], []
    pos = np.zeros(B, dtype=int)
    worst, injections = 0.0, 0
    prev_env = None
    for _ in range(env.unwrapped.max_new_tokens):
        t_obs = {k: torch.as_tensor(v) for k, v in obs.items()}
        _, _, value, state = policy.act(t_obs, state)
        scaled = state.logits / policy.temperature
        if prev_env is not None:
            for r in np.flatnonzero((obs["from_env"].sum(1) > prev_env) & ~done):
                injections += 1
                diff = (state.logits[r] - fresh_logits(policy, obs, r)).abs().max()
                worst = max(worst, float(diff))
        prev_env = obs["from_env"].sum(1)
        act = torch.zeros(B, dtype=torch.long)
        for r in range(B):
            if pos[r] < len(plans[r]):
                act[r] = plans[r][pos[r]]
            pos[r] += 1
        logp = torch.log_softmax(scaled, -1).gather(1, act.unsqueeze(1)).squeeze(1)
        state.last_action = act
        steps.append(t_obs)
        actions.append(act)
        logps.append(logp)
        values.append(value)
        valids.append(torch.as_tensor(~done))
        obs, _, terminated, _, _ = env.step(act.numpy())
        done = terminated.copy()
        if done.all():
            break
    batch = SimpleNamespace(
        obs={k: torch.stack([s[k] for s in steps]) for k in steps[0]},
        actions=torch.stack(actions),
        valid=torch.stack(valids),
    )
    return batch, torch.stack(logps), torch.stack(values), worst, injections


@pytest.fixture(scope="module")
def policy(gpt2_path) -> LMPolicy:
    torch.manual_seed(0)
    return LMPolicy.from_pretrained(gpt2_path)


def check_exact(policy, batch, logps, values):
    with torch.no_grad():
        log_prob, _, value = policy.evaluate(batch)
    valid = batch.valid
    ratio = torch.exp(log_prob - logps)[valid]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(value[valid], values[valid], atol=1e-5, rtol=0)
    log_ratio = (log_prob - logps)[valid]
    approx_kl = ((log_ratio.exp() - 1) - log_ratio).mean()
    assert float(approx_kl) < 1e-9 and float(((ratio - 1).abs() > 0.2).float().mean()) == 0.0


def count_calls(monkeypatch, policy, names):
    counts = dict.fromkeys(names, 0)
    for name in names:
        method = getattr(policy, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            counts[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(policy, name, counted)
    return counts


def test_tool_calls_ratio_is_exact_and_cached_logits_match_a_fresh_forward(policy, monkeypatch):
    counts = count_calls(monkeypatch, policy, ["_prefill", "_splice", "_feed"])
    env = gym.make_vec("TextRLHF-v0", num_envs=4, vectorization_mode="vector_entry_point",
                       prompts="calc", tools=["calc"], reward_fn="exact_answer",
                       max_prompt_tokens=24, max_new_tokens=48)  # fmt: skip
    scripts = [  # rows get env tokens at different steps and in different numbers
        ("What is 3*4?\n", byte_ids("<calc>3*4</calc> 12") + [EOS]),
        ("What is 11*13?\n", byte_ids("143") + [EOS]),
        ("What is 11*13?\n", byte_ids("<calc>11*13</calc> 143") + [EOS]),
        ("What is 3*4?\n", byte_ids("<calc>3</calc><calc>3*4</calc>12") + [EOS]),
    ]
    batch, logps, values, worst, injections = forced_rollout(policy, env, scripts)
    assert injections == 4  # three rows, one of them twice
    assert worst < 1e-5
    # the env's tokens went into the cache at the 4 steps that had some, nothing re-encoded
    assert counts == {"_prefill": 1, "_splice": 0, "_feed": 4}
    # env tokens are never actions: one valid step per agent token
    assert batch.valid.sum(0).tolist() == [len(s[1]) for s in scripts]
    check_exact(policy, batch, logps, values)


def test_two_turns_ratio_is_exact(policy):
    env = gym.make_vec("TextRLHF-v0", num_envs=3, vectorization_mode="vector_entry_point",
                       prompts="reverse", max_turns=2, max_prompt_tokens=20,
                       max_new_tokens=48)  # fmt: skip
    scripts = [
        ("reverse: abcd\n", byte_ids("dcbx") + [EOS] + byte_ids("dcba") + [EOS]),
        ("reverse: abc\n", byte_ids("cba") + [EOS] + byte_ids("cba") + [EOS]),
        ("reverse: abcdef\n", byte_ids("fedcba") + [EOS] + byte_ids("x") + [EOS]),
    ]
    batch, logps, values, worst, injections = forced_rollout(policy, env, scripts)
    assert injections == 3 and worst < 1e-5
    assert batch.valid.sum(0).tolist() == [len(s[1]) for s in scripts]
    check_exact(policy, batch, logps, values)


class EveryFewBytes:
    """A test tool that fires often, writing 1 or 2 tokens depending on the agent's last byte, so
    that sampled rollouts of a random model inject env tokens at different steps per row."""

    name = "every_few_bytes"

    def __call__(self, text):
        if text and ord(text[-1]) % 3 == 0:
            return "", "=" + "z" * (1 + ord(text[-1]) % 2)
        return None


def test_sampled_rollout_with_env_tokens_has_ratio_one_and_zero_approx_kl(
    gpt2_ctx64_path, tmp_path, monkeypatch
):
    monkeypatch.setitem(textenv.tools.TOOLS, "every_few_bytes", EveryFewBytes)
    cfg = text_config(gpt2_ctx64_path, str(tmp_path), n_steps=24, batch_size=24 * 8, n_epochs=1)
    cfg["env"]["kwargs"].update(
        tools=["every_few_bytes"], max_tool_calls=3, max_turns=2, max_new_tokens=24
    )
    cfg["kl"]["enabled"] = False
    trainer = Trainer(load_config(cfg))
    trainer.collector.collect()
    buffer = trainer.buffer
    # injected tokens exist, in different numbers per row
    n_env = (buffer.obs["from_env"][:, :, 20:] == 1).sum(-1).amax(0)  # (N,)
    assert n_env.max() > n_env.min() >= 0 and n_env.max() > 0
    mb = buffer.full_batch(sequence=True)
    log_prob, _, value = trainer.policy.evaluate(mb)
    ratio = torch.exp(log_prob - mb.log_probs)[mb.valid]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(value[mb.valid], mb.values[mb.valid], atol=1e-5, rtol=0)
    metrics = Trainer(load_config(cfg)).iterate()  # one epoch, one minibatch: before any step
    assert abs(metrics["train/approx_kl"]) < 1e-6 and metrics["train/clipfrac"] == 0.0


def test_training_logs_held_out_tool_use_and_turn_scores(gpt2_path, tmp_path):
    import json

    cfg = text_config(gpt2_path, str(tmp_path), n_steps=24, batch_size=24 * 8, n_epochs=1)
    cfg["total_timesteps"] = 8 * 24
    cfg["env"]["kwargs"] = {"prompts": "calc", "reward_fn": "exact_answer", "tools": ["calc"],
                            "max_turns": 2, "max_prompt_tokens": 24, "max_new_tokens": 24}  # fmt: skip
    cfg["eval"].update(episodes=4, every=8 * 24)
    trainer = Trainer(load_config(cfg), tmp_path / "run")
    summary = trainer.learn()
    for key in ("initial_eval_metrics", "final_eval_metrics"):
        metrics = summary[key]
        assert 0.0 <= metrics["eval/used_tool"] <= 1.0 and "eval/n_tool_calls" in metrics
        assert "eval/score_turn1" in metrics and "eval/score" in metrics
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final_eval_metrics"]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"eval/used_tool", "episode/used_tool", "episode/n_tool_calls"} <= set(header)
