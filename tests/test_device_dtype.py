"""run.device (auto | cpu | cuda) and run.dtype (float32 | bfloat16 autocast for LM policies)."""

from __future__ import annotations

import pytest
import torch
from helpers import text_config

from agents.run.config import load_config
from agents.run.trainer import Trainer, resolve_device


def test_auto_device_is_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert load_config(None, ["run.device=auto"]).run.device == "auto"
    with pytest.raises(ValueError, match="not a torch device"):
        load_config(None, ["run.device=gpu"])


def test_bad_dtype_and_mlp_bfloat16_are_errors(cartpole_yaml):
    with pytest.raises(ValueError, match="dtype"):
        load_config(cartpole_yaml, ["run.dtype=float16"])
    cfg = load_config(cartpole_yaml, ["run.dtype=bfloat16", "eval.episodes=0"])
    with pytest.raises(ValueError, match=r"run.dtype='bfloat16' is for LM policies"):
        Trainer(cfg)


def test_bfloat16_lm_iteration_keeps_float32_state(gpt2_ctx64_path, tmp_path):
    raw = text_config(gpt2_ctx64_path, str(tmp_path))
    raw["run"]["dtype"] = "bfloat16"
    trainer = Trainer(load_config(raw))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    metrics = trainer.iterate()
    assert all(
        torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("train/")
    )
    # the rollout's log-probs and values, the weights, grads and Adam moments are float32
    assert trainer.buffer.log_probs.dtype == trainer.buffer.values.dtype == torch.float32
    for p in trainer.policy.parameters():
        assert p.dtype == torch.float32
    for state in trainer.ppo.optimizer.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    changed = [k for k, v in trainer.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    # bfloat16 forward passes score the rollout close to float32 ones (not exactly)
    batch = trainer.buffer.full_batch(True)
    with torch.no_grad():
        lp16 = trainer.policy.evaluate(batch)[0]
        trainer.policy.set_compute_dtype("float32")
        lp32 = trainer.policy.evaluate(batch)[0]
    assert lp16.dtype == torch.float32
    assert not torch.equal(lp16, lp32)
    torch.testing.assert_close(lp16, lp32, atol=0.1, rtol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lm_iteration_on_cuda(gpt2_ctx64_path, tmp_path):
    raw = text_config(gpt2_ctx64_path, str(tmp_path))
    raw["run"].update(device="auto", dtype="bfloat16")
    trainer = Trainer(load_config(raw))
    assert next(trainer.policy.parameters()).device.type == "cuda"
    metrics = trainer.iterate()
    assert torch.isfinite(torch.tensor(metrics["train/policy_loss"]))
