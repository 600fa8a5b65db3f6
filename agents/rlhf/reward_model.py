"""Reward-model training on preference pairs with the Bradley–Terry loss: `textrlhf rm CONFIG`.

The reward model is a transformers sequence-classification model with one scalar output
(`AutoModelForSequenceClassification`, `num_labels=1`, `pad_token_id` set), whose trunk is loaded
from the SFT model's folder; only the score head is new. For a pair, the loss is

    -log sigmoid(r(prompt + chosen) - r(prompt + rejected))

(Bradley–Terry: P(chosen > rejected) = sigmoid(r_c - r_r)). Inputs are encoded with
`textenv.rewards.encode_for_reward_model`, the same function the `reward_model` env reward uses
to score, so training and scoring agree; the score is read at the last real token (the EOS, or
the last token of a response that was cut at the sampling length limit: `cut_at_tokens`).

The output folder (`save_pretrained`: config.json + model.safetensors + tokenizer files +
`rm_metrics.json`) loads directly as an env reward:
`reward_fn={"name": "reward_model", "path": FOLDER}`.

    textrlhf rm configs/rm_tiny.yaml [--set train.steps=200 ...]
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

import agents.run.config
from agents.policies.base import INPUT_PATH
from agents.policies.hf import DEFAULT_MODEL_PATH
from agents.rlhf.preferences import PreferencePair, read_preferences
from agents.rlhf.stage import REPO_ROOT, StageConfig, optimizer_step, run_stage
from agents.run.config_types import (
    NonNegFloat,
    NonNegSteps,
    PositiveFloat,
    Rows,
    Section,
    Steps,
    Tokens,
)

# ----------------------------------------------------------------------------- config


class RMTrainConfig(Section):
    """`train:` the reward model's optimizer and schedule."""

    steps: Steps = Field(400, description="Optimizer steps.")
    batch_size: Rows = Field(64, description="Preference pairs per step (2x sequences).")
    learning_rate: PositiveFloat = Field(2.0e-3, description="AdamW's peak learning rate.")
    warmup_steps: NonNegSteps = Field(30, description="Linear warm-up steps.")
    weight_decay: NonNegFloat = Field(0.0, description="AdamW's weight decay.")
    max_grad_norm: PositiveFloat = Field(1.0, description="Gradient norm clip.")
    eval_every: NonNegSteps = Field(
        100, description="Steps between held-out evaluations; 0: only at the end."
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> RMTrainConfig:
        check_warmup(self)
        return self


class RMConfig(StageConfig):
    """`textrlhf rm` config. `output_dir` is relative to the working directory, like run.root."""

    summary_file: ClassVar[str] = "rm_metrics.json"
    name: str = Field("rm_tiny", description="The stage's name.")
    # input paths: relative to the config file's folder (the defaults: to the repository)
    sft_path: Annotated[str | None, INPUT_PATH] = Field(
        None,
        description="The model to start from (its trunk); null: the default "
        "agents/assets/tiny-sft.",
    )
    train_file: Annotated[str, INPUT_PATH] = Field(
        "data/preferences/reverse_train.jsonl", description="Preference pairs (JSONL) to train on."
    )
    # noise-free pairs from validation prompts: settings are chosen on them (reverse_test.jsonl,
    # test prompts, is for the one final measurement)
    eval_file: Annotated[str | None, INPUT_PATH] = Field(
        "data/preferences/reverse_validation.jsonl",
        description="Held-out preference pairs; null: hold out eval_fraction of train_file.",
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="Held-out share of train_file when eval_file is null."
    )
    output_dir: str = Field("runs/rm_tiny", description="The folder the model is written into.")
    # a response of that many tokens was cut there without EOS, and is encoded without EOS,
    # exactly as the env's `reward_model` reward scores a cut response
    cut_at_tokens: Tokens | None = Field(
        None,
        description="The length limit the pairs' responses were sampled with; null: every "
        "response ended with EOS.",
    )
    train: RMTrainConfig = Field(
        default_factory=RMTrainConfig, description="Optimizer and schedule."
    )


def check_warmup(cfg: RMTrainConfig) -> None:
    if cfg.warmup_steps > cfg.steps:
        raise ValueError(
            f"train.warmup_steps must be in [0, train.steps={cfg.steps}], got {cfg.warmup_steps}"
        )


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RMConfig:
    """YAML file + `key.sub=value` overrides -> RMConfig; unknown keys and bad values raise."""
    return agents.run.config.load_config(path, overrides, cls=RMConfig)


def _resolve(path: str | os.PathLike) -> Path:
    """An input path: as given (relative to the working directory), else relative to the repo."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else REPO_ROOT / path


# ----------------------------------------------------------------------------- loss and scoring


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected) over the pairs (B,) -> scalar."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Share of pairs with r_chosen > r_rejected (a tie counts as wrong)."""
    return float((r_chosen > r_rejected).float().mean())


def load_reward_model(init_path: str | os.PathLike) -> tuple[Any, Any]:
    """A fresh scalar reward model on the trunk at `init_path`, and that folder's tokenizer."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as transformers_logging

    from textenv.tokenizer import load_tokenizer

    init_path = Path(init_path)
    if not init_path.is_dir():
        raise ValueError(
            f"sft_path {str(init_path)!r} is not a model folder; expected a local transformers "
            f"folder (config.json + model.safetensors), or null for {DEFAULT_MODEL_PATH}"
        )
    has_tokenizer = any(
        (init_path / name).exists() for name in ("tokenizer_config.json", "tokenizer.json")
    )
    tokenizer = load_tokenizer(str(init_path) if has_tokenizer else None)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the load report only says: new score head
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            init_path, num_labels=1, pad_token_id=tokenizer.pad_token_id, use_safetensors=True
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def responses_ended(tokenizer: Any, responses: list[str], cut_at_tokens: int | None) -> list[bool]:
    """Which responses ended with EOS: those shorter than `cut_at_tokens` tokens (None: all)."""
    if cut_at_tokens is None:
        return [True] * len(responses)
    ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [len(x) < cut_at_tokens for x in ids]


def score_pairs(
    model: Any, tokenizer: Any, pairs: list[PreferencePair], cut_at_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of chosen and rejected (B,), (B,) from ONE forward pass over the 2B texts.

    A response of `cut_at_tokens` tokens or more was cut at the sampling limit: it is encoded
    without EOS, as the env scores it (`encode_for_reward_model`)."""
    from textenv.rewards import encode_for_reward_model

    prompts = [p.prompt for p in pairs]
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = encode_for_reward_model(
        tokenizer, prompts + prompts, responses,
        responses_ended(tokenizer, responses, cut_at_tokens),
    )  # fmt: skip  # input_ids, attention_mask: (2B, T)
    rewards = model(**batch).logits[:, 0]  # (2B,)
    return rewards[: len(pairs)], rewards[len(pairs) :]


@torch.no_grad()
def evaluate(
    model: Any,
    tokenizer: Any,
    pairs: list[PreferencePair],
    batch_size: int = 256,
    cut_at_tokens: int | None = None,
) -> dict[str, float]:
    """Bradley–Terry loss and accuracy over `pairs`, plus the mean and std of the rewards."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        rc, rr = score_pairs(model, tokenizer, pairs[start : start + batch_size], cut_at_tokens)
        chosen.append(rc)
        rejected.append(rr)
    rc, rr = torch.cat(chosen), torch.cat(rejected)
    model.train(was_training)
    both = torch.cat([rc, rr])
    return {
        "loss": float(bradley_terry_loss(rc, rr)),
        "accuracy": pairwise_accuracy(rc, rr),
        "reward_mean": float(both.mean()),
        "reward_std": float(both.std()),
        "pairs": len(pairs),
    }


# ----------------------------------------------------------------------------- training


def split_pairs(
    pairs: list[PreferencePair], fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Shuffle with `seed` and hold out `fraction` of the pairs: (train, held_out)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_eval = max(1, int(round(fraction * len(pairs))))
    if n_eval >= len(pairs):
        raise ValueError(f"eval_fraction={fraction} leaves no training pairs out of {len(pairs)}")
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


def train_reward_model(
    model: Any,
    tokenizer: Any,
    train_pairs: list[PreferencePair],
    eval_pairs: list[PreferencePair],
    cfg: RMTrainConfig,
    seed: int = 0,
    log: Any = print,
    cut_at_tokens: int | None = None,
) -> list[dict[str, float]]:
    """AdamW on the Bradley–Terry loss over random minibatches of pairs; returns the eval history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    check_warmup(cfg)
    warmup = max(1, cfg.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warmup, then linear decay to 0
        optimizer,
        lambda s: min((s + 1) / warmup, max(0.0, (cfg.steps - s) / (cfg.steps - warmup + 1))),
    )
    model.train()
    history, losses, accs = [], [], []
    for step in range(1, cfg.steps + 1):
        idx = rng.integers(0, len(train_pairs), size=min(cfg.batch_size, len(train_pairs)))
        rc, rr = score_pairs(model, tokenizer, [train_pairs[i] for i in idx], cut_at_tokens)
        loss = bradley_terry_loss(rc, rr)
        optimizer_step(model, optimizer, schedule, loss, cfg.max_grad_norm)
        losses.append(loss.item())
        accs.append(pairwise_accuracy(rc.detach(), rr.detach()))
        if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
            ev = evaluate(model, tokenizer, eval_pairs, cut_at_tokens=cut_at_tokens)
            row = {
                "step": step,
                "train_loss": float(np.mean(losses[-cfg.eval_every or -len(losses) :])),
                "train_accuracy": float(np.mean(accs[-cfg.eval_every or -len(accs) :])),
                "eval_loss": ev["loss"],
                "eval_accuracy": ev["accuracy"],
            }
            history.append(row)
            log(
                f"step {step:5d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
                f"  | held-out loss {ev['loss']:.4f} acc {ev['accuracy']:.3f}"
            )
    model.eval()
    return history


def save_reward_model(model: Any, tokenizer: Any, folder: Path) -> Path:
    """Write the folder the `reward_model` env reward loads: safetensors + tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- main


def train_rm(cfg: RMConfig, out: Path) -> dict[str, Any]:
    """Train the reward model of `cfg`, save it to `out`; return its metrics."""
    sft_path = _resolve(cfg.sft_path) if cfg.sft_path is not None else DEFAULT_MODEL_PATH
    pairs = read_preferences(_resolve(cfg.train_file))
    if cfg.eval_file is not None:
        train_pairs, eval_pairs = pairs, read_preferences(_resolve(cfg.eval_file))
    else:
        train_pairs, eval_pairs = split_pairs(pairs, cfg.eval_fraction, cfg.seed)
    model, tokenizer = load_reward_model(sft_path)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"RM {cfg.name}: {n_params / 1e6:.2f}M parameters from {sft_path}, "
        f"{len(train_pairs)} train / {len(eval_pairs)} held-out pairs"
    )
    cut = cfg.cut_at_tokens
    n_cut = {
        name: sum(not e for e in responses_ended(
            tokenizer, [r for p in ps for r in (p.chosen, p.rejected)], cut
        ))
        for name, ps in (("train", train_pairs), ("eval", eval_pairs))
    }  # fmt: skip
    if cut is not None:
        print(
            f"responses cut at {cut} tokens (encoded without EOS): {n_cut['train']} train, "
            f"{n_cut['eval']} held-out"
        )
    before = evaluate(model, tokenizer, eval_pairs, cut_at_tokens=cut)
    start = time.perf_counter()
    history = train_reward_model(
        model, tokenizer, train_pairs, eval_pairs, cfg.train, cfg.seed, cut_at_tokens=cut
    )
    seconds = time.perf_counter() - start
    final = evaluate(model, tokenizer, eval_pairs, cut_at_tokens=cut)
    print(
        f"held-out accuracy {final['accuracy']:.3f} (before training {before['accuracy']:.3f}), "
        f"loss {final['loss']:.4f}, in {seconds:.0f} s"
    )
    save_reward_model(model, tokenizer, out)
    return {
        "name": cfg.name,
        "sft_path": str(sft_path),
        "parameters": n_params,
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "cut_at_tokens": cut,
        "cut_responses": n_cut,
        "eval_accuracy": round(final["accuracy"], 4),
        "eval_loss": round(final["loss"], 4),
        "eval_reward_mean": round(final["reward_mean"], 4),
        "eval_reward_std": round(final["reward_std"], 4),
        "eval_accuracy_before": round(before["accuracy"], 4),
        "train_seconds": round(seconds, 1),
        "history": history,
    }


def main(
    config_path: str | os.PathLike | None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """`textrlhf rm CONFIG`: train, save and summarize; return the output folder."""
    return run_stage(RMConfig, config_path, overrides, overwrite, train_rm)
