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
import torch
from helpers import lm_policy_config

import textenv  # noqa: F401  (registers TextRLHF-v0)
from agents.policies.lm import LMPolicy

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


VECTOR_ACTIONS = [[100, 100, 100, 100], [1, 1, 1, 1]]  # "a", then EOS: every row ends, scored

ENV_CODE = """
import gymnasium as gym
import textenv

env = gym.make("TextRLHF-v0")
obs, info = env.reset(seed=0)
print(obs)
venv = gym.make_vec("TextRLHF-v0", num_envs=4)
vobs, _ = venv.reset(seed=0)
for action in VECTOR_ACTIONS:
    vobs, reward, terminated, truncated, info = venv.step(action)
result = {"env": {
    "ids": obs["input_ids"].tolist(), "mask": obs["attention_mask"].tolist(),
    "vec": type(venv).__name__, "vec_ids": vobs["input_ids"].tolist(),
    "reward": reward.tolist(), "done": (terminated | truncated).tolist(),
    "reference": info["reference"].tolist(),
}}
"""

LM_CODE = """
import torch
from agents.policies.hf import DEFAULT_MODEL_PATH
from agents.policies.lm import LMPolicy

torch.manual_seed(0)  # the value head is freshly initialized
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
    return run_offline(f"VECTOR_ACTIONS = {VECTOR_ACTIONS}\n" + ENV_CODE + LM_CODE)


def test_env_and_vector_env_make_reset_and_step_offline(offline):
    out = offline["env"]
    # the same observation as in this (networked) process
    here, _ = gym.make("TextRLHF-v0").reset(seed=0)
    assert out["ids"] == here["input_ids"].tolist()
    assert out["mask"] == here["attention_mask"].tolist()
    mask = np.array(out["mask"])
    assert mask.sum() > 0 and mask[-1] == 0  # a left-padded prompt, room for the response
    assert out["vec"] == "TextRLHFVectorEnv"
    # the vector env: the same episodes and rewards as here; "a" scores 1/len(reference) when
    # the reference holds an "a", else 0
    venv = gym.make_vec("TextRLHF-v0", num_envs=4)
    venv.reset(seed=0)
    for action in VECTOR_ACTIONS:
        vobs, reward, terminated, truncated, info = venv.step(np.array(action))
    assert out["vec_ids"] == vobs["input_ids"].tolist()
    assert out["reference"] == info["reference"].tolist()
    assert out["done"] == [True] * 4
    expected = [1 / len(ref) if "a" in ref else 0.0 for ref in out["reference"]]
    assert out["reward"] == pytest.approx(expected) and out["reward"] == reward.tolist()
    assert max(expected) > 0  # not vacuous (measured: 2 of the 4 references hold an "a")


def test_default_lm_policy_loads_and_acts_offline(offline):
    out = offline["lm"]
    assert out["path"].endswith(os.path.join("agents", "assets", "tiny-sft"))
    assert out["type"] == "gpt2" and out["vocab"] == out["n"] == 259
    # the same greedy step as here, on the same observation, with the same seeded value head
    venv = gym.make_vec("TextRLHF-v0", num_envs=4)
    obs, _ = venv.reset(seed=0)
    torch.manual_seed(0)
    policy = LMPolicy.from_config(
        lm_policy_config(None), venv.single_observation_space, venv.single_action_space
    )
    obs = {k: torch.from_numpy(v) for k, v in obs.items()}
    action, log_prob, value, _ = policy.act(obs, policy.initial_state(4), deterministic=True)
    assert out["action"] == action.tolist()
    assert out["log_prob"] == pytest.approx(log_prob.tolist(), abs=1e-6)
    assert out["value"] == pytest.approx(value.tolist(), abs=1e-6)
    # greedy tokens of the SFT model are confident: log-probs in (log 0.05, 0]
    assert all(np.log(0.05) < lp <= 0 for lp in out["log_prob"])
