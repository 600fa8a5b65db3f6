"""`policy.critic_path` naming a reward-model folder: the critic starts as the reward model."""

from __future__ import annotations

import pytest
import torch
from helpers import lm_policy_config, make_prompts, save_tiny_model, spaces_for

from agents.policies import make_policy


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("rm"), head="classifier", seed=5)


def test_value_head_and_trunk_start_from_the_reward_model(gpt2_path, rm_path):
    from transformers import AutoModelForSequenceClassification

    P, N = 8, 4
    cfg = lm_policy_config(gpt2_path, critic="separate", critic_path=rm_path)
    policy = make_policy(cfg, *spaces_for(P, N))
    rm = AutoModelForSequenceClassification.from_pretrained(rm_path).eval()
    assert torch.equal(policy.value_head.weight, rm.score.weight)
    assert policy.value_head.bias.item() == 0.0  # GPT-2's score head has no bias
    # the value of a prompt (before the first action) is the reward model's score of that text
    ids, mask = make_prompts([8, 8, 8], P, N, seed=3)  # full-width prompts: no padding
    value = policy.predict_value({"input_ids": ids, "attention_mask": mask}, None)
    with torch.no_grad():
        score = rm(input_ids=ids[:, :P], attention_mask=mask[:, :P]).logits.squeeze(-1)
    torch.testing.assert_close(value, score, atol=1e-5, rtol=0)
    # the actor is untouched: still the causal LM of model_path
    assert policy.model.config.architectures == ["GPT2LMHeadModel"]


def test_a_multi_label_classifier_is_refused(gpt2_path, tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from textenv import default_tokenizer

    config = GPT2Config(vocab_size=259, n_embd=32, n_layer=1, n_head=4, num_labels=3,
                        pad_token_id=0, eos_token_id=1, bos_token_id=1)  # fmt: skip
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    default_tokenizer().save_pretrained(tmp_path)
    cfg = lm_policy_config(gpt2_path, critic="separate", critic_path=str(tmp_path))
    with pytest.raises(ValueError, match="3 labels; a reward model"):
        make_policy(cfg, *spaces_for(4, 4))
