"""Sampling settings of the LM policy: top-k / top-p with an exact PPO ratio, eval.sampling."""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import CONFIGS, lm_policy_config, make_prompts, spaces_for, text_config

from agents.core.kl import apply_kl_penalty
from agents.policies import make_policy
from agents.policies.sequences import (
    MIN_TEMPERATURE,
    MIN_TOP_P,
    check_sampling,
    masked_logprobs_and_entropy,
    truncate,
)
from agents.rlhf.sft import load_config as load_sft_config
from agents.run.config import load_config
from agents.run.evaluation import run_evaluation
from agents.run.trainer import Trainer


def test_truncate_keeps_top_k_and_the_nucleus():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    logits = probs.log()
    kept = torch.isfinite(truncate(logits, 2, 1.0))
    assert kept.tolist() == [True, True, False, False]
    # top_p 0.7: 0.5 < 0.7, 0.75 >= 0.7 -> the first two; top_p 0.75 -> still two (mass reached)
    assert torch.isfinite(truncate(logits, 0, 0.7)).tolist() == [True, True, False, False]
    assert torch.isfinite(truncate(logits, 0, 0.76)).tolist() == [True, True, True, False]
    # a tiny top_p keeps the most likely token only; both cuts together: the smaller set
    assert torch.isfinite(truncate(logits, 0, 1e-6)).tolist() == [True, False, False, False]
    assert torch.isfinite(truncate(logits, 3, 0.6)).tolist() == [True, True, False, False]
    assert truncate(logits, 0, 1.0) is logits  # off: untouched
    # renormalized: log-prob of token 1 under top_k 2 is log(0.25 / 0.75)
    logp, entropy = masked_logprobs_and_entropy(logits, torch.tensor(1), 1.0, top_k=2)
    assert float(logp) == pytest.approx(math.log(1 / 3), abs=1e-6)
    assert float(entropy) == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))


@pytest.mark.parametrize("options", [{"top_p": 0.9}, {"top_k": 20}, {"top_k": 20, "top_p": 0.9}])
def test_ratio_is_exactly_one_before_the_first_update(gpt2_ctx64_path, tmp_path, options):
    cfg = text_config(gpt2_ctx64_path, str(tmp_path), batch_size=64, n_epochs=1)
    cfg["policy"].update(options)
    trainer = Trainer(load_config(cfg))
    trainer.collector.collect()
    buffer = trainer.buffer
    buffer.compute_gae(1.0, 0.95)
    # every sampled token is inside its step's cut set: finite log-probs, and the set is a cut
    assert torch.isfinite(buffer.log_probs[buffer.valid]).all()
    stats = trainer.ppo.update(buffer, 0)  # one minibatch, one step: stats of the first one
    assert stats["n_minibatch_steps"] == 1
    assert abs(stats["approx_kl"]) < 1e-6 and stats["clipfrac"] == 0.0
    trainer.close()


def test_sampled_tokens_stay_in_the_cut_set(gpt2_path):
    from helpers import lm_rollout

    P, N = 6, 12
    policy = make_policy(lm_policy_config(gpt2_path, top_k=3), *spaces_for(P, N))
    ids, mask = make_prompts([3, 6, 5, 2], P, N, seed=1)
    batch, logps, _ = lm_rollout(policy, ids, mask, P, N)
    # with the cut off, the same tokens are at least as unlikely: truncation only adds mass
    with policy.sampling(top_k=0):
        full = policy.evaluate(batch)[0]
    assert (logps >= full - 1e-6).all() and (logps > full + 1e-4).any()
    assert policy.top_k == 3  # the context restored the policy's setting
    torch.testing.assert_close(policy.evaluate(batch)[0].detach(), logps, atol=1e-5, rtol=0)


def test_kl_to_the_reference_under_truncation_is_the_cut_mass(gpt2_ctx64_path, tmp_path):
    """The reference scores the sampled tokens under its full distribution: before any update,
    the per-step k1 KL is log(1 / kept mass) >= 0, and 0 with no cut (to float rounding)."""
    for options, positive in (({}, False), ({"top_p": 0.8}, True)):
        cfg = text_config(gpt2_ctx64_path, str(tmp_path))
        cfg["policy"].update(options)
        trainer = Trainer(load_config(cfg))
        trainer.collector.collect()
        buffer = trainer.buffer
        batch = buffer.full_batch(True)
        with torch.no_grad():
            logp = trainer.policy.evaluate(batch)[0]
            with trainer.policy.sampling(top_p=1.0):
                full = trainer.policy.evaluate(batch)[0]
        stats = apply_kl_penalty(buffer, trainer.policy, trainer.reference, 0.1, "k1")
        expected = float(((logp - full) * buffer.valid).sum()) / stats["kl_segments"]
        assert stats["kl_to_ref"] == pytest.approx(expected, abs=1e-5)
        assert (stats["kl_to_ref"] > 0.1) == positive and stats["kl_to_ref"] >= -1e-5
        trainer.close()


def test_bad_sampling_settings_are_named(gpt2_path):
    for options, words in (
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"temperature": 0}, "temperature"),
    ):
        with pytest.raises(ValueError, match=words):
            lm_policy_config(gpt2_path, **options)
    policy = make_policy(lm_policy_config(gpt2_path), *spaces_for(4, 4))
    with pytest.raises(ValueError, match=r"top_p=0 must be a float in \(0, 1\]"):
        policy.sampling(top_p=0).__enter__()
    with pytest.raises(ValueError, match="top_k must be an int, got 2.5"):
        policy.sampling(top_k=2.5).__enter__()


def test_eval_sampling_overrides_only_the_evaluation(gpt2_ctx64_path, tmp_path):
    cfg = text_config(gpt2_ctx64_path, str(tmp_path))
    cfg["eval"]["sampling"] = {"top_k": 1}  # top_k 1 is greedy decoding, sampled
    trainer = Trainer(load_config(cfg))
    greedy_eval = {k: v for k, v in cfg["eval"].items() if k != "sampling"}
    greedy_cfg = load_config({**cfg, "eval": {**greedy_eval, "deterministic": True}})
    sampled = run_evaluation(trainer.policy, trainer.cfg)
    greedy = run_evaluation(trainer.policy, greedy_cfg)
    assert sampled.returns == greedy.returns and len(sampled.returns) == 8
    assert trainer.policy.top_k == 0  # the training setting is back
    with pytest.raises(ValueError, match="eval.deterministic: false"):
        load_config({**cfg, "eval": {**cfg["eval"], "deterministic": True}})
    trainer.close()


@pytest.mark.parametrize(
    "override",
    [
        "policy.temperature=1e-40",  # a float32 subnormal: logits / T overflow to +-inf
        "policy.temperature=1e-30",
        "policy.top_p=1e-46",  # rounds to 0.0 in float32: every token is cut
        "policy.top_p=1e-40",  # subnormal: 0 where the device flushes denormals
        "policy.top_k=1" + "0" * 30,
        "eval.sampling.temperature=1e-40",
        "eval.sampling.top_p=1e-46",
        "policy.temperature=true",  # was read as 1.0
        "policy.top_k=true",  # was read as 1
    ],
)
def test_sampling_settings_float32_cannot_hold_are_config_errors(override):
    key, value = override.split("=")
    value = "True" if value == "true" else value
    with pytest.raises(
        ValueError, match=rf"{re.escape(key)}' = '?{value}'?: must be (a number|.*in \[)"
    ):
        load_config(CONFIGS / "text_edit_distance.yaml", [override, "eval.deterministic=false"])


def test_the_sampling_code_refuses_what_float32_cannot_hold(gpt2_path):
    logits = torch.randn(64, 259) * 100  # (B, V), a sharp LM's magnitude
    tokens = logits.argmax(-1)
    # the failure the bound prevents: logits / 1e-40 are +-inf, the distribution NaN
    assert not torch.isfinite(masked_logprobs_and_entropy(logits, tokens, 1e-40)[1]).all()
    # the smallest allowed temperature keeps even 1e4-sized logits finite
    for scale in (100, 1e4):
        logp, entropy = masked_logprobs_and_entropy(logits / 100 * scale, tokens, MIN_TEMPERATURE)
        assert torch.isfinite(logp).all() and torch.isfinite(entropy).all()
    assert torch.isfinite(truncate(logits, 0, MIN_TOP_P)).any(-1).all()
    with pytest.raises(ValueError, match=r"policy\.temperature=1e-40 must be a float in \["):
        check_sampling(1e-40, 0, 1.0)
    with pytest.raises(ValueError, match=r"policy\.top_p=1e-46 must be a float in \(0, 1\]"):
        check_sampling(1.0, 0, 1e-46)
    policy = make_policy(lm_policy_config(gpt2_path), *spaces_for(4, 4))
    with pytest.raises(ValueError, match=r"temperature=1e-40"):
        policy.sampling(temperature=1e-40).__enter__()
    with pytest.raises(ValueError, match=r"eval.temperature' = 1e-40: must be .*in \["):
        load_sft_config(None, ["eval.temperature=1.0e-40"])
