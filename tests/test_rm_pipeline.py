"""The end-to-end RLHF example in its --quick form (slow: about a minute on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_rlhf_pipeline_quick_runs_every_stage(tmp_path):
    out = tmp_path / "pipeline"
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "rlhf_pipeline.py"), "--quick", "--nokl",
         "--out", str(out), "--eval-prompts", "64"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("sft", "preferences", "rm", "ppo", "ppo_nokl"):
        assert (out / stage).is_dir(), stage
    assert (out / "rm" / "model.safetensors").is_file()
    assert (out / "ppo" / "training_curves.png").is_file()
    assert (out / "rlhf_proxy_vs_gold.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert set(results["policies"]) == {"SFT", "PPO KL target 3", "PPO beta=0"}
    policies = results["policies"]
    assert policies["SFT"]["kl"] == pytest.approx(0.0, abs=1e-6)
    # measured (2 cores, 1 torch thread): held-out accuracy 0.724 after 40 steps (0.494 before)
    assert results["rm_eval_accuracy"] > 0.62
    # PPO raises the reward model's score it is trained on and moves away from the SFT model;
    # measured proxy SFT -0.068, KL target 3: 0.630 (KL 1.08), beta=0: 0.658 (KL 1.69)
    for name in ("PPO KL target 3", "PPO beta=0"):
        assert policies[name]["proxy"] > policies["SFT"]["proxy"] + 0.3, name
        assert policies[name]["kl"] > 0.2, name
    assert "PPO KL target 3" in proc.stdout and "held-out accuracy" in proc.stdout
