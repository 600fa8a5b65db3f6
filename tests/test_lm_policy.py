"""LMPolicy: KV-cached acting equals teacher-forced scoring, padding, loading and bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import V, lm_policy_config, lm_rollout, make_prompts, save_tiny_model, spaces_for

from agents.policies.hf import DEFAULT_MODEL_PATH
from agents.policies.lm import LMPolicy


def test_cached_act_matches_teacher_forced_evaluate(gpt2_path):
    P, N = 12, 10
    policy = LMPolicy.from_pretrained(gpt2_path, temperature=0.7)
    ids, mask = make_prompts([1, 12, 5, 8], P, N)
    torch.manual_seed(1)
    batch, logp_act, value_act = lm_rollout(policy, ids, mask, P, N)
    with torch.no_grad():
        logp, entropy, value = policy.evaluate(batch)
    assert logp.shape == entropy.shape == value.shape == (N, 4)
    torch.testing.assert_close(logp, logp_act, atol=1e-5, rtol=0)
    torch.testing.assert_close(value, value_act, atol=1e-5, rtol=0)
    # each row scored alone, unpadded, by a plain transformers forward at temperature 0.7
    with torch.no_grad():
        for i, n in enumerate([1, 12, 5, 8]):
            sequence = torch.cat([ids[i, P - n : P], batch.actions[:, i]])
            logits = policy.model(input_ids=sequence[None]).logits[0, n - 1 : n - 1 + N] / 0.7
            log_probs = torch.log_softmax(logits.double(), -1)  # (N, V): scores actions 0..N-1
            expected = -(log_probs.exp() * log_probs).sum(-1)
            torch.testing.assert_close(entropy[:, i].double(), expected, atol=1e-4, rtol=0)
            chosen = log_probs.gather(1, batch.actions[:, i, None]).squeeze(1)
            torch.testing.assert_close(logp[:, i].double(), chosen, atol=1e-4, rtol=0)


def test_evaluate_handles_invalid_tails_and_mid_episode_segments(gpt2_path):
    P, N = 12, 10
    policy = LMPolicy.from_pretrained(gpt2_path)
    ids, mask = make_prompts([3, 12, 7], P, N)
    torch.manual_seed(2)
    batch, logp_act, _ = lm_rollout(policy, ids, mask, P, N)
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
    batch, logp_batch, value_batch = lm_rollout(policy, ids, mask, P, N, deterministic=True)
    alone, logp_alone, value_alone = lm_rollout(policy, ids[:1], mask[:1], P, N, deterministic=True)
    assert torch.equal(alone.actions[:, 0], batch.actions[:, 0])  # same greedy text
    torch.testing.assert_close(logp_alone[:, 0], logp_batch[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(value_alone[:, 0], value_batch[:, 0], atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            policy.evaluate(alone)[0][:, 0], policy.evaluate(batch)[0][:, 0], atol=1e-5, rtol=0
        )


def test_from_config_and_default_model(gpt2_path):
    obs_space, act_space = spaces_for(32, 32)
    cfg = lm_policy_config(gpt2_path)
    policy = LMPolicy.from_config(cfg, obs_space, act_space)
    assert policy.is_sequence_policy and policy.critic_model is None
    assert policy.pad_id == 0 and policy.eos_id == 1
    default = LMPolicy.from_config(lm_policy_config(None), obs_space, act_space)
    assert default.model.config.model_type == "gpt2"
    assert (DEFAULT_MODEL_PATH / "model.safetensors").exists()


def test_separate_critic_matches_between_act_and_evaluate(gpt2_path, llama_path):
    P, N = 8, 6
    policy = LMPolicy.from_pretrained(gpt2_path, critic="separate", critic_path=llama_path)
    assert policy.critic_model.config.model_type == "llama"
    ids, mask = make_prompts([3, 8], P, N)
    batch, logp_act, value_act = lm_rollout(policy, ids, mask, P, N)
    with torch.no_grad():
        logp, _, value = policy.evaluate(batch)
    torch.testing.assert_close(logp, logp_act, atol=1e-5, rtol=0)
    # the values come after the rollout (one batched critic forward), as evaluate's
    assert policy.values_after_rollout
    torch.testing.assert_close(value, value_act, atol=1e-5, rtol=0)
    assert value.abs().min() > 0  # real values, not the 0 act() returns
    # bootstrapping: predict_value of an observation is the value at that step
    for t in (0, N - 1):
        obs = {k: v[t] for k, v in batch.obs.items()}
        torch.testing.assert_close(policy.predict_value(obs, None), value[t], atol=1e-5, rtol=0)


def test_reference_of_a_separate_critic_policy_is_the_actor_alone(gpt2_path, llama_path):
    """The KL reference only scores actions: it holds no copy of the critic, runs no critic
    forward, and its log-probs are the policy's; evaluate(with_values=False) skips the critic."""
    P, N = 8, 6
    policy = LMPolicy.from_pretrained(gpt2_path, critic="separate", critic_path=llama_path)
    reference = policy.reference()
    assert reference.critic_model is None and reference.value_head is None
    assert policy.critic_model is not None and policy.value_head is not None  # untouched
    assert [n for n, _ in reference.named_parameters()] == [
        n for n, _ in policy.named_parameters() if n.startswith("model.")
    ]
    ids, mask = make_prompts([3, 8], P, N)
    batch, logp_act, _ = lm_rollout(policy, ids, mask, P, N)
    calls = []
    hook = policy.critic_model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        ref_logp, _, ref_value = reference.evaluate(batch)
        logp, _, value = policy.evaluate(batch, with_values=False)
    hook.remove()
    assert not calls  # neither ran the critic
    torch.testing.assert_close(ref_logp, logp_act, atol=1e-5, rtol=0)
    torch.testing.assert_close(logp, logp_act, atol=1e-5, rtol=0)
    assert not ref_value.any() and not value.any()


def test_act_after_an_update_re_encodes_the_prefix_with_the_new_weights(gpt2_path):
    """evaluate() with grad announces an update: the next act() must not extend the KV cache
    built with the old weights, but score the observation afresh with the new ones."""
    P, N = 8, 6
    policy = LMPolicy.from_pretrained(gpt2_path)
    ids, mask = make_prompts([4, 8], P, N)
    batch, _, _ = lm_rollout(policy, ids, mask, P, 2, deterministic=True)
    first, second = ({k: v[t] for k, v in batch.obs.items()} for t in (0, 1))

    def cached(obs):  # a state whose KV cache holds `obs`, built with the current weights
        return policy.act(obs, policy.initial_state(2), deterministic=True)[3]

    _, logp_old, value_old, _ = policy.act(second, cached(first), deterministic=True)
    state = cached(first)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    log_prob, _, value = policy.evaluate(batch)  # grad enabled: an update follows
    (log_prob.sum() + value.sum()).backward()
    optimizer.step()
    _, logp, value, state = policy.act(second, state, deterministic=True)
    _, logp_fresh, value_fresh, _ = policy.act(second, policy.initial_state(2), deterministic=True)
    torch.testing.assert_close(logp, logp_fresh, atol=1e-5, rtol=0)
    torch.testing.assert_close(value, value_fresh, atol=1e-5, rtol=0)
    assert state.mask.shape == (2, P + 1)
    # the update moved both heads, so a stale cache would have given other numbers
    assert (logp - logp_old).abs().min() > 1e-3 and (value - value_old).abs().min() > 1e-3


# ----------------------------------------------------------------------------- bad input


def test_vocab_mismatch_names_all_three_sizes(tmp_path):
    path = save_tiny_model(tmp_path, "gpt2", vocab=300)
    obs_space, act_space = spaces_for(8, 8, vocab=V)
    cfg = lm_policy_config(path)
    with pytest.raises(ValueError, match=r"259 tokens.*300 rows.*259 actions"):
        LMPolicy.from_config(cfg, obs_space, act_space)


def test_context_too_short_is_an_error(tmp_path):
    path = save_tiny_model(tmp_path, "gpt2", n_positions=48)
    obs_space, act_space = spaces_for(32, 32)
    cfg = lm_policy_config(path)
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
