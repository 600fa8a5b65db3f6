"""LMPolicy padding: a prompt right-padded inside the prompt region scores like the same prompt
left-padded or alone (act and evaluate), and a tokenizer whose pad token is EOS is refused."""

from __future__ import annotations

import pytest
import torch
from helpers import lm_policy_config, lm_rollout, make_prompts, save_tiny_model, spaces_for

from agents.policies.lm import LMPolicy
from textenv import default_tokenizer

P, N = 12, 6
LENGTHS = [5, 12, 2]  # rows 0 and 2 are padded, row 1 fills the prompt region


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def policy(request):
    return LMPolicy.from_pretrained(request.getfixturevalue(f"{request.param}_path"))


def right_padded(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The env's left-padded prompts moved to the start of the prompt region: prompt tokens,
    then pads (mask 0) up to P; generated tokens still go from index P."""
    out_ids, out_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    for i in range(ids.shape[0]):
        n = int(mask[i, :P].sum())
        out_ids[i, :n], out_mask[i, :n] = ids[i, P - n : P], 1
    return out_ids, out_mask


def test_right_padded_prompt_matches_left_padded_and_alone(policy):
    ids, mask = make_prompts(LENGTHS, P, N, seed=4)
    r_ids, r_mask = right_padded(ids, mask)
    assert r_mask[0, :5].all() and not r_mask[0, 5:].any()  # a gap between prompt and response
    left, logp_left, value_left = lm_rollout(policy, ids, mask, P, N, deterministic=True)
    right, logp_right, value_right = lm_rollout(policy, r_ids, r_mask, P, N, deterministic=True)
    assert right.obs["attention_mask"][1, 0, P] == 1 and right.obs["attention_mask"][1, 0, 5] == 0
    # the KV-cached act path: same greedy tokens, log-probs and values
    assert torch.equal(right.actions, left.actions)
    torch.testing.assert_close(logp_right, logp_left, atol=1e-5, rtol=0)
    torch.testing.assert_close(value_right, value_left, atol=1e-5, rtol=0)
    with torch.no_grad():
        ev_left, ent_left, val_left = policy.evaluate(left)
        ev_right, ent_right, val_right = policy.evaluate(right)
    # teacher-forced evaluate on the right-padded layout equals act and the left-padded layout
    torch.testing.assert_close(ev_right, logp_right, atol=1e-5, rtol=0)
    torch.testing.assert_close(val_right, value_right, atol=1e-5, rtol=0)
    torch.testing.assert_close(ev_right, ev_left, atol=1e-5, rtol=0)
    torch.testing.assert_close(val_right, val_left, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_right, ent_left, atol=1e-5, rtol=0)
    # a prefill mid-episode (fresh state, e.g. after an update) puts the gap into the KV cache
    for t in (1, 4):
        obs = {k: v[t] for k, v in right.obs.items()}
        action, logp, value, state = policy.act(obs, policy.initial_state(3), deterministic=True)
        assert torch.equal(action, right.actions[t])
        torch.testing.assert_close(logp, logp_right[t], atol=1e-5, rtol=0)
        torch.testing.assert_close(value, value_right[t], atol=1e-5, rtol=0)
        assert state.mask.shape == (3, P + t) and state.mask[0, 5:P].eq(0).all()
        torch.testing.assert_close(policy.predict_value(obs, state), value, atol=1e-5, rtol=0)
        obs_next = {k: v[t + 1] for k, v in right.obs.items()}
        _, logp_next, _, _ = policy.act(obs_next, state, deterministic=True)  # cached step
        torch.testing.assert_close(logp_next, logp_right[t + 1], atol=1e-5, rtol=0)
    # and the prompt of row 0 alone, unpadded (prompt region of exactly its 5 tokens)
    alone, logp_alone, value_alone = lm_rollout(
        policy, ids[:1, P - 5 :], mask[:1, P - 5 :], 5, N, deterministic=True
    )
    assert torch.equal(alone.actions[:, 0], right.actions[:, 0])
    with torch.no_grad():
        ev_alone, _, val_alone = policy.evaluate(alone)
    torch.testing.assert_close(ev_right[:, 0], ev_alone[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(val_right[:, 0], val_alone[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logp_right[:, 0], logp_alone[:, 0], atol=1e-5, rtol=0)
    assert (logp_alone < 0).all() and logp_alone.std() > 1e-3  # real, varying numbers


def test_pad_token_equal_to_eos_is_refused(tmp_path):
    path = save_tiny_model(tmp_path, "gpt2")
    tokenizer = default_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 1
    tokenizer.save_pretrained(path)
    with pytest.raises(ValueError, match=r"distinct pad and EOS.*pad_token_id=1.*eos_token_id=1"):
        LMPolicy.from_pretrained(path)
    cfg = lm_policy_config(path)
    with pytest.raises(ValueError, match="distinct pad and EOS"):
        LMPolicy.from_config(cfg, *spaces_for(8, 8))


def test_shared_left_padding_is_not_run_through_the_model(policy, monkeypatch):
    """Short prompts in a wide prompt slot: the forwards see only the attended span (the widest
    row's prompt + response), and the numbers equal those of the tight layout."""
    from agents.policies.sequences import attended_width

    assert attended_width(torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]]),
                             torch.tensor([5, 3])) == 3  # fmt: skip
    ids, mask = make_prompts([3, 5], P, N, seed=7)  # both rows leave >= 7 pad columns of P = 12
    wide, logp_wide, value_wide = lm_rollout(policy, ids, mask, P, N, deterministic=True)
    tight, logp_tight, _ = lm_rollout(policy, ids[:, P - 5 :], mask[:, P - 5 :], 5, N,
                                      deterministic=True)  # fmt: skip
    assert torch.equal(wide.actions, tight.actions)
    widths = []
    trunk = LMPolicy._trunk

    def spy(self, model, input_ids, *args):
        widths.append(input_ids.shape[1])
        return trunk(self, model, input_ids, *args)

    monkeypatch.setattr(LMPolicy, "_trunk", spy)
    with torch.no_grad():
        ev_wide, _, val_wide = policy.evaluate(wide)
        ev_tight, _, _ = policy.evaluate(tight)
    assert max(widths) <= 5 + N  # not P + N
    torch.testing.assert_close(ev_wide, logp_wide, atol=1e-5, rtol=0)
    torch.testing.assert_close(val_wide, value_wide, atol=1e-5, rtol=0)
    torch.testing.assert_close(ev_wide, ev_tight, atol=1e-5, rtol=0)
    torch.testing.assert_close(logp_wide, logp_tight, atol=1e-5, rtol=0)
