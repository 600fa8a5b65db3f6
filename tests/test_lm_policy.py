"""LMPolicy: KV-cached acting equals teacher-forced scoring, padding, loading and bad input."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gymnasium import spaces
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from agents.policies.lm import DEFAULT_MODEL_PATH, LMPolicy
from textenv import default_tokenizer

V = 259  # textenv's byte tokenizer


def save_tiny(folder, arch: str = "gpt2", n_positions: int = 128, vocab: int = V) -> str:
    """A tiny random causal LM + the byte tokenizer saved to `folder`."""
    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
            pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False,
        )  # fmt: skip
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_positions,
            pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    default_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def gpt2_path(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("gpt2"), "gpt2")


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("llama"), "llama")


def spaces_for(P: int, N: int, vocab: int = V):
    obs_space = spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab - 1, (P + N,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, (P + N,), dtype=np.int8),
        }
    )
    return obs_space, spaces.Discrete(vocab)


def make_prompts(lengths: list[int], P: int, N: int, seed: int = 0):
    """Left-padded prompts in the env's layout: (B, P+N) ids and mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), P + N, dtype=torch.long)
    mask = torch.zeros(len(lengths), P + N, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, P - n : P] = torch.randint(3, V, (n,), generator=g)
        mask[i, P - n : P] = 1
    return ids, mask


def rollout(policy: LMPolicy, ids, mask, P: int, steps: int, deterministic: bool = False):
    """Act `steps` times, writing actions into the observation as the env does; returns a
    (T, B, ...) batch in the buffer's layout plus the act() log-probs and values."""
    ids, mask = ids.clone(), mask.clone()
    state = policy.initial_state(ids.shape[0])
    obs_ids, obs_mask, acts, logps, values = [], [], [], [], []
    for t in range(steps):
        obs = {"input_ids": ids.clone(), "attention_mask": mask.clone()}
        obs_ids.append(obs["input_ids"])
        obs_mask.append(obs["attention_mask"])
        a, lp, v, state = policy.act(obs, state, deterministic=deterministic)
        acts.append(a)
        logps.append(lp)
        values.append(v)
        ids[:, P + t], mask[:, P + t] = a, 1
    batch = SimpleNamespace(
        obs={"input_ids": torch.stack(obs_ids), "attention_mask": torch.stack(obs_mask)},
        actions=torch.stack(acts),
        valid=torch.ones(steps, ids.shape[0], dtype=torch.bool),
    )
    return batch, torch.stack(logps), torch.stack(values)


def test_cached_act_matches_teacher_forced_evaluate(gpt2_path):
    P, N = 12, 10
    policy = LMPolicy.from_pretrained(gpt2_path, temperature=0.7)
    ids, mask = make_prompts([1, 12, 5, 8], P, N)
    torch.manual_seed(1)
    batch, logp_act, value_act = rollout(policy, ids, mask, P, N)
    with torch.no_grad():
        logp, entropy, value = policy.evaluate(batch)
    assert logp.shape == entropy.shape == value.shape == (N, 4)
    torch.testing.assert_close(logp, logp_act, atol=1e-5, rtol=0)
    torch.testing.assert_close(value, value_act, atol=1e-5, rtol=0)
    assert (entropy > 0).all()


def test_evaluate_handles_invalid_tails_and_mid_episode_segments(gpt2_path):
    P, N = 12, 10
    policy = LMPolicy.from_pretrained(gpt2_path)
    ids, mask = make_prompts([3, 12, 7], P, N)
    torch.manual_seed(2)
    batch, logp_act, _ = rollout(policy, ids, mask, P, N)
    # a finished row (lockstep): its steps after the end are invalid and score 0
    valid = batch.valid.clone()
    valid[6:, 1] = False
    with torch.no_grad():
        logp, _, _ = policy.evaluate(SimpleNamespace(**{**vars(batch), "valid": valid}))
    torch.testing.assert_close(logp[valid], logp_act[valid], atol=1e-5, rtol=0)
    assert (logp[~valid] == 0).all()
    # a column that starts mid-episode (rollout boundary): the prefix comes from the observation
    tail = SimpleNamespace(
        obs={k: v[4:] for k, v in batch.obs.items()},
        actions=batch.actions[4:],
        valid=batch.valid[4:],
    )
    with torch.no_grad():
        logp_tail, _, _ = policy.evaluate(tail)
    torch.testing.assert_close(logp_tail, logp_act[4:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prompt_alone_equals_prompt_in_padded_batch(arch, gpt2_path, llama_path):
    P, N = 12, 6
    policy = LMPolicy.from_pretrained(gpt2_path if arch == "gpt2" else llama_path)
    ids, mask = make_prompts([5, 12, 2], P, N, seed=3)  # row 0 between a longer and shorter one
    batch, logp_batch, value_batch = rollout(policy, ids, mask, P, N, deterministic=True)
    alone, logp_alone, value_alone = rollout(policy, ids[:1], mask[:1], P, N, deterministic=True)
    assert torch.equal(alone.actions[:, 0], batch.actions[:, 0])  # same greedy text
    torch.testing.assert_close(logp_alone[:, 0], logp_batch[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(value_alone[:, 0], value_batch[:, 0], atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            policy.evaluate(alone)[0][:, 0], policy.evaluate(batch)[0][:, 0], atol=1e-5, rtol=0
        )


def test_from_config_and_default_model(gpt2_path):
    obs_space, act_space = spaces_for(32, 32)
    cfg = {"model_path": gpt2_path, "temperature": 1.0, "critic": "shared", "critic_path": None}
    policy = LMPolicy.from_config(cfg, obs_space, act_space)
    assert policy.is_sequence_policy and policy.critic_model is None
    assert policy.pad_id == 0 and policy.eos_id == 1
    default = LMPolicy.from_config({**cfg, "model_path": None}, obs_space, act_space)
    assert default.model.config.model_type == "gpt2"
    assert (DEFAULT_MODEL_PATH / "model.safetensors").exists()


def test_separate_critic_matches_between_act_and_evaluate(gpt2_path, llama_path):
    P, N = 8, 6
    policy = LMPolicy.from_pretrained(gpt2_path, critic="separate", critic_path=llama_path)
    assert policy.critic_model.config.model_type == "llama"
    ids, mask = make_prompts([3, 8], P, N)
    batch, logp_act, value_act = rollout(policy, ids, mask, P, N)
    with torch.no_grad():
        logp, _, value = policy.evaluate(batch)
    torch.testing.assert_close(logp, logp_act, atol=1e-5, rtol=0)
    torch.testing.assert_close(value, value_act, atol=1e-5, rtol=0)


def test_update_makes_cached_state_stale(gpt2_path):
    """After evaluate() with grad (an update), act() re-encodes the prefix with the new weights."""
    P, N = 8, 6
    policy = LMPolicy.from_pretrained(gpt2_path)
    ids, mask = make_prompts([4, 8], P, N)
    state = policy.initial_state(2)
    obs = {"input_ids": ids, "attention_mask": mask}
    _, _, _, state = policy.act(obs, state)
    batch, _, _ = rollout(policy, ids, mask, P, 2)
    policy.evaluate(batch)[0].sum().backward()  # grad enabled: version bump
    assert state.version != policy._version
    _, _, _, state = policy.act(obs, state)  # prefill again, no stale cache
    assert state.version == policy._version and state.mask.shape[1] == P


# ----------------------------------------------------------------------------- bad input


def test_vocab_mismatch_names_all_three_sizes(tmp_path):
    path = save_tiny(tmp_path, "gpt2", vocab=300)
    obs_space, act_space = spaces_for(8, 8, vocab=V)
    cfg = {"model_path": path, "temperature": 1.0, "critic": "shared", "critic_path": None}
    with pytest.raises(ValueError, match=r"259 tokens.*300 rows.*259 actions"):
        LMPolicy.from_config(cfg, obs_space, act_space)


def test_context_too_short_is_an_error(tmp_path):
    path = save_tiny(tmp_path, "gpt2", n_positions=48)
    obs_space, act_space = spaces_for(32, 32)
    cfg = {"model_path": path, "temperature": 1.0, "critic": "shared", "critic_path": None}
    with pytest.raises(ValueError, match=r"64 tokens exceeds the model's context of 48"):
        LMPolicy.from_config(cfg, obs_space, act_space)


def test_missing_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        LMPolicy.from_pretrained(missing)


def test_bad_temperature_and_critic_options(gpt2_path):
    with pytest.raises(ValueError, match="temperature"):
        LMPolicy.from_pretrained(gpt2_path, temperature=0.0)
    with pytest.raises(ValueError, match="shared.*separate"):
        LMPolicy.from_pretrained(gpt2_path, critic="twin")
