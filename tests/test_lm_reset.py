"""LMPolicy under every autoreset mode, early size checks, no transformers deprecation warnings.

1. Rows that restart at different steps (native NEXT_STEP, Gymnasium sync/async NEXT_STEP and
   SAME_STEP, lockstep): the rollout's log-probs and values equal the teacher-forced `evaluate`'s,
   the first PPO epoch starts at approx_kl = clipfrac = 0, and greedy evaluation under sync gives
   the lockstep responses.
2. `LMPolicy.check_env_kwargs` rejects a too-long env from the model's config.json alone, fast.
3. A rollout step, a restart and `evaluate` raise no FutureWarning/DeprecationWarning.
"""

from __future__ import annotations

import logging
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import EOS, lm_policy_config, save_tiny_model

import textenv  # noqa: F401  (registers TextRLHF-v0)
from agents.core.buffer import RolloutBuffer
from agents.core.ppo import PPO
from agents.core.rollout import RolloutCollector
from agents.policies.hf import cache_keyword
from agents.policies.lm import LMPolicy
from agents.run.config import load_config
from agents.run.evaluation import evaluate_policy
from textenv import TextRLHFVectorEnv
from textenv.data import make_dataset

MODES = ["lockstep", "next_step", "sync", "same_step", "async"]
P, N, ROWS, T = 20, 10, 6, 40  # prompt width, response limit, env rows, rollout steps


def make_vec_env(mode: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    """TextRLHF-v0 rows under `mode`: the native vector env (lockstep / next_step) or Gymnasium's
    Sync/AsyncVectorEnv over the single env (NEXT_STEP; same_step: SyncVectorEnv, SAME_STEP)."""
    kwargs = {"prompts": "reverse", "max_prompt_tokens": P, "max_new_tokens": N, **kwargs}
    if mode in ("lockstep", "next_step"):
        return TextRLHFVectorEnv(num_envs, autoreset_mode=mode, **kwargs)
    if mode == "same_step":
        return gym.make_vec(
            "TextRLHF-v0", num_envs, vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}, **kwargs,
        )  # fmt: skip
    return gym.make_vec("TextRLHF-v0", num_envs, vectorization_mode=mode, **kwargs)


def eos_biased(policy: LMPolicy, bias: float = 4.0) -> LMPolicy:
    """Give the EOS logit a bias (p(EOS) ~ 0.2 for a random tiny model): episodes end after a
    few tokens, at different steps in different rows."""
    head = policy.model.get_output_embeddings()
    biased = nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[EOS] = bias
    policy.model.set_output_embeddings(biased)
    return policy


def ppo_config(batch_size: int):
    cfg = {
        "env": {"id": "textenv:TextRLHF-v0", "num_envs": ROWS},
        "policy": {"type": "lm"},
        "ppo": {"n_steps": T, "batch_size": batch_size, "n_epochs": 1, "learning_rate": 1e-3},
    }
    return load_config(cfg).ppo


def check_rollout_matches_evaluate(policy: LMPolicy, buffer: RolloutBuffer) -> None:
    valid = buffer.valid
    with torch.no_grad():
        log_prob, _, value = policy.evaluate(buffer.full_batch(sequence=True))
    torch.testing.assert_close(log_prob[valid], buffer.log_probs[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(value[valid], buffer.values[valid], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def biased_gpt2(gpt2_path):
    return eos_biased(LMPolicy.from_pretrained(gpt2_path))


@pytest.mark.parametrize("mode", MODES)
def test_rollout_log_probs_equal_evaluate_under_every_autoreset_mode(mode, gpt2_path):
    policy = eos_biased(LMPolicy.from_pretrained(gpt2_path))
    env = make_vec_env(mode, ROWS)
    try:
        buffer = RolloutBuffer(T, ROWS, env.single_observation_space, env.single_action_space)
        collector = RolloutCollector(env, policy, buffer, seed=0)
        torch.manual_seed(0)
        log = collector.collect()
        if mode != "lockstep":  # rows restarted many times, at many different steps
            assert len(log.returns) >= 3 * ROWS and len(set(log.rollout_steps)) >= 10
        check_rollout_matches_evaluate(policy, buffer)
        # the first PPO epoch re-scores the rollout: ratio 1 everywhere before the first step
        buffer.compute_gae(1.0, 0.95)
        stats = PPO(policy, ppo_config(T * ROWS), 1).update(buffer, 0)
        assert stats["approx_kl"] < 1e-6 and stats["clipfrac"] == 0.0, stats
        # the next rollout continues the episodes with the updated weights
        torch.manual_seed(1)
        collector.collect()
        check_rollout_matches_evaluate(policy, buffer)
    finally:
        env.close()


@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_llama_restarts_match_evaluate(mode, llama_path):
    """Rotary positions and grouped-query attention: a restarted row's spliced keys match."""
    policy = eos_biased(LMPolicy.from_pretrained(llama_path))
    env = make_vec_env(mode, ROWS)
    buffer = RolloutBuffer(T, ROWS, env.single_observation_space, env.single_action_space)
    torch.manual_seed(2)
    log = RolloutCollector(env, policy, buffer, seed=2).collect()
    assert len(log.returns) >= 3 * ROWS
    check_rollout_matches_evaluate(policy, buffer)


def test_one_token_prompts_restart(biased_gpt2):
    """A restarted row whose prefix before the fed token is empty (a one-token prompt)."""
    env = make_vec_env("next_step", ROWS, prompts=["a", "b", "hello world"], reward_fn="length")
    buffer = RolloutBuffer(T, ROWS, env.single_observation_space, env.single_action_space)
    torch.manual_seed(5)
    log = RolloutCollector(env, biased_gpt2, buffer, seed=5).collect()
    assert len(log.returns) >= 3 * ROWS
    check_rollout_matches_evaluate(biased_gpt2, buffer)


def test_restarted_rows_are_spliced_not_re_encoded(biased_gpt2, monkeypatch):
    """Only the restarted rows are encoded; the whole batch is re-encoded only at the start (and
    when the splice is refused, which gives the same numbers)."""
    policy = biased_gpt2
    calls = {"prefill": 0, "splice": 0}
    prefill, splice = LMPolicy._prefill, LMPolicy._splice

    def counting_prefill(self, *args, **kwargs):
        calls["prefill"] += 1
        return prefill(self, *args, **kwargs)

    def counting_splice(self, *args, **kwargs):
        calls["splice"] += 1
        return splice(self, *args, **kwargs)

    monkeypatch.setattr(LMPolicy, "_prefill", counting_prefill)
    monkeypatch.setattr(LMPolicy, "_splice", counting_splice)
    env = make_vec_env("next_step", ROWS)
    buffer = RolloutBuffer(T, ROWS, env.single_observation_space, env.single_action_space)
    collector = RolloutCollector(env, policy, buffer, seed=3)
    torch.manual_seed(3)
    collector.collect()
    assert calls["prefill"] == 2 and calls["splice"] >= 10, calls  # first act + last_value
    check_rollout_matches_evaluate(policy, buffer)
    reference = buffer.log_probs.clone()

    # refusing every splice re-encodes all rows instead: the same actions and numbers
    monkeypatch.setattr(LMPolicy, "_splice", lambda self, *args: False)
    env = make_vec_env("next_step", ROWS)
    buffer = RolloutBuffer(T, ROWS, env.single_observation_space, env.single_action_space)
    calls["prefill"] = 0
    torch.manual_seed(3)
    RolloutCollector(env, policy, buffer, seed=3).collect()
    assert calls["prefill"] > 10
    check_rollout_matches_evaluate(policy, buffer)
    torch.testing.assert_close(buffer.log_probs, reference, atol=1e-5, rtol=0)


def test_unchanged_observation_reuses_outputs_and_restarts_later(biased_gpt2):
    """A row whose observation did not change (a finished lockstep row, or a new episode that
    starts from the very same prompt under SAME_STEP) gets the same outputs again; when its
    observation then grows, its (now stale) cache is rebuilt rather than extended."""
    policy = biased_gpt2
    ids = torch.zeros(2, P + N, dtype=torch.long)
    mask = torch.zeros(2, P + N, dtype=torch.long)
    ids[:, P - 5 : P] = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    mask[:, P - 5 : P] = 1
    obs = {"input_ids": ids.clone(), "attention_mask": mask.clone()}
    state = policy.initial_state(2)
    a0, lp0, v0, state = policy.act(obs, state, deterministic=True)
    # row 0 continues, row 1's observation stays the same (e.g. SAME_STEP: the same prompt again)
    ids[0, P], mask[0, P] = a0[0], 1
    a1, lp1, v1, state = policy.act(
        {"input_ids": ids.clone(), "attention_mask": mask.clone()}, state, deterministic=True
    )
    assert a1[1] == a0[1] and lp1[1] == lp0[1] and v1[1] == v0[1]
    # both rows continue now: row 1's cache holds a token its observation does not; rebuild it
    ids[0, P + 1], mask[0, P + 1] = a1[0], 1
    ids[1, P], mask[1, P] = a1[1], 1
    obs2 = {"input_ids": ids.clone(), "attention_mask": mask.clone()}
    _, lp2, v2, _ = policy.act(obs2, state, deterministic=True)
    _, lp_fresh, v_fresh, _ = policy.act(obs2, policy.initial_state(2), deterministic=True)
    torch.testing.assert_close(lp2, lp_fresh, atol=1e-5, rtol=0)
    torch.testing.assert_close(v2, v_fresh, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- evaluation


def lockstep_greedy(policy: LMPolicy, records: list[dict]) -> dict[str, tuple[str, float]]:
    """Greedy response and score of each prompt: all prompts in one lockstep batch."""
    env = TextRLHFVectorEnv(len(records), prompts=records)
    obs, _ = env.reset(options={"prompts": [r["prompt"] for r in records]})
    state = policy.initial_state(len(records))
    out: dict[str, tuple[str, float]] = {}
    done = np.zeros(len(records), dtype=bool)
    while not done.all():
        tensors = {k: torch.from_numpy(v) for k, v in obs.items()}
        action, _, _, state = policy.act(tensors, state, deterministic=True)
        obs, _, terminated, _, info = env.step(action.numpy())
        for i in np.flatnonzero(terminated & ~done):
            out[info["prompt"][i]] = (info["response"][i], float(info["score"][i]))
        done |= terminated
    return out


def test_greedy_evaluation_under_sync_equals_lockstep():
    """The committed default model, 64 held-out reverse prompts, greedy: every episode of a
    Gymnasium SyncVectorEnv (rows restart at different steps) gives the lockstep response."""
    policy = LMPolicy.from_pretrained(None)
    test = make_dataset("reverse", split="test")
    records = [test[i] for i in range(64)]
    reference = lockstep_greedy(policy, records)
    lockstep_mean = float(np.mean([score for _, score in reference.values()]))
    assert 0.3 < lockstep_mean < 0.9  # a real, imperfect score (docs/lm.md: greedy 0.613)

    env = gym.make_vec("TextRLHF-v0", 16, vectorization_mode="sync", prompts=records)
    log = evaluate_policy(policy, env, 192, deterministic=True, seed=0)
    env.close()
    assert len(log.samples) == 192
    seen = {s["prompt"] for s in log.samples}
    assert len(seen) >= 55  # nearly all 64 prompts, each several times
    for sample in log.samples:
        assert (sample["response"], sample["score"]) == reference[sample["prompt"]]
    sync_mean = float(np.mean(log.returns))
    expected = float(np.mean([reference[s["prompt"]][1] for s in log.samples]))
    assert sync_mean == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- item 2: sizes


def test_check_env_kwargs_fails_fast_from_the_model_config(tmp_path, gpt2_path):
    cfg = lm_policy_config(None)  # the default model: 320 positions
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"32 \+ 1000000000 = 1000000032 tokens exceeds .*320"):
        LMPolicy.check_env_kwargs(cfg, {"max_new_tokens": 10**9})
    assert time.perf_counter() - start < 5.0
    with pytest.raises(ValueError, match=r"300 \+ 32 = 332 tokens exceeds .*320"):
        LMPolicy.check_env_kwargs(cfg, {"max_prompt_tokens": 300})
    LMPolicy.check_env_kwargs(cfg, {"max_prompt_tokens": 32, "max_new_tokens": 288})  # fits
    LMPolicy.check_env_kwargs(cfg, {})  # TextRLHF-v0's defaults: 32 + 32
    LMPolicy.check_env_kwargs(cfg, {"max_new_tokens": "many"})  # the env reports bad values
    # a separate critic's context counts too (gpt2_path: 128 positions)
    critic = lm_policy_config(None, critic="separate", critic_path=gpt2_path)
    LMPolicy.check_env_kwargs(critic, {"max_new_tokens": 96})
    with pytest.raises(ValueError, match=r"32 \+ 100 = 132 tokens exceeds .*128"):
        LMPolicy.check_env_kwargs(critic, {"max_new_tokens": 100})
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        LMPolicy.check_env_kwargs(lm_policy_config(str(tmp_path / "no-such-model")), {})


def test_check_env_kwargs_reads_no_weights(tmp_path):
    path = save_tiny_model(tmp_path, "llama", n_positions=64)
    (tmp_path / "model.safetensors").write_bytes(b"not weights")  # would fail to load
    cfg = lm_policy_config(path)
    LMPolicy.check_env_kwargs(cfg, {"max_prompt_tokens": 32, "max_new_tokens": 32})
    with pytest.raises(ValueError, match=r"65 tokens exceeds the model's context of 64"):
        LMPolicy.check_env_kwargs(cfg, {"max_prompt_tokens": 33, "max_new_tokens": 32})


# ----------------------------------------------------------------------------- item 3: warnings


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_no_deprecation_warnings(arch, gpt2_path, llama_path):
    policy = eos_biased(LMPolicy.from_pretrained(gpt2_path if arch == "gpt2" else llama_path))
    env = make_vec_env("next_step", 4)
    buffer = RolloutBuffer(12, 4, env.single_observation_space, env.single_action_space)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            torch.manual_seed(4)
            RolloutCollector(env, policy, buffer, seed=4).collect()  # prefill, steps, restarts
            policy.evaluate(buffer.full_batch(sequence=True))
    finally:
        hf_logger.removeHandler(handler)
    assert not [r for r in records if "deprecat" in r.getMessage().lower()]


def test_cache_keyword_falls_back_to_past_key_values():
    class Renamed(nn.Module):
        def forward(self, input_ids=None, cache=None, use_cache=None): ...

    class Older(nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None): ...

    assert cache_keyword(Renamed) == "cache"
    assert cache_keyword(Older) == "past_key_values"
