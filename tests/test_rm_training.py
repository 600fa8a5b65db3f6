"""Reward-model training: Bradley–Terry loss/accuracy, a short learning run, the RM folder as an
env reward (one forward per batch), and the preference-file validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import EOS, byte_ids, save_tiny_model

from agents.rlhf.preferences import (
    PreferencePair,
    generate_preferences,
    make_pairs,
    read_preferences,
)
from agents.rlhf.reward_model import (
    RMTrainConfig,
    bradley_terry_loss,
    evaluate,
    load_reward_model,
    main,
    pairwise_accuracy,
    train_reward_model,
)
from textenv import TextRLHFVectorEnv, make_reward_fn
from textenv.gold import gold_score
from textenv.tokenizer import decode_ids


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """A randomly initialized byte-level GPT-2 (1 layer, 2 heads, 64 positions) + tokenizer."""
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny_lm"), "gpt2", n_positions=64, layers=1, heads=2
    )


def obvious_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Chosen: vowels only ("aeae.."); rejected: no vowels ("hgfh.."). Same prompt, same length."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        k = int(rng.integers(3, 9))
        pairs.append(
            PreferencePair(
                prompt=f"reverse: {''.join(rng.choice(list('abcdefgh'), size=k))}\n",
                chosen="".join(rng.choice(list("ae"), size=k)),
                rejected="".join(rng.choice(list("bcdfgh"), size=k)),
            )
        )
    return pairs


def test_bradley_terry_loss_and_accuracy_by_hand():
    r_chosen = torch.tensor([2.0, 0.0, -1.0, 3.0])
    r_rejected = torch.tensor([0.0, 0.0, 1.0, -1.0])
    # differences 2, 0, -2, 4: loss = mean(log(1 + exp(-d)))
    expected = np.mean([math.log1p(math.exp(-d)) for d in (2.0, 0.0, -2.0, 4.0)])
    assert bradley_terry_loss(r_chosen, r_rejected).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.741288, abs=1e-6)
    assert pairwise_accuracy(r_chosen, r_rejected) == 0.5  # the tie (d = 0) counts as wrong
    # gradient of the mean loss wrt r_chosen is -sigmoid(-d) / B
    rc = r_chosen.clone().requires_grad_(True)
    bradley_terry_loss(rc, r_rejected).backward()
    expected_grad = -torch.sigmoid(-(r_chosen - r_rejected)) / 4
    torch.testing.assert_close(rc.grad, expected_grad)


def test_reward_model_learns_obvious_preference(tiny_lm):
    torch.manual_seed(0)
    model, tok = load_reward_model(tiny_lm)
    assert model.config.num_labels == 1 and model.config.pad_token_id == 0
    train, held_out = obvious_pairs(256, seed=0), obvious_pairs(64, seed=1)
    cfg = RMTrainConfig(steps=40, batch_size=32, learning_rate=3e-3, warmup_steps=5, eval_every=0)
    history = train_reward_model(model, tok, train, held_out, cfg, log=lambda _: None)
    assert history[-1]["eval_accuracy"] >= 0.95
    ev = evaluate(model, tok, held_out)
    assert ev["accuracy"] >= 0.95 and ev["loss"] < 0.3


def write_config(tmp_path, tiny_lm, train_file, **extra) -> str:
    cfg = {
        "name": "rm_test", "sft_path": tiny_lm, "train_file": str(train_file),
        "eval_file": None, "eval_fraction": 0.25, "output_dir": str(tmp_path / "rm"),
        "train": {"steps": 30, "batch_size": 32, "learning_rate": 3.0e-3, "warmup_steps": 5,
                  "eval_every": 0},
        **extra,
    }  # fmt: skip
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def write_pairs(path, pairs: list[PreferencePair]) -> None:
    with open(path, "w") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}))
            f.write("\n")


def test_rm_folder_loads_as_env_reward_and_scores_batch_in_one_forward(tmp_path, tiny_lm):
    train_file = tmp_path / "pairs.jsonl"
    write_pairs(train_file, obvious_pairs(200, seed=2))
    folder = main(write_config(tmp_path, tiny_lm, train_file), ["train.steps=40"])
    metrics = json.loads((folder / "rm_metrics.json").read_text())
    assert metrics["eval_pairs"] == 50 and metrics["train_pairs"] == 150
    assert metrics["eval_accuracy"] >= 0.9
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()

    env = TextRLHFVectorEnv(
        num_envs=6, prompts="reverse", reward_fn={"name": "reward_model", "path": str(folder)},
        max_new_tokens=4,
    )  # fmt: skip
    calls = []
    forward = env.reward_fn.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    env.reward_fn.model.forward = counting_forward
    env.reset(seed=0)
    a, h = 3 + ord("a"), 3 + ord("h")
    for action in ([a] * 3 + [h] * 3, [a] * 3 + [h] * 3, [1] * 6):  # "aa"/"hh", then EOS
        _, reward, terminated, _, _ = env.step(np.array(action))
    assert terminated.all()
    assert calls == [6]  # all six rows finished at one step: ONE batched forward
    assert reward[:3].min() > reward[3:].max()  # vowels preferred, as trained

    # the same folder through the reward spec a PPO config uses, next to the gold rule
    spec = {"weighted_sum": [
        {"name": "reward_model", "path": str(folder), "weight": 1.0},
        {"name": "gold", "weight": 0.0},
    ]}  # fmt: skip
    reward_fn = make_reward_fn(spec)
    prompts, responses = ["reverse: abcd\n"] * 2, ["aeae", "hgfb"]
    total, parts = reward_fn.score(prompts, responses, [None, None])
    assert set(parts) == {"reward_model", "gold"}
    np.testing.assert_allclose(total, parts["reward_model"])  # weight 0: gold does not count
    np.testing.assert_allclose(
        parts["gold"], [gold_score(p, r) for p, r in zip(prompts, responses)]
    )


def test_gold_rule_numbers():
    # word "abcd" (n = 4): "aeae" fits the length, vowel share 1 -> 0.5 - 2 * 0.5 = -0.5
    assert gold_score("reverse: abcd\n", "aeae") == pytest.approx(1.0 - 0.5)
    assert gold_score("reverse: abcd\n", "dcba") == pytest.approx(1.0 + 0.25)  # share 1/4
    assert gold_score("sort: abcd\n", "ab") == pytest.approx(0.5 + 0.5)  # half length, share 1/2
    assert gold_score("swap: abcd\n", "") == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not a string-task prompt"):
        gold_score("the red fox ", "x")


def test_make_pairs_labels_by_gold_with_seeded_noise():
    prompts = ["reverse: abcd\n"] * 400
    first, second = ["dcba"] * 400, ["hhhh"] * 400  # gold 1.25 vs 1.0
    records = make_pairs(prompts, first, second, 0.1, np.random.default_rng(0))
    flipped = [r["flipped"] for r in records]
    assert 0.06 < np.mean(flipped) < 0.14
    assert all((r["chosen"] == "hhhh") == r["flipped"] for r in records)
    again = make_pairs(prompts, first, second, 0.1, np.random.default_rng(0))
    assert again == records
    assert make_pairs(["reverse: ab\n"], ["ab"], ["ab"], 0.0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="label noise"):
        make_pairs(prompts, first, second, 0.5, np.random.default_rng(0))


def test_generate_preferences_writes_a_validation_file_without_changing_train_and_test(tmp_path):
    """``n_validation`` adds noise-free pairs from validation-split prompts; the train and test
    files are the same bytes with and without it (the validation file is drawn last)."""
    from textenv.tasks import split_of

    sizes = {"n_train": 24, "n_test": 12}
    plain = generate_preferences(tmp_path / "plain", **sizes)
    with_val = generate_preferences(tmp_path / "val", **sizes, n_validation=16)
    assert "validation" not in plain and not (tmp_path / "plain/reverse_validation.jsonl").exists()
    for name in ("reverse_train.jsonl", "reverse_test.jsonl"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "val" / name).read_bytes()
    for split in ("train", "test", "validation"):
        lines = Path(with_val[split]["file"]).read_text().splitlines()
        records = [json.loads(x) for x in lines]
        assert len(records) == with_val[split]["pairs"] > 0
        words = {r["prompt"].removeprefix("reverse: ").strip() for r in records}
        assert {split_of(w) for w in words} == {split}
        if split != "train":  # held-out labels are the gold ordering
            assert not any(r["flipped"] for r in records)
            assert all(r["gold_chosen"] > r["gold_rejected"] for r in records)
    with pytest.raises(ValueError, match="n_validation must be >= 0.*-1"):
        generate_preferences(tmp_path / "bad", **sizes, n_validation=-1)
    with pytest.raises(ValueError, match="n_test must be >= 1, got 0"):
        generate_preferences(tmp_path / "bad", n_train=4, n_test=0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "p", "chosen": "a"}', "missing 'rejected'"),
        ('{"prompt": "p", "rejected": "a"}', "missing 'chosen'"),
        ('{"prompt": "p", "chosen": "", "rejected": "a"}', "'chosen' must be a non-empty string"),
        ('{"chosen": "a", "rejected": 3}', "'rejected' must be a non-empty string"),
        ('{"chosen": "a", "rejected": "b", "prompt": 1}', "'prompt' must be a string"),
        ('{"chosen": "a", "rejected": ', "invalid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"chosen": "a", "rejected": ' + "[" * 100_000, "nested more than 100"),  # RecursionError
        ('{"chosen": "a\\ud800", "rejected": "b"}', "'chosen' = .* holds a lone surrogate"),
    ],
)
def test_malformed_preference_file_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "prefs.jsonl"
    good = '{"prompt": "reverse: ab\\n", "chosen": "ba", "rejected": "aa"}'
    path.write_text(f"{good}\n\n{good}\n{line}\n")  # the bad record is on line 4
    with pytest.raises(ValueError, match=rf"prefs\.jsonl:4: .*{message}"):
        read_preferences(path)


def test_preference_file_forms(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"chosen": "full a", "rejected": "full b"}\n'
                    '{"prompt": "q ", "chosen": "x", "rejected": "y", "extra": 1}\n')  # fmt: skip
    assert read_preferences(path) == [
        PreferencePair("", "full a", "full b"),
        PreferencePair("q ", "x", "y"),
    ]
    with pytest.raises(ValueError, match="does not exist"):
        read_preferences(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no pairs"):
        read_preferences(tmp_path / "empty.jsonl")


def test_config_typo_is_an_error_with_suggestion(tmp_path, tiny_lm):
    path = write_config(tmp_path, tiny_lm, tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        main(path, ["train.learning_rat=0.1"])


def logp_alone(model, prompt: str, ids: list[int]) -> float:
    """log p(ids | prompt) of one unpadded row by a plain forward pass."""
    row = torch.tensor([byte_ids(prompt) + ids])
    with torch.no_grad():
        logits = model(input_ids=row).logits[0].double()
    logp = torch.log_softmax(logits[:-1], -1).gather(1, row[0, 1:, None])[:, 0]
    return float(logp[-len(ids) :].sum())


def test_evaluate_gold_proxy_and_the_kl_to_a_reference(tmp_path, tiny_lm):
    from transformers import AutoModelForCausalLM

    from agents.policies.lm import LMPolicy
    from agents.rlhf.preferences import evaluate_gold_proxy, rollout_responses, sequence_log_probs

    torch.manual_seed(0)
    policy = LMPolicy.from_pretrained(tiny_lm, max_sequence_length=40)
    prompts = ["reverse: abc\n", "sort: hgf\n", "swap: abcd\n"]
    kwargs = {"seed": 3, "max_new_tokens": 8, "max_prompt_tokens": 16}
    result = evaluate_gold_proxy(policy, prompts, reference=policy.model, **kwargs)
    responses, tokens = rollout_responses(
        policy, prompts, 3, max_new_tokens=8, max_prompt_tokens=16
    )
    for response, ids in zip(responses, tokens):
        # generation stops at the first EOS (kept in the ids) or at the 8-token limit
        assert ids.index(EOS) == len(ids) - 1 if EOS in ids else len(ids) == 8
        assert decode_ids(policy.tokenizer, ids) == response
    assert result["kl"] == pytest.approx(0.0, abs=1e-6)
    assert result["gold"] == pytest.approx(
        np.mean([gold_score(p, r) for p, r in zip(prompts, responses)])
    )
    logp = sequence_log_probs(policy.model, policy.tokenizer, prompts, tokens)
    alone = [logp_alone(policy.model, p, ids) for p, ids in zip(prompts, tokens)]
    assert logp == pytest.approx(alone, abs=1e-4)  # padding in the batch changes nothing
    # against a different reference (same architecture, other seed) the KL is the mean gap
    other_path = save_tiny_model(tmp_path, "gpt2", n_positions=64, layers=1, heads=2, seed=1)
    other = AutoModelForCausalLM.from_pretrained(other_path).eval()
    kl = evaluate_gold_proxy(policy, prompts, reference=other, **kwargs)["kl"]
    gap = np.mean([a - logp_alone(other, p, ids) for a, p, ids in zip(alone, prompts, tokens)])
    assert kl == pytest.approx(gap, abs=1e-4)
    assert abs(kl) > 0.05  # not vacuous: measured -0.254


def test_config_bad_values_are_errors(tmp_path, tiny_lm):
    path = write_config(tmp_path, tiny_lm, tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        main(path, ["train.steps=2"])  # warmup_steps 5 > steps 2
    with pytest.raises(ValueError, match=r"eval_fraction.*less than 1"):
        main(path, ["eval_fraction=1.5"])
