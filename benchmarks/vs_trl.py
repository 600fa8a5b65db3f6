"""Our GRPO iteration against TRL's `GRPOTrainer` on the same work, and our PPO iteration.

    pip install -e ".[bench]"        # TRL (optional: without it the TRL rows are skipped)
    python benchmarks/vs_trl.py [--models a,b,small] [--rounds 3] [--threads 1] [--iters 4]

The work, the same on both sides: a randomly initialised GPT-2 with textenv's byte tokenizer
(saved to a temp folder, no hub), 16 prompts of the `reverse` task (at most 16 tokens), 4
completions each (64), up to 32 new tokens at temperature 1, the edit-distance reward, one
optimizer step on the 64 completions, KL to the frozen reference with beta 0.04 (in the loss, k3,
as TRL's GRPO does). Models: "a" 2 layers x 128 (0.45M parameters), "b" 4 x 256 (3.3M), "small"
GPT-2 small's shape 12 x 768 (85M; fewer iterations).

Each case runs in its own subprocess (`--child`), which builds its trainer, runs `--warmup`
iterations, then times `--iters` iterations and prints the median seconds per iteration, the
completion tokens it generated and its peak RSS (`ru_maxrss`). The cases alternate within each
round (ours, TRL, ours, TRL, ...) so that the machine's drift hits both sides alike; the printed
ratio is ours / TRL within each round, then the median over rounds (lower is better for us).

Dtypes: each side at its default (ours: `run.dtype: auto`'s choice for this machine and model;
TRL: `bf16=True`) and both at matched float32 and bfloat16. The FLOP count of one iteration
(generation, reference forward, policy forward + backward: 2 FLOP per parameter per token
forward, 4 backward, plus attention) is divided by this core's measured matmul throughput in each
dtype (a 1024-square matmul at the same thread count), the machine's limit for the iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's code, not another installed copy

MODELS = {"a": (2, 128, 4), "b": (4, 256, 4), "small": (12, 768, 12)}  # layers, width, heads
PROMPTS, GROUP, PROMPT_TOKENS, NEW_TOKENS, BETA, LR = 16, 4, 16, 32, 0.04, 1e-5


def save_model(folder: Path, layers: int, width: int, heads: int) -> Path:
    """A random GPT-2 of the given shape with textenv's byte tokenizer, saved to `folder`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from textenv import default_tokenizer

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=259, n_positions=128, n_embd=width, n_layer=layers, n_head=heads,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer = default_tokenizer()
    tokenizer.padding_side = "left"  # TRL pads prompts on the left for generation
    tokenizer.save_pretrained(folder)
    return folder


def prompts() -> list[dict[str, str]]:
    """16 `reverse` prompts of at most 16 tokens (byte tokenizer: one token per character)."""
    from textenv.tasks import make_task

    rows = [r for r in make_task("reverse", "train", 200, seed=0) if len(r["prompt"]) <= 16]
    return rows[:PROMPTS]


def flops(params: int, layers: int, width: int) -> dict[str, float]:
    """FLOPs of one iteration: generation (a KV-cached forward per new token), the reference
    forward and the policy's forward + backward over prompt + completion, 64 sequences."""
    n, t, p = PROMPTS * GROUP, NEW_TOKENS, PROMPT_TOKENS

    def fwd(tokens: int, context: int) -> float:  # noqa: E306 (weights + attention scores)
        return 2 * params * tokens + 4 * layers * width * tokens * context

    gen = n * sum(fwd(1, p + i) for i in range(t))
    full = n * fwd(p + t, (p + t) / 2)
    return {"generation": gen, "reference": full, "forward_backward": 3 * full,
            "total": gen + 4 * full}  # fmt: skip


def matmul_peak(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a 1024-square matmul in `dtype` on this process's threads (the roofline)."""
    a = torch.randn(1024, 1024, dtype=dtype)
    b = torch.randn(1024, 1024, dtype=dtype)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------- children


def build_ours(model: Path, dtype: str, estimator: str) -> Any:
    """Our side: an agents.PPO on TextRLHF-v0 doing the work above (`estimator` "gae": our PPO
    with a separate critic and the KL in the reward)."""
    import agents

    data = prompts()
    envs = PROMPTS * GROUP
    critic_free = estimator != "gae"
    kwargs = {"prompts": data, "reward_fn": "edit_distance", "max_prompt_tokens": PROMPT_TOKENS,
              "max_new_tokens": NEW_TOKENS}  # fmt: skip
    return agents.PPO(
        "lm", "textenv:TextRLHF-v0", n_envs=envs, seed=0, model_path=str(model),
        env_kwargs=kwargs, n_steps=NEW_TOKENS, batch_size=envs * NEW_TOKENS, n_epochs=1,
        learning_rate=LR, gamma=1.0, gae_lambda=1.0 if critic_free else 0.95,
        vf_coef=0.0 if critic_free else 0.5, normalize_advantage=not critic_free,
        advantage={"estimator": estimator, "group_size": GROUP if critic_free else 1},
        kl={"enabled": True, "beta": BETA, "estimator": "k3" if critic_free else "k1",
            "placement": "loss" if critic_free else "reward"},
        run={"dtype": dtype, "torch_threads": torch.get_num_threads()},
        **({"critic": "separate"} if not critic_free else {}),
    )  # fmt: skip


def ours(model: Path, dtype: str, estimator: str, warmup: int, iters: int) -> dict:
    """Our iteration, timed by a per-iteration callback."""
    model_ = build_ours(model, dtype, estimator)
    stamps: list[float] = []

    def tick(local: dict) -> bool:
        stamps.append(time.perf_counter())
        return True

    per = model_.trainer.steps_per_iteration
    model_.learn(per * warmup)
    t0 = time.perf_counter()
    model_.learn(per * iters, callback=tick)
    times = [b - a for a, b in zip([t0, *stamps[:-1]], stamps)]
    return {"seconds": statistics.median(times), "times": times, "dtype": model_.trainer.dtype}


def trl(model: Path, dtype: str, warmup: int, iters: int) -> dict:
    """TRL's GRPOTrainer on the same work, timed by a per-step TrainerCallback."""
    from datasets import Dataset
    from rapidfuzz.distance import Levenshtein
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    data = prompts()
    reference = {r["prompt"]: r["reference"] for r in data}

    def edit_distance(prompts: list[str], completions: list[str], **_: object) -> list[float]:
        return [Levenshtein.normalized_similarity(c, reference[p])
                for p, c in zip(prompts, completions)]  # fmt: skip

    class Stamps(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            self.stamps.append(time.perf_counter())

    stamps = Stamps()
    dataset = Dataset.from_dict({"prompt": [r["prompt"] for r in data] * (warmup + iters + 1)})
    precision = {} if dtype == "default" else {"bf16": dtype == "bfloat16"}
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, per_device_train_batch_size=PROMPTS * GROUP,
            num_generations=GROUP, max_completion_length=NEW_TOKENS, temperature=1.0,
            beta=BETA, learning_rate=LR, max_steps=warmup + iters, logging_steps=1000,
            save_strategy="no", report_to="none", seed=0, shuffle_dataset=False,
            dataloader_num_workers=0, disable_tqdm=True, **precision,
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model),
            processing_class=AutoTokenizer.from_pretrained(model),
            reward_funcs=edit_distance, args=config, train_dataset=dataset, callbacks=[stamps],
        )  # fmt: skip
        t0 = time.perf_counter()
        trainer.train()
        bf16 = bool(trainer.args.bf16)
    marks = [t0, *stamps.stamps]
    times = [b - a for a, b in zip(marks[:-1], marks[1:])][warmup:]
    return {"seconds": statistics.median(times), "times": times,
            "dtype": "bfloat16" if bf16 else "float32"}  # fmt: skip


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.side == "trl":
        result = trl(args.model, args.dtype, args.warmup, args.iters)
    else:
        result = ours(args.model, args.dtype, args.side, args.warmup, args.iters)
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_child(side: str, model: Path, dtype: str, threads: int, warmup: int, iters: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--child", side, "--model", str(model), "--dtype", dtype,
               "--threads", str(threads), "--warmup", str(warmup), "--iters", str(iters)]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{side} {dtype} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


# ------------------------------------------------------------------------------- parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="a,b,small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=4, help="timed iterations (small: 1)")
    parser.add_argument("--no-trl", action="store_true", help="only our GRPO and PPO")
    parser.add_argument("--child", choices=["grpo", "gae", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.side = args.child
        child(args)
        return
    try:
        import trl  # noqa: F401

        have_trl = not args.no_trl
    except ImportError:
        have_trl = False
        print("TRL is not installed (pip install -e '.[bench]'): TRL rows skipped")
    torch.set_num_threads(args.threads)
    peak = {name: matmul_peak(dt) for name, dt in (("float32", torch.float32),
                                                   ("bfloat16", torch.bfloat16))}  # fmt: skip
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; matmul peak float32 "
          f"{peak['float32'] / 1e9:.0f} GFLOP/s, bfloat16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s")  # fmt: skip
    cases = [("ours GRPO, default", "grpo", "auto"), ("TRL GRPO, default", "trl", "default"),
             ("ours GRPO, float32", "grpo", "float32"), ("TRL GRPO, float32", "trl", "float32"),
             ("ours GRPO, bfloat16", "grpo", "bfloat16"), ("TRL GRPO, bfloat16", "trl", "bfloat16"),
             ("ours PPO, default", "gae", "auto")]  # fmt: skip
    cases = [c for c in cases if have_trl or c[1] != "trl"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            layers, width, heads = MODELS[name]
            folder = save_model(Path(tmp) / name, layers, width, heads)
            from transformers import AutoModelForCausalLM

            params = sum(
                p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters()
            )
            f = flops(params, layers, width)
            iters = 1 if name == "small" else args.iters
            results: dict[str, list[dict]] = {label: [] for label, _, _ in cases}
            for _ in range(args.rounds):
                for label, side, dtype in cases:
                    results[label].append(run_child(side, folder, dtype, args.threads,
                                                    args.warmup, iters))  # fmt: skip
            print(f"\n## model {name}: {layers} x {width}, {params / 1e6:.2f}M parameters; "
                  f"{f['total'] / 1e9:.1f} GFLOP per iteration (generation "
                  f"{f['generation'] / 1e9:.1f}, reference {f['reference'] / 1e9:.1f}, "
                  f"forward + backward {f['forward_backward'] / 1e9:.1f})\n")  # fmt: skip
            print(
                "| case | dtype | s / iteration (median over rounds) | x machine limit | peak RSS MiB |"
            )
            print("|---|---|---|---|---|")
            for label, _, _ in cases:
                rows = results[label]
                sec = statistics.median(r["seconds"] for r in rows)
                limit = (
                    f["total"] / peak["bfloat16" if "bfloat16" in rows[0]["dtype"] else "float32"]
                )
                print(f"| {label} | {rows[0]['dtype']} | {sec:.3f} | {sec / limit:.2f}x "
                      f"| {max(r['rss_mib'] for r in rows):.0f} |")  # fmt: skip
            pairs = [("default", "ours GRPO, default", "TRL GRPO, default"),
                     ("float32", "ours GRPO, float32", "TRL GRPO, float32"),
                     ("bfloat16", "ours GRPO, bfloat16", "TRL GRPO, bfloat16")]  # fmt: skip
            print("\n| ratio (time, lower is better for ours) | per round | median |")
            print("|---|---|---|")
            for dtype, a, b in pairs if have_trl else []:
                r = [x["seconds"] / y["seconds"] for x, y in zip(results[a], results[b])]
                print(f"| ours / TRL, {dtype} | {' / '.join(f'{v:.2f}' for v in r)} "
                      f"| **{statistics.median(r):.2f}x** |")  # fmt: skip
            r = [x["seconds"] / y["seconds"] for x, y in
                 zip(results["ours PPO, default"], results["ours GRPO, default"])]  # fmt: skip
            print(f"| our PPO / our GRPO, default | {' / '.join(f'{v:.2f}' for v in r)} "
                  f"| {statistics.median(r):.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
