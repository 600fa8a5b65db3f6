"""Helpers shared by the test modules: the one tiny-model builder and the LM-policy test utilities.

Test modules import these as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``);
the fixtures built on them live in ``conftest.py``. Test modules never import each other.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
V = 259  # textenv's byte tokenizer: 256 bytes + pad 0, EOS 1, unk 2
EOS, PAD = 1, 0


def byte_ids(text: str) -> list[int]:
    """The default byte tokenizer's ids of `text` (byte + 3, no EOS)."""
    return [b + 3 for b in text.encode()]


# ----------------------------------------------------------------------------- tiny models


def save_tiny_model(
    folder: str | Path,
    arch: str = "gpt2",
    *,
    head: str = "lm",
    vocab: int = V,
    n_positions: int = 128,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> str:
    """A tiny randomly initialized transformers model plus textenv's byte tokenizer, saved to
    `folder`; returns the folder as a str.

    arch: "gpt2" or "llama" (llama: intermediate size 2 * hidden, heads // 2 key/value heads).
    head: "lm" (a causal LM, untied output embedding) or "classifier" (a one-label sequence
    classifier, gpt2 only: a reward model). Pad id 0, EOS = BOS = 1, as the byte tokenizer.
    The weights depend only on the arguments (torch is seeded with `seed` first).
    """
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from textenv import default_tokenizer

    if head not in ("lm", "classifier"):
        raise ValueError(f"head must be 'lm' or 'classifier', got {head!r}")
    torch.manual_seed(seed)
    special = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1}
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_positions=n_positions, n_embd=hidden, n_layer=layers,
            n_head=heads, tie_word_embeddings=False,
            **({"num_labels": 1} if head == "classifier" else {}), **special,
        )  # fmt: skip
        model = (GPT2LMHeadModel if head == "lm" else GPT2ForSequenceClassification)(config)
    elif arch == "llama" and head == "lm":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2), max_position_embeddings=n_positions,
            tie_word_embeddings=False, **special,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"no tiny model for arch={arch!r}, head={head!r}")
    model.save_pretrained(folder)
    default_tokenizer().save_pretrained(folder)
    return str(folder)


# ----------------------------------------------------------------------------- LM policy


def lm_policy_config(model_path: str | None, **options: Any) -> Any:
    """The `policy:` section of `type: lm` for `model_path`, as the config loader builds it."""
    from agents.run.config import load_config

    return load_config({"policy": {"type": "lm", "model_path": model_path, **options}}).policy


def spaces_for(P: int, N: int, vocab: int = V) -> tuple[spaces.Dict, spaces.Discrete]:
    """The TextRLHF-v0 observation and action spaces for P prompt and N new tokens."""
    obs_space = spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab - 1, (P + N,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, (P + N,), dtype=np.int8),
        }
    )
    return obs_space, spaces.Discrete(vocab)


def make_prompts(
    lengths: list[int], P: int, N: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts in the env's layout: (B, P+N) ids and mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), P + N, dtype=torch.long)
    mask = torch.zeros(len(lengths), P + N, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, P - n : P] = torch.randint(3, V, (n,), generator=g)
        mask[i, P - n : P] = 1
    return ids, mask


def lm_rollout(
    policy: Any, ids: torch.Tensor, mask: torch.Tensor, P: int, steps: int,
    deterministic: bool = False,
) -> tuple[SimpleNamespace, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Act `steps` times, writing actions into the observation as the env does; returns a
    (T, B, ...) batch in the buffer's layout plus the act() log-probs and the rollout's values
    (`rollout_values` for a policy with `values_after_rollout`, as the collector does)."""
    ids, mask = ids.clone(), mask.clone()
    state = policy.initial_state(ids.shape[0])
    obs_ids, obs_mask, acts, logps, values = [], [], [], [], []
    for t in range(steps):
        obs = {"input_ids": ids.clone(), "attention_mask": mask.clone()}
        obs_ids.append(obs["input_ids"])
        obs_mask.append(obs["attention_mask"])
        a, lp, v, state = policy.act(obs, state, deterministic=deterministic)
        acts.append(a)
        logps.append(lp)
        values.append(v)
        ids[:, P + t], mask[:, P + t] = a, 1
    batch = SimpleNamespace(
        obs={"input_ids": torch.stack(obs_ids), "attention_mask": torch.stack(obs_mask)},
        actions=torch.stack(acts),
        valid=torch.ones(steps, ids.shape[0], dtype=torch.bool),
    )
    values = torch.stack(values)
    if policy.values_after_rollout:  # as the rollout collector does
        assert not values.any()  # act() left them out
        values = policy.rollout_values(batch)
    return batch, torch.stack(logps), values


def text_config(model_path: str, run_root: str, **ppo: Any) -> dict:
    """A small PPO config (as a dict) for an LM policy on TextRLHF-v0's reverse task."""
    return {
        "name": "lm_test",
        "seed": 3,
        "total_timesteps": 8 * 8 * 4,
        "env": {
            "id": "textenv:TextRLHF-v0",  # module:EnvId: the policy no longer imports textenv
            "num_envs": 8,
            "vectorization": "vector_entry_point",
            "kwargs": {"prompts": "reverse", "max_prompt_tokens": 20, "max_new_tokens": 8},
        },
        "policy": {"type": "lm", "model_path": model_path},
        "ppo": {
            "n_steps": 8,
            "batch_size": 32,
            "n_epochs": 2,
            "gamma": 1.0,
            "gae_lambda": 0.95,
            "learning_rate": 1.0e-3,
            **ppo,
        },  # fmt: skip
        "kl": {"enabled": True, "beta": 0.1, "estimator": "k1"},
        "eval": {"episodes": 8, "deterministic": False, "env_kwargs": {"split": "test"}},
        "run": {"root": run_root, "progress": False},
    }


# ----------------------------------------------------------------------------- CartPole runs

SMALL = ["total_timesteps=512", "ppo.n_epochs=2", "run.progress=false", "eval.episodes=2"]
DEEP = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit in json and yaml


def train_args(cartpole_yaml: Path, root: Path, *more: str) -> list[str]:
    """`textrlhf train` arguments for a 512-step CartPole run (SMALL) under `root`."""
    return ["train", str(cartpole_yaml), "--set", f"run.root={root}", *SMALL, *more]


def _half_run(cartpole_yaml: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A SMALL CartPole run named "half" stopped at step 256 of 512: its folder and the latest
    checkpoint's metadata file."""
    from agents.run import checkpoint as ckpt
    from agents.run.config import load_config
    from agents.run.rundir import new_run_dir
    from agents.run.trainer import Trainer

    cfg = load_config(cartpole_yaml, [f"run.root={tmp_path}", *SMALL])
    trainer = Trainer(cfg, new_run_dir(cfg, "half"))
    trainer.learn(stop_at=256)
    run = tmp_path / "half"
    return run, ckpt.latest_checkpoint(run / "checkpoints")


def copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    """A copy of the run folder `run` as `tmp_path / name` (for tests that change it)."""
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


# ----------------------------------------------------------------------------- rewards


def levenshtein(a: str, b: str) -> int:
    """Edit distance by the textbook dynamic program (an independent check of the env reward)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def edit_similarity(response: str, reference: str) -> float:
    """textenv's `edit_distance` reward: 1 - distance / max(len), 1.0 for two empty strings."""
    longest = max(len(response), len(reference))
    return 1.0 if longest == 0 else 1.0 - levenshtein(response, reference) / longest


# ----------------------------------------------------------------------------- chat templates

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_chat_tokenizer(folder: str | Path) -> str:
    """textenv's byte tokenizer plus two special tokens, ``<|im_start|>`` (259) and
    ``<|im_end|>`` (260, the turn terminator), and a ChatML-style Jinja chat template, saved to
    `folder` (261 ids); returns the folder as a str."""
    from textenv import default_tokenizer

    tokenizer = default_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return str(folder)
