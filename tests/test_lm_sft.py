"""The SFT command that builds the default model: output folder, determinism, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import edit_similarity
from safetensors.torch import load_file

from agents.policies.hf import DEFAULT_MODEL_PATH
from agents.policies.lm import LMPolicy
from agents.rlhf.sft import build_sft_data, load_config, main, score_on_task
from textenv import default_tokenizer, make_task

REPO = Path(__file__).resolve().parents[1]
SFT_YAML = REPO / "configs" / "sft_tiny.yaml"
SMALL = [
    "train.steps=4", "train.batch_size=8", "n_per_task=16", "eval.n=4",
    "model.n_embd=32", "model.n_positions=64",
]  # fmt: skip


def test_sft_writes_a_loadable_deterministic_model(tmp_path):
    outs = [main(SFT_YAML, [*SMALL, f"output_dir={tmp_path / name}"]) for name in ("a", "b")]
    for out in outs:
        assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {
            p.name for p in out.iterdir()
        }
    a, b = (load_file(out / "model.safetensors") for out in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((outs[0] / "sft_summary.json").read_text())
    policy = LMPolicy.from_pretrained(outs[0], max_sequence_length=64)
    assert policy.pad_id == 0 and policy.eos_id == 1 and len(policy.tokenizer) == 259
    # the held-out rewards in the summary are those of the saved model (4 test prompts, seed 0),
    # and each sample's reward is its edit-distance similarity to the reversed word
    for mode, deterministic in (("sampled", False), ("greedy", True)):
        result = score_on_task(policy, "reverse", "test", n=4, deterministic=deterministic, seed=0)
        assert summary[f"heldout_reverse_test_reward_{mode}"] == round(result["mean_score"], 4)
        samples = result["samples"]
        assert len(samples) == 4
        for s in samples:
            word = s["prompt"].removeprefix("reverse: ").removesuffix("\n")
            assert s["reference"] == word[::-1]
            assert s["score"] == pytest.approx(edit_similarity(s["response"], s["reference"]))
        assert result["mean_score"] == pytest.approx(np.mean([s["score"] for s in samples]))
    # not vacuous: measured greedy 0.0278 (two responses share a letter with the reference)
    assert summary["heldout_reverse_test_reward_greedy"] > 0


def test_an_existing_output_folder_needs_overwrite(tmp_path, capsys):
    from agents.cli import main as cli

    out = tmp_path / "sft"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    args = ["sft", str(SFT_YAML), *[f"--set={s}" for s in SMALL], f"--set=output_dir={out}"]
    assert cli(args) == 1  # refused before any training, nothing touched
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"precious"
    assert cli([*args, "--overwrite"]) == 0
    assert LMPolicy.from_pretrained(out, max_sequence_length=64).eos_id == 1


def test_sft_data_matches_the_env_layout():
    cfg = load_config(SFT_YAML, ["n_per_task=4"])
    tok = default_tokenizer()
    ids, mask, loss_mask = build_sft_data(cfg, tok)
    P = cfg.max_prompt_tokens
    first = tok.decode(ids[0, :P][mask[0, :P].bool()].tolist())
    assert first.startswith("reverse: ") and first.endswith("\n")
    response = ids[0, P:][loss_mask[0, P:]].tolist()
    word = first[len("reverse: ") : -1]
    assert tok.decode(response[:-1]) == word[::-1] and response[-1] == tok.eos_token_id
    assert not loss_mask[:, :P].any()  # no loss on the prompt


def test_sft_config_errors():
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        load_config(SFT_YAML, ["train.step=3"])
    with pytest.raises(ValueError, match="n_positions=16 is smaller"):
        load_config(SFT_YAML, ["model.n_positions=16"])
    with pytest.raises(ValueError, match="open_ended_target"):
        load_config(SFT_YAML, ["open_ended_target=nonsense"])


def test_committed_default_model_is_small_and_matches_its_config():
    size = (DEFAULT_MODEL_PATH / "model.safetensors").stat().st_size
    assert size < 4_000_000
    config = json.loads((DEFAULT_MODEL_PATH / "config.json").read_text())
    cfg = load_config(SFT_YAML)
    assert config["n_positions"] == cfg.model.n_positions >= 32 + 256
    assert config["vocab_size"] == 259 and config["pad_token_id"] == 0
    assert config["eos_token_id"] == 1


def test_tool_demonstrations_leave_the_env_tokens_out_of_the_loss():
    yaml = REPO / "configs" / "sft_tools.yaml"
    tok = default_tokenizer()
    P = 32
    for fraction, with_tool in (("1.0", True), ("0.0", False)):
        cfg = load_config(yaml, ["tasks=[calc]", "n_per_task=8", f"tool_fraction={fraction}"])
        ids, mask, loss_mask = build_sft_data(cfg, tok)
        for i in range(8):
            prompt = tok.decode(ids[i, :P][mask[i, :P].bool()].tolist())
            expr = prompt[len("What is ") : -2]
            answer = make_task("calc", "train", n=8, seed=cfg.seed)[i]["reference"]
            seen = tok.decode(ids[i, P:][mask[i, P:].bool()].tolist(), skip_special_tokens=True)
            trained = tok.decode(ids[i, P:][loss_mask[i, P:]].tolist(), skip_special_tokens=True)
            if with_tool:
                assert seen == f"<calc>{expr}</calc>={answer} {answer}"
                assert trained == f"<calc>{expr}</calc> {answer}"  # no loss on '=RESULT'
            else:
                assert seen == trained == answer
            assert ids[i, P:][loss_mask[i, P:]][-1] == tok.eos_token_id


def test_retry_demonstrations_train_the_second_turn_only():
    """A two-turn row: flawed first answer + EOS and the env's feedback are in the sequence but
    not in the loss; the reference + EOS after them are. The flaws are the same for every
    feedback (the control config differs from the main one in the feedback text only)."""
    from textenv.prompt_task import FEEDBACKS, wants_reference

    yaml = REPO / "configs" / "sft_retry.yaml"
    tok = default_tokenizer()
    P, n = 32, 64
    records = make_task("reverse", "train", n=n, seed=0)
    firsts_of = {}
    for feedback in ("mask", "constant", "score"):
        overrides = ["tasks=[reverse]", f"n_per_task={n}", f"retry_feedback={feedback}"]
        cfg = load_config(yaml, overrides)
        ids, mask, loss_mask = build_sft_data(cfg, tok)
        fn = FEEDBACKS[feedback]
        firsts = []
        for i in range(n):
            reference = records[i]["reference"]
            seen = ids[i, P:][mask[i, P:].bool()].tolist()
            trained = tok.decode(ids[i, P:][loss_mask[i, P:]].tolist())
            assert trained == reference + tok.eos_token
            if seen.count(tok.eos_token_id) == 1:  # a one-turn example
                assert tok.decode(seen) == reference + tok.eos_token
                firsts.append(None)
                continue
            first_end = seen.index(tok.eos_token_id)
            first, rest = tok.decode(seen[:first_end]), tok.decode(seen[first_end + 1 :])
            score = edit_similarity(first, reference)
            extra = {"reference": reference} if wants_reference(fn) else {}
            assert rest == fn("", [first], [score], **extra) + reference + tok.eos_token
            firsts.append(first)
        two_turn = [f for f in firsts if f is not None]
        assert 0.3 * n < len(two_turn) < 0.7 * n  # retry_fraction 0.5
        assert sum(f != records[i]["reference"] for i, f in enumerate(firsts) if f) > n // 5
        firsts_of[feedback] = firsts
    assert firsts_of["mask"] == firsts_of["constant"] == firsts_of["score"]


@pytest.mark.parametrize(
    ("asset", "config"),
    [
        ("tiny-sft-tools", "sft_tools"),
        ("tiny-sft-rg", "sft_rg"),
        ("tiny-sft-guess", "sft_ta_guess"),
        ("tiny-sft-retry", "sft_retry"),
        ("tiny-sft-retry-constant", "sft_retry_constant"),
    ],
)
def test_committed_task_models_match_their_configs(asset, config):
    """Each committed model was trained by `textrlhf sft configs/<config>.yaml` (its summary
    holds that config, field for field)."""
    folder = REPO / "agents" / "assets" / asset
    summary = json.loads((folder / "sft_summary.json").read_text())
    assert summary["config"] == load_config(REPO / "configs" / f"{config}.yaml").model_dump(
        mode="json"
    )
    assert (folder / "model.safetensors").stat().st_size < 4_000_000
    # the default model is a different, untouched asset
    assert (DEFAULT_MODEL_PATH / "model.safetensors").read_bytes() != (
        folder / "model.safetensors"
    ).read_bytes()
