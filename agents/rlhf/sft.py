"""Supervised fine-tuning of the tiny default policy: `textrlhf sft configs/sft_tiny.yaml`.

Builds a small byte-level GPT-2 from a config (no download), trains it with teacher forcing on
textenv's built-in train tasks (prompt -> reference + EOS, loss on the response tokens only), and
saves it with `save_pretrained` (safetensors + config.json + tokenizer files). The committed
default model `agents/assets/tiny-sft/` is the output of this command with the shipped config.

The run is deliberately short: the starting policy should be imperfect so that PPO has room to
improve it. Sequences use the env's exact layout (prompt left-padded to P, response from index P)
and the same position ids as `LMPolicy`, so what SFT teaches is what the policy sees.

    textrlhf sft configs/sft_tiny.yaml [--set train.steps=200 ...] [--overwrite]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from transformers import GPT2Config, GPT2LMHeadModel

import agents.run.config
from agents.policies.base import ENV_KWARGS
from agents.policies.lm import LMPolicy
from agents.policies.sequences import Temperature, position_ids_from_mask
from agents.rlhf.stage import REPO_ROOT, StageConfig, optimizer_step, run_stage
from agents.run.config_types import (
    NonNegFloat,
    NonNegSteps,
    PositiveFloat,
    Rows,
    Section,
    Steps,
    Tokens,
    Width,
)

if TYPE_CHECKING:
    from textenv.rewards import Reward

# ----------------------------------------------------------------------------- config


class ModelConfig(Section):
    """`model:` the shape of the byte-level GPT-2 that SFT builds."""

    n_layer: Width = Field(2, description="Transformer layers.")
    n_embd: Width = Field(128, description="Hidden width.")
    n_head: Width = Field(4, description="Attention heads.")
    # >= prompt + 256 so the benchmark can time long responses
    n_positions: Tokens = Field(320, description="Context length in tokens.")


class TrainConfig(Section):
    """`train:` the SFT optimizer and schedule."""

    steps: Steps = Field(300, description="Optimizer steps.")
    batch_size: Rows = Field(64, description="Examples per step.")
    learning_rate: PositiveFloat = Field(3.0e-3, description="AdamW's peak learning rate.")
    warmup_steps: NonNegSteps = Field(20, description="Linear warm-up steps.")
    weight_decay: NonNegFloat = Field(0.0, description="AdamW's weight decay.")
    max_grad_norm: PositiveFloat = Field(1.0, description="Gradient norm clip.")


class EvalConfig(Section):
    """`eval:` the held-out evaluation after SFT."""

    task: str = Field(
        "reverse",
        description="A built-in prompt set (its first n prompts of `split`) or a text task by "
        "name (n episodes, configured in task_kwargs).",
    )
    split: str = Field("test", description="train, validation or test.")
    n: Rows = Field(256, description="Prompts (or episodes) evaluated.")
    temperature: Temperature = Field(1.0, description="Sampling temperature.")
    reward_fn: str = Field("edit_distance", description="The reward function by name.")
    env_kwargs: Annotated[dict[str, Any], ENV_KWARGS] = Field(
        default_factory=dict, description="Env keyword arguments, e.g. {tools: [calc]}."
    )


class SFTConfig(StageConfig):
    """`textrlhf sft` config. `output_dir` is relative to the repository (the default model)."""

    summary_file: ClassVar[str] = "sft_summary.json"
    name: str = Field("sft_tiny", description="The stage's name.")
    output_dir: str = Field(
        "agents/assets/tiny-sft", description="The folder the model is written into."
    )
    # text tasks by name give n_per_task train episodes through their `demonstration(rng, split)`
    tasks: list[str] = Field(
        default_factory=lambda: ["reverse", "sort", "copy_edit"],
        description='Built-in prompt sets and text tasks by name ("rg:spell_backward", '
        '"ta:GuessTheNumber-v0", "module:attr") to train on.',
    )
    task_kwargs: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='The config of each text task given by name, e.g. {"rg:spell_backward": '
        "{max_word_len: 5}}.",
    )
    n_per_task: Rows = Field(1000, description="Training examples per task.")
    # "repeat_prompt" makes a deliberately repetitive LM: the start of configs/text_repetition.yaml
    open_ended_target: Literal["repeat_prompt"] | None = Field(
        None,
        description='Target for tasks without references: null: an error; "repeat_prompt": the '
        "prompt repeated.",
    )
    # the tool-using form is `<calc>EXPR</calc>=RESULT RESULT`, no loss on the env-written
    # `=RESULT`; the rest answer directly (which a tiny model cannot learn to do right)
    tool_fraction: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="The calc task: the fraction of examples demonstrated with the calc tool.",
    )
    # a flawed first answer (the reference with 0-3 random character edits; not in the loss),
    # the env's `retry_feedback` on it, then the reference (in the loss): the starting point of
    # configs/text_retry.yaml, which otherwise never saw a second turn
    retry_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="The fraction of examples (of prompt sets with references) that are "
        "two-turn demonstrations.",
    )
    retry_feedback: Literal["mask", "score", "constant"] = Field(
        "mask",
        description="The env feedback between the two turns (the one the RL config's env uses).",
    )
    max_prompt_tokens: Tokens = Field(32, description="Prompt length limit in tokens.")
    max_new_tokens: Tokens = Field(32, description="Response length limit in tokens.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model's shape.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimizer and schedule.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation.")

    @model_validator(mode="after")
    def _context_fits(self) -> SFTConfig:
        needed = self.max_prompt_tokens + self.max_new_tokens
        if self.model.n_positions < needed:
            raise ValueError(
                f"model.n_positions={self.model.n_positions} is smaller than max_prompt_tokens + "
                f"max_new_tokens = {needed}"
            )
        return self

    def output_path(self) -> Path:
        out = Path(self.output_dir)
        return out if out.is_absolute() else REPO_ROOT / out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> SFTConfig:
    """YAML file + `key.sub=value` overrides -> SFTConfig; unknown keys and bad values raise."""
    return agents.run.config.load_config(path, overrides, cls=SFTConfig)


# ----------------------------------------------------------------------------- data and model


def build_model(cfg: ModelConfig, tokenizer: Any) -> GPT2LMHeadModel:
    """A fresh byte-level GPT-2 whose vocabulary is the tokenizer's (pad and EOS distinct)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,  # no shared tensors: plain safetensors checkpoints work
        # exact GELU: on this project's AVX-512 CPU torch's tanh-approximation kernel is ~3x
        # slower forward + backward, and "gelu_new" (six elementwise ops) slower still; the
        # functions differ by < 5e-4 (benchmarks/gelu.py, docs/lm.md)
        activation_function="gelu",
    )
    return GPT2LMHeadModel(config)


def build_sft_data(
    cfg: SFTConfig, tokenizer: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every train prompt of `cfg.tasks` as (n, P+N) ids, attention mask and loss mask.

    Prompt ids come from textenv's PromptDataset (exactly what the env puts in the observation);
    the response is reference + EOS, right-padded. `calc` examples are tool-use demonstrations
    (a `tool_fraction` of them; `textenv.tools.calc_demonstration`) whose env-written tokens are
    in the sequence but not in the loss.
    """
    from textenv import PromptDataset
    from textenv.rewards.registry import make_reward_fn
    from textenv.tokenizer import encode_text
    from textenv.tools import calc_demonstration

    edit_distance = make_reward_fn("edit_distance")  # scores retry demonstrations' first answers
    P, N = cfg.max_prompt_tokens, cfg.max_new_tokens
    rng = np.random.default_rng([cfg.seed, 15])
    ids_rows, mask_rows, loss_rows = [], [], []
    for task in cfg.tasks:
        if ":" in task:  # a text task: its own demonstrations
            rows = task_demonstrations(task, cfg.task_kwargs.get(task), cfg, tokenizer, rng)
            for rows_of_kind, part in zip((ids_rows, mask_rows, loss_rows), zip(*rows)):
                rows_of_kind.extend(part)
            continue
        n = None if task == "continuation" else cfg.n_per_task  # continuation: every prompt
        ds = PromptDataset.from_task(
            task, "train", n=n, seed=cfg.seed, tokenizer=tokenizer, max_prompt_tokens=P
        )
        for i, (prompt, reference) in enumerate(zip(ds.prompts, ds.references)):
            if reference is None and cfg.open_ended_target is None:
                raise ValueError(
                    f"SFT task {task!r} has no references; pick a task with them or set "
                    "open_ended_target: repeat_prompt"
                )
            if reference is None:  # "repeat_prompt"
                reference = (prompt * N)[: N - 1]
            segments = [(reference, False)]
            if task == "calc":
                segments = calc_demonstration(prompt, reference, rng.random() < cfg.tool_fraction)
            elif cfg.retry_fraction and rng.random() < cfg.retry_fraction:
                segments = retry_demonstration(
                    prompt, reference, cfg.retry_feedback, edit_distance, rng
                )
            parts = [
                (encode_text(tokenizer, text) if text else [tokenizer.eos_token_id], not by_env)
                for text, by_env in segments
            ]  # "" stands for an EOS (the end of a first turn)
            parts.append(([tokenizer.eos_token_id], True))
            ids, mask, loss = sft_row(
                ds.input_ids[i], ds.attention_mask[i], parts, N, tokenizer.pad_token_id,
                f"reference of {task}[{i}]",
            )  # fmt: skip
            ids_rows.append(ids)
            mask_rows.append(mask)
            loss_rows.append(loss)
    return (
        torch.from_numpy(np.stack(ids_rows)),
        torch.from_numpy(np.stack(mask_rows)),
        torch.from_numpy(np.stack(loss_rows)),
    )


def retry_demonstration(
    prompt: str, reference: str, feedback: str, score: Reward, rng: np.random.Generator
) -> list[tuple[str, bool]]:
    """A two-turn example as (text, written by the env or not in the loss) segments: a flawed
    first answer and its EOS (both not in the loss: the model should not learn to make the
    mistakes), the env's feedback on it, then the reference (in the loss; the caller adds EOS).
    The flaws are 0-3 random edits (substitute, delete, insert, swap two neighbours), the
    kinds of mistakes the tiny models make. `score`: the reward that scores the first answer
    (what the env's feedback sees)."""
    from textenv.prompt_task import check_feedback, give_feedback

    attempt = list(reference)
    letters = sorted(set(reference)) or ["a"]
    for _ in range(int(rng.integers(0, 4))):
        op, i = int(rng.integers(4)), int(rng.integers(len(attempt) + 1))
        char = letters[int(rng.integers(len(letters)))]
        if op == 0 and i < len(attempt):
            attempt[i] = char
        elif op == 1 and i < len(attempt) and len(attempt) > 1:
            del attempt[i]
        elif op == 2:
            attempt.insert(i, char)
        elif op == 3 and i + 1 < len(attempt):
            attempt[i], attempt[i + 1] = attempt[i + 1], attempt[i]
    first = "".join(attempt)
    scores, _ = score.score([prompt], [first], [reference])
    reply = give_feedback(check_feedback(feedback), prompt, [first], [float(scores[0])], reference)
    return [(first, True), ("", True), (reply, True), (reference, False)]


def task_demonstrations(
    spec: str, task_kwargs: dict[str, Any] | None, cfg: SFTConfig, tokenizer: Any,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:  # fmt: skip
    """`cfg.n_per_task` train demonstrations of a text task as (ids, mask, loss mask) rows in the
    env's layout: the prompt left-padded to P (tokenized as the env does), then each turn's agent
    text + EOS (in the loss) and the env's reply (in the sequence, not in the loss)."""
    from textenv.data import encode_prompt
    from textenv.text_task import make_text_task
    from textenv.tokenizer import encode_text

    task = make_text_task(spec, task_kwargs)
    if not callable(getattr(task, "demonstration", None)):
        raise ValueError(f"SFT task {spec!r} has no demonstration(rng, split) method")
    P, N, pad = cfg.max_prompt_tokens, cfg.max_new_tokens, tokenizer.pad_token_id
    out = []
    for i in range(cfg.n_per_task):
        prompt, turns = task.demonstration(rng, "train")
        where = f"{spec} demonstration {i}"
        prompt_ids = encode_prompt(tokenizer, prompt, P, where=where)
        padded = np.full(P, pad, dtype=np.int64)  # left-padded, as the env lays it out
        prompt_mask = np.zeros(P, dtype=np.int64)
        padded[P - len(prompt_ids) :], prompt_mask[P - len(prompt_ids) :] = prompt_ids, 1
        parts = []
        for agent_text, reply in turns:
            parts.append((encode_text(tokenizer, agent_text) + [tokenizer.eos_token_id], True))
            if reply:
                parts.append((encode_text(tokenizer, reply), False))
        out.append(sft_row(padded, prompt_mask, parts, N, pad, where))
    return out


def sft_row(
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    parts: list[tuple[list[int], bool]],
    N: int,
    pad_id: int,
    where: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One SFT row in the env's layout: the (P,) left-padded prompt, then the response `parts`
    (token ids, in the loss or not: env-written tokens are not) right-padded to N. Returns (ids,
    mask, loss mask), each (P + N,); a response longer than N is a ValueError naming `where`."""
    P = len(prompt_ids)
    response = [t for tokens, _ in parts for t in tokens]
    if len(response) > N:
        raise ValueError(
            f"{where} has {len(response)} tokens after the prompt (EOS included), more than "
            f"max_new_tokens={N}"
        )
    ids = np.full(P + N, pad_id, dtype=np.int64)
    mask = np.zeros(P + N, dtype=np.int64)
    ids[:P], mask[:P] = prompt_ids, prompt_mask
    ids[P : P + len(response)], mask[P : P + len(response)] = response, 1
    loss = np.zeros(P + N, dtype=bool)
    loss[P : P + len(response)] = [trained for tokens, trained in parts for _ in tokens]
    return ids, mask, loss


def sft_loss(
    model: GPT2LMHeadModel, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over the response tokens (teacher forcing)."""
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
    ).logits  # (B, L, V)
    targets = ids[:, 1:]  # (B, L-1): position i predicts token i+1
    keep = loss_mask[:, 1:]
    return F.cross_entropy(logits[:, :-1][keep], targets[keep])


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def score_on_task(
    policy: LMPolicy,
    task: str = "reverse",
    split: str = "test",
    n: int = 256,
    deterministic: bool = False,
    seed: int = 0,
    max_prompt_tokens: int = 32,
    max_new_tokens: int = 32,
    reward_fn: Any = "edit_distance",
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Roll the policy out on the first `n` prompts of a built-in task split (the lockstep vector
    env, one episode per prompt; `env_kwargs`: more env arguments, e.g. tools). Returns mean
    score, mean response length, the fraction of episodes that used a tool and a few samples."""
    from textenv import TextRLHFVectorEnv

    sizes = dict(max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens)
    if ":" in task:  # a text task: n episodes drawn from the split
        env = TextRLHFVectorEnv(num_envs=n, task=task, split=split, **sizes, **(env_kwargs or {}))
        options = None
    else:
        env = TextRLHFVectorEnv(
            num_envs=n, prompts=task, split=split, reward_fn=reward_fn, **sizes,
            **(env_kwargs or {}),
        )  # fmt: skip
        if n > len(env.dataset):
            raise ValueError(f"n={n} exceeds the {len(env.dataset)} prompts of {task}/{split}")
        options = {"prompts": list(range(n))}
    torch.manual_seed(seed)
    obs, _ = env.reset(seed=seed, options=options)
    state = policy.initial_state(n)
    scores, lengths, samples = np.zeros(n), np.zeros(n), [None] * n
    used_tool = np.zeros(n)
    done = np.zeros(n, dtype=bool)
    while not done.all():
        tensors = {k: torch.as_tensor(v) for k, v in obs.items()}
        action, _, _, state = policy.act(tensors, state, deterministic=deterministic)
        obs, _, terminated, truncated, info = env.step(action.numpy())
        for i in np.flatnonzero(info.get("_score", np.zeros(n, dtype=bool))):
            scores[i] = info["score"][i]
            lengths[i] = len(info["response"][i])
            used_tool[i] = bool(info["used_tool"][i]) if "used_tool" in info else 0.0
            samples[i] = {
                "prompt": info["prompt"][i],
                "response": info["response"][i],
                "reference": info["reference"][i],
                "score": float(info["score"][i]),
            }
        done |= terminated | truncated
    return {
        "mean_score": float(scores.mean()),
        "mean_response_chars": float(lengths.mean()),
        "tool_use": float(used_tool.mean()),
        "samples": samples[:8],
    }


# ----------------------------------------------------------------------------- main


def train_sft(cfg: SFTConfig, out: Path) -> dict[str, Any]:
    """Train the SFT model of `cfg`, save it to `out`; return the summary."""
    from textenv import default_tokenizer

    rng = np.random.default_rng(cfg.seed)
    tokenizer = default_tokenizer()
    model = build_model(cfg.model, tokenizer)
    model.train()
    ids, mask, loss_mask = build_sft_data(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"SFT {cfg.name}: {n_params / 1e6:.2f}M parameters, {len(ids)} examples from {cfg.tasks}")

    tc = cfg.train
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, tc.warmup_steps))
    )
    start, losses = time.perf_counter(), []
    for step in range(tc.steps):
        idx = torch.from_numpy(rng.integers(0, len(ids), size=tc.batch_size))
        loss = sft_loss(model, ids[idx], mask[idx], loss_mask[idx])
        optimizer_step(model, optimizer, schedule, loss, tc.max_grad_norm)
        losses.append(loss.item())
        if step % 50 == 0 or step == tc.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}")
    train_seconds = time.perf_counter() - start

    model.eval()
    policy = LMPolicy(
        model, tokenizer, temperature=cfg.eval.temperature,
        max_sequence_length=cfg.max_prompt_tokens + cfg.max_new_tokens,
    )  # fmt: skip
    ev = cfg.eval
    env_kwargs = dict(ev.env_kwargs)
    if ":" in ev.task and cfg.task_kwargs.get(ev.task):
        env_kwargs.setdefault("task_kwargs", cfg.task_kwargs[ev.task])
    kwargs = dict(task=ev.task, split=ev.split, n=ev.n, seed=cfg.seed,
                  max_prompt_tokens=cfg.max_prompt_tokens, max_new_tokens=cfg.max_new_tokens,
                  reward_fn=ev.reward_fn, env_kwargs=env_kwargs)  # fmt: skip
    sampled = score_on_task(policy, deterministic=False, **kwargs)
    greedy = score_on_task(policy, deterministic=True, **kwargs)
    print(
        f"held-out {ev.task}/{ev.split} {ev.reward_fn} reward: sampled "
        f"{sampled['mean_score']:.3f}, greedy {greedy['mean_score']:.3f}"
        + (f" (tool use: sampled {sampled['tool_use']:.2f})" if ev.env_kwargs.get("tools") else "")
    )
    for s in sampled["samples"][:4]:
        print(f"  {s['prompt']!r} -> {s['response']!r} (ref {s['reference']!r}, {s['score']:.2f})")

    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    return {
        "parameters": n_params,
        "examples": len(ids),
        "final_loss": float(np.mean(losses[-20:])),
        "train_seconds": round(train_seconds, 1),
        f"heldout_{ev.task}_{ev.split}_reward_sampled": round(sampled["mean_score"], 4),
        f"heldout_{ev.task}_{ev.split}_reward_greedy": round(greedy["mean_score"], 4),
        **(
            {f"heldout_{ev.task}_{ev.split}_tool_use_sampled": round(sampled["tool_use"], 4)}
            if ev.env_kwargs.get("tools")
            else {}
        ),
    }


def main(
    config_path: str | Path | None, overrides: list[str] | None = None, overwrite: bool = False
) -> Path:
    """`textrlhf sft CONFIG`: train, save and summarize; return the output folder. An existing
    output folder (such as the committed default model) is replaced only with `overwrite`."""
    return run_stage(SFTConfig, config_path, overrides, overwrite, train_sft)
