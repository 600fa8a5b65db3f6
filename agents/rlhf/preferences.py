"""Preference pairs: synthetic pair generation labelled by a known gold rule, and JSONL reading.

Real RLHF labels pairs with people. Here a *gold rule* plays the person, so that a learned reward
model can be checked against the truth and PPO's over-optimization of it can be watched. The rule
lives with the string tasks it scores, in ``textenv.gold`` (``gold_score``, explained there; the
env reward ``gold`` computes it), because a PPO config logs it as an env reward component and
textenv never imports agents (docs/rlhf_pipeline.md).

Generation (``python -m agents.rlhf.preferences --out data/preferences --n-train 8000
--n-validation 1000``, the command that wrote the committed files from the committed default SFT
model): two responses per prompt are sampled from the SFT model (``LMPolicy`` on the lockstep
vector env, exactly how PPO samples). Pairs with an empty response, identical pairs and pairs whose
gold scores differ by less than ``min_margin`` are dropped; the better response by the gold rule is
``chosen``, and with probability ``noise`` the label is flipped. The train file comes from
train-split prompts with label noise; the test file from test-split prompts and the optional
validation file (``--n-validation``) from validation-split prompts, both with noise-free gold
labels, so reward-model accuracy on them is accuracy against the gold ordering. Reward-model
settings are chosen on the validation file; the test file is for the one final measurement.
Deterministic in the seed.

JSONL form (the one DPO and reward-model tools use): one object per line with ``chosen`` and
``rejected`` and an optional shared ``prompt``; without ``prompt`` the two are full texts. Other
fields (``gold_chosen``, ``gold_rejected``, ``flipped``) are kept for analysis and ignored by
training.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.run.files import atomic_write_text
from agents.run.jsonio import is_unicode_text, parse_json
from textenv.gold import gold_score, vowel_share
from textenv.tasks import STRING_OPS

# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: ``prompt + chosen`` is preferred to ``prompt + rejected``."""

    prompt: str
    chosen: str
    rejected: str


def read_preferences(path: str | os.PathLike) -> list[PreferencePair]:
    """Read a chosen/rejected JSONL file; ValueError naming the file and line on bad input.

    Each non-blank line is a JSON object with non-empty strings ``chosen`` and ``rejected`` and an
    optional string ``prompt`` (missing means ``""``: chosen and rejected are full texts).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"preference file {str(path)!r} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({e})") from None
    pairs = []
    for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = parse_json(line)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        pairs.append(_record_to_pair(record, where))
    if not pairs:
        raise ValueError(f"preference file {str(path)!r} holds no pairs")
    return pairs


def _record_to_pair(record: Any, where: str) -> PreferencePair:
    if not isinstance(record, dict):
        raise ValueError(
            f"{where}: expected a JSON object with 'chosen' and 'rejected' (and optional "
            f"'prompt'), got {type(record).__name__}"
        )
    for key in ("chosen", "rejected"):
        if key not in record:
            raise ValueError(f"{where}: missing {key!r}; a pair needs 'chosen' and 'rejected'")
        value = record[key]
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: {key!r} must be a non-empty string, got {value!r:.80}")
    prompt = record.get("prompt", "")
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be a string when given, got {prompt!r:.80}")
    for key in ("prompt", "chosen", "rejected"):
        if not is_unicode_text(record.get(key, "")):
            raise ValueError(
                f"{where}: {key!r} = {record[key]!r:.80} holds a lone surrogate (a '\\ud800'-style "
                "escape): not Unicode text, and no tokenizer can encode it"
            )
    return PreferencePair(prompt, record["chosen"], record["rejected"])


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> Path:
    """Write records as JSONL atomically (temp file, fsync, os.replace; the umask's mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    atomic_write_text(path, text)
    return path


# ----------------------------------------------------------------------------- generation


def rollout_responses(
    policy: Any,
    prompts: list[str],
    seed: int,
    batch_size: int = 256,
    max_new_tokens: int = 32,
    max_prompt_tokens: int = 32,
) -> tuple[list[str], list[list[int]]]:
    """Sample one response per prompt with an ``LMPolicy`` on the lockstep vector env (exactly
    what PPO sees). Returns the decoded responses and the generated token ids (EOS included)."""
    import torch

    from textenv import TextRLHFVectorEnv

    torch.manual_seed(seed)
    responses: list[str] = []
    tokens: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        n = len(chunk)
        env = TextRLHFVectorEnv(
            num_envs=n, tokenizer=policy.tokenizer, prompts=chunk, reward_fn="length",
            max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
        )  # fmt: skip
        obs, _ = env.reset(seed=seed, options={"prompts": list(chunk)})
        state, done = policy.initial_state(n), np.zeros(n, dtype=bool)
        texts, ids = [""] * n, [[] for _ in range(n)]
        while not done.all():
            tensors = {k: torch.as_tensor(v) for k, v in obs.items()}
            action, _, _, state = policy.act(tensors, state)
            for i in np.flatnonzero(~done):
                ids[i].append(int(action[i]))
            obs, _, terminated, truncated, info = env.step(action.numpy())
            for i in np.flatnonzero(info.get("_response", np.zeros(n, dtype=bool))):
                texts[i] = info["response"][i]
            done |= terminated | truncated
            state = policy.reset_state(state, done)
        responses.extend(texts)
        tokens.extend(ids)
    return responses, tokens


def sample_responses(
    model_path: str | os.PathLike | None,
    prompts: list[str],
    seed: int,
    batch_size: int = 256,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    max_prompt_tokens: int = 32,
) -> list[str]:
    """One sampled response per prompt from the causal LM at ``model_path`` (None: the default
    SFT model)."""
    from agents.policies.lm import LMPolicy

    policy = LMPolicy.from_pretrained(
        model_path, temperature=temperature, max_sequence_length=max_prompt_tokens + max_new_tokens
    )
    return rollout_responses(policy, prompts, seed, batch_size, max_new_tokens, max_prompt_tokens)[
        0
    ]


def sequence_log_probs(
    model: Any, tokenizer: Any, prompts: list[str], tokens: list[list[int]]
) -> np.ndarray:
    """Sum of log p(response tokens | prompt) under a causal LM (teacher forcing, temperature 1),
    one value per row (B,)."""
    import torch

    from textenv.tokenizer import encode_text

    rows = [encode_text(tokenizer, p) + t for p, t in zip(prompts, tokens)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    target = torch.zeros((len(rows), width), dtype=torch.bool)  # response tokens
    for i, (r, t) in enumerate(zip(rows, tokens)):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        target[i, len(r) - len(t) : len(r)] = True
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
    return (logp * target[:, 1:]).sum(1).numpy()


def env_lengths(env_kwargs: dict[str, Any]) -> dict[str, int]:
    """``max_prompt_tokens`` and ``max_new_tokens`` of a run's ``env.kwargs`` (textenv's defaults
    where absent): evaluate a policy at the lengths it was trained with."""
    from textenv.env import TextEnvArgs

    keys = ("max_prompt_tokens", "max_new_tokens")
    args = TextEnvArgs(**{k: env_kwargs[k] for k in keys if k in env_kwargs})
    return {k: getattr(args, k) for k in keys}


def evaluate_gold_proxy(
    policy: Any,
    prompts: list[str],
    rm_path: str | os.PathLike | None = None,
    reference: Any = None,
    seed: int = 0,
    *,
    max_new_tokens: int,
    max_prompt_tokens: int,
) -> dict[str, float]:
    """Sample one response per prompt; mean gold reward, mean proxy (reward-model) score if
    ``rm_path`` is given, and the KL to ``reference`` (an LM, k1 estimate of the sequence KL
    ``E[log pi(y) - log ref(y)]``) if given. The lengths have no default: pass the run's own
    (``env_lengths(cfg.env.kwargs)``)."""
    from textenv import make_reward_fn

    responses, tokens = rollout_responses(
        policy, prompts, seed, max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens
    )
    out = {
        "gold": float(np.mean([gold_score(p, r) for p, r in zip(prompts, responses)])),
        "response_chars": float(np.mean([len(r) for r in responses])),
        "vowel_share": float(np.mean([vowel_share(r) for r in responses])),
    }
    if rm_path is not None:
        proxy = make_reward_fn({"name": "reward_model", "path": str(rm_path)})
        eos = policy.tokenizer.eos_token_id
        ended = [bool(t) and t[-1] == eos for t in tokens]  # a cut response is scored as such
        out["proxy"] = float(np.mean(proxy(prompts, responses, ended=ended)))
    if reference is not None:
        logp = sequence_log_probs(policy.model, policy.tokenizer, prompts, tokens)
        logp_ref = sequence_log_probs(reference, policy.tokenizer, prompts, tokens)
        out["kl"] = float(np.mean(logp - logp_ref))
    return out


def make_pairs(
    prompts: list[str],
    first: list[str],
    second: list[str],
    noise: float,
    rng: np.random.Generator,
    min_margin: float = 0.0,
) -> list[dict]:
    """Label response pairs with the gold rule; flip each label with probability ``noise``.

    Pairs with an empty or identical responses, or a gold difference below ``min_margin``, are
    dropped (the JSONL form needs non-empty strings, and a tie has no label).
    """
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"label noise must be in [0, 0.5), got {noise!r}")
    if min_margin < 0:
        raise ValueError(f"min_margin must be >= 0, got {min_margin!r}")
    records = []
    flips = rng.random(len(prompts)) < noise  # drawn for every prompt: stable under filtering
    for prompt, a, b, flip in zip(prompts, first, second, flips):
        ga, gb = gold_score(prompt, a), gold_score(prompt, b)
        if not a or not b or a == b or abs(ga - gb) < max(min_margin, 1e-12):
            continue
        (chosen, gc), (rejected, gr) = sorted([(a, ga), (b, gb)], key=lambda x: -x[1])
        if flip:
            (chosen, gc), (rejected, gr) = (rejected, gr), (chosen, gc)
        records.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "gold_chosen": round(gc, 6),
                "gold_rejected": round(gr, 6),
                "flipped": bool(flip),
            }
        )
    return records


def generate_preferences(
    out_dir: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    task: str = "reverse",
    n_train: int = 4000,
    n_test: int = 500,
    noise: float = 0.1,
    min_margin: float = 0.05,
    seed: int = 0,
    temperature: float = 1.0,
    n_validation: int = 0,
) -> dict[str, Any]:
    """Write ``<task>_train.jsonl`` (train prompts, label noise), ``<task>_test.jsonl`` (test-split
    prompts, noise-free gold labels) and, when ``n_validation > 0``, ``<task>_validation.jsonl``
    (validation-split prompts, noise-free: the file to choose reward-model settings on) to
    ``out_dir``; return a summary dict. The validation file is drawn last, so the train and test
    files do not depend on ``n_validation``."""
    from textenv import make_task

    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if n < 1:
            raise ValueError(f"{name} must be >= 1, got {n!r}")
    if n_validation < 0:
        raise ValueError(f"n_validation must be >= 0 (0: no validation file), got {n_validation!r}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    summary: dict[str, Any] = {
        "task": task, "noise": noise, "min_margin": min_margin, "seed": seed,
        "model_path": str(model_path) if model_path is not None else None,
    }  # fmt: skip
    splits = [("train", n_train, noise), ("test", n_test, 0.0)]
    if n_validation:
        splits.append(("validation", n_validation, 0.0))
    # sampling seeds: train 2s and 2s+1000, test 2s+1 and 2s+1001, validation 2s+2000 and 2s+3000
    split_seeds = {"train": seed * 2, "test": seed * 2 + 1, "validation": seed * 2 + 2000}
    for split, n, split_noise in splits:
        prompts = [r["prompt"] for r in make_task(task, split, n=n, seed=seed)]
        split_seed = split_seeds[split]
        first = sample_responses(model_path, prompts, seed=split_seed, temperature=temperature)
        second = sample_responses(
            model_path, prompts, seed=split_seed + 1000, temperature=temperature
        )
        records = make_pairs(prompts, first, second, split_noise, rng, min_margin)
        path = write_jsonl(out_dir / f"{task}_{split}.jsonl", records)
        summary[split] = {
            "file": str(path),
            "prompts": n,
            "pairs": len(records),
            "flipped": sum(r["flipped"] for r in records),
            "mean_gold_sampled": round(
                float(np.mean([gold_score(p, r) for p, r in zip(prompts, first)])), 4
            ),
        }
    return summary


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m agents.rlhf.preferences",
        description="Sample response pairs from the SFT model and label them with the gold rule.",
    )
    parser.add_argument("--out", default="data/preferences", help="output folder")
    parser.add_argument("--model", default=None, help="SFT model folder (default: tiny-sft)")
    parser.add_argument("--task", default="reverse", choices=sorted(STRING_OPS) + ["mixed"])
    parser.add_argument("--n-train", type=int, default=4000, help="train prompts (2 samples each)")
    parser.add_argument("--n-test", type=int, default=500, help="test-split prompts")
    parser.add_argument(
        "--n-validation", type=int, default=0,
        help="validation-split prompts (0: no <task>_validation.jsonl)",
    )  # fmt: skip
    parser.add_argument("--noise", type=float, default=0.1, help="label-flip rate (train only)")
    parser.add_argument("--min-margin", type=float, default=0.05, help="drop closer gold pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    summary = generate_preferences(
        args.out, args.model, args.task, args.n_train, args.n_test, args.noise,
        args.min_margin, args.seed, n_validation=args.n_validation,
    )  # fmt: skip
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    cli()
