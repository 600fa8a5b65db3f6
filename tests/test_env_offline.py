"""Everything works without a network: the env, its vector env and the default LM policy are
built in a subprocess whose sockets refuse to connect (and with the HF hub set offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import textenv  # noqa: F401  (registers TextRLHF-v0)

NO_NETWORK = """
import json, socket

def refuse(*args, **kwargs):
    raise OSError("network access attempted in an offline test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
try:
    socket.create_connection(("127.0.0.1", 9))
    raise SystemExit("the socket guard is not active")
except OSError:
    pass
"""


def run_offline(code: str) -> dict:
    """Run NO_NETWORK + `code` in a fresh interpreter; `code` prints one JSON line last."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", NO_NETWORK + code], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "network access attempted" not in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


ENV_CODE = """
import gymnasium as gym
import textenv

env = gym.make("TextRLHF-v0")
obs, info = env.reset(seed=0)
print(obs)
venv = gym.make_vec("TextRLHF-v0", num_envs=4)
vobs, _ = venv.reset(seed=0)
vobs, reward, terminated, truncated, _ = venv.step(venv.action_space.sample())
result = {"env": {
    "ids": obs["input_ids"].tolist(), "mask": obs["attention_mask"].tolist(),
    "vec": type(venv).__name__, "vec_shape": list(vobs["input_ids"].shape),
    "reward": reward.tolist(), "done": (terminated | truncated).tolist(),
}}
"""

LM_CODE = """
import torch
from agents.policies.lm import DEFAULT_MODEL_PATH, LMPolicy

policy = LMPolicy.from_config(LMPolicy.Config(), venv.single_observation_space, venv.single_action_space)
obs, _ = venv.reset(seed=0)
obs = {k: torch.from_numpy(v) for k, v in obs.items()}
action, log_prob, value, state = policy.act(obs, policy.initial_state(4), deterministic=True)
result["lm"] = {
    "path": str(DEFAULT_MODEL_PATH), "type": policy.model.config.model_type,
    "action": action.tolist(), "log_prob": log_prob.tolist(), "value": value.tolist(),
    "vocab": len(policy.tokenizer), "n": int(venv.single_action_space.n),
}
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def offline():
    """One interpreter for both checks (importing torch + transformers takes seconds)."""
    return run_offline(ENV_CODE + LM_CODE)


def test_env_and_vector_env_make_reset_and_step_offline(offline):
    out = offline["env"]
    # the same observation as in this (networked) process
    here, _ = gym.make("TextRLHF-v0").reset(seed=0)
    assert out["ids"] == here["input_ids"].tolist()
    assert out["mask"] == here["attention_mask"].tolist()
    mask = np.array(out["mask"])
    assert mask.sum() > 0 and mask[-1] == 0  # a left-padded prompt, room for the response
    assert out["vec"] == "TextRLHFVectorEnv" and out["vec_shape"][0] == 4
    assert len(out["reward"]) == 4 and len(out["done"]) == 4
    assert all(np.isfinite(out["reward"]))


def test_default_lm_policy_loads_and_acts_offline(offline):
    out = offline["lm"]
    assert out["path"].endswith(os.path.join("agents", "assets", "tiny-sft"))
    assert out["type"] == "gpt2" and out["vocab"] == out["n"] == 259
    assert len(out["action"]) == len(out["log_prob"]) == len(out["value"]) == 4
    assert all(0 <= a < 259 for a in out["action"])
    assert all(np.isfinite(out["value"]))
    # greedy tokens of the SFT model are confident: log-probs in (log 0.05, 0]
    assert all(np.log(0.05) < lp <= 0 for lp in out["log_prob"])
