"""LoRA vs full fine-tuning on a GPT-2-small-shaped model: memory, checkpoint size, speed.

    python benchmarks/lm_scale.py [--layers 12 --width 768 --heads 12] [--iterations 2]
                                  [--repeats 3] [--skip-speed]

The model: GPT-2 small's shape (12 layers, 768 wide, 12 heads; 85M parameters with the byte
vocabulary of 259 ids), random init, saved to a temp folder with textenv's byte tokenizer (no hub).

(1) Peak RSS of a PPO run, each in its own subprocess (`--child lora|full`): Trainer on
    TextRLHF-v0 (8 envs, 24 prompt + 16 new tokens, KL penalty on), `--iterations` PPO
    iterations, then one checkpoint. Full fine-tuning keeps a deep-copied frozen reference, Adam
    state and grads for every weight; LoRA (r 8, peft's default target modules) keeps the base
    once, frozen, and its reference is that base with the adapters off. Target: LoRA <= 0.5x.
(2) Checkpoint size (the `.safetensors` of that checkpoint: policy, optimizer, RNG and env state;
    the full run's also holds its reference). Target: LoRA <= 5% of full.
(3) Speed at this size, as benchmarks/lm_rollout.py measures it on the tiny model (same functions):
    rollout tokens/s (agent + env + reward) vs `model.generate`, and the PPO update (evaluate +
    loss + backward) vs a plain forward + backward, batch 16, 32 new tokens, for the full model
    and the LoRA one. Targets of the small model: >= 0.9 and >= 0.7.

Wall-clock numbers depend on the machine's load; every ratio is taken within one run with the two
sides interleaved (A, B, A, B, ...). Peak RSS is `ru_maxrss` of the child process (the parent's
imports and model building are not in it: each child builds its own model from the folder).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# this checkout's code (not another installed copy), and benchmarks/lm_rollout.py
sys.path[:0] = [str(HERE.parent), str(HERE)]


def save_model(folder: Path, layers: int, width: int, heads: int, positions: int) -> Path:
    """A random GPT-2 of the given shape with textenv's byte tokenizer, saved to `folder`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from textenv import default_tokenizer

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=259, n_positions=positions, n_embd=width, n_layer=layers, n_head=heads,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    default_tokenizer().save_pretrained(folder)
    return folder


def run_config(model: Path, root: Path, lora: bool, iterations: int) -> dict:
    envs, steps = 8, 16
    return {
        "name": "lora" if lora else "full",
        "seed": 0,
        "total_timesteps": envs * steps * iterations,
        "env": {
            "id": "textenv:TextRLHF-v0", "num_envs": envs, "vectorization": "vector_entry_point",
            "kwargs": {"prompts": "reverse", "max_prompt_tokens": 24, "max_new_tokens": steps},
        },
        "policy": {"type": "lm", "model_path": str(model),
                   "lora": {"r": 8, "alpha": 16} if lora else None},
        "ppo": {"n_steps": steps, "batch_size": envs * steps, "n_epochs": 1, "gamma": 1.0,
                "learning_rate": 1e-4},
        "kl": {"enabled": True, "beta": 0.05},
        "eval": {"episodes": 0},
        "run": {"root": str(root), "progress": False, "torch_threads": 1},
    }  # fmt: skip


def child(kind: str, model: Path, iterations: int) -> None:
    """One PPO run in this process; prints a JSON line with peak RSS and checkpoint size."""
    from agents.run.config import load_config
    from agents.run.rundir import new_run_dir
    from agents.run.trainer import Trainer

    with tempfile.TemporaryDirectory() as root:
        cfg = load_config(run_config(model, Path(root), kind == "lora", iterations))
        trainer = Trainer(cfg, new_run_dir(cfg, kind))
        for _ in range(iterations):
            trainer.iterate()
        path = trainer.save()
        size = path.with_suffix(".safetensors").stat().st_size
        trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
        trainer.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"kind": kind, "peak_rss_mib": peak_kib / 1024, "checkpoint_bytes": size,
                      "trainable_params": trainable}))  # fmt: skip


def measure_memory(model: Path, iterations: int) -> dict[str, dict]:
    results = {}
    for kind in ("full", "lora"):
        cmd = [sys.executable, __file__, "--child", kind, "--model", str(model),
               "--iterations", str(iterations)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{kind} run failed:\n{done.stderr[-3000:]}")
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def policy_without_eos(model: Path, lora: bool):
    """lm_rollout.no_eos_policy, optionally with LoRA adapters (r 8) on the same base."""
    import lm_rollout

    from agents.policies.lora import LoRAConfig

    return lm_rollout.no_eos_policy(model, lora=LoRAConfig() if lora else None)


def measure_speed(model: Path, repeats: int, batch: int = 16, new_tokens: int = 32) -> dict:
    import lm_rollout

    lm_rollout.PROMPT_TOKENS = 24
    results = {}
    for kind in ("full", "lora"):
        policy = policy_without_eos(model, kind == "lora")
        rollout, collector = lm_rollout.rollout_fn(policy, batch, new_tokens)
        generate = lm_rollout.generate_fn(policy, collector.runner.env, new_tokens)
        t = lm_rollout.interleaved_medians({"rollout": rollout, "generate": generate}, repeats)
        ppo_step, plain_step = lm_rollout.update_fns(policy, collector.buffer)
        u = lm_rollout.interleaved_medians({"ppo": ppo_step, "plain": plain_step}, repeats)
        tokens = batch * new_tokens
        results[kind] = {
            "rollout_tok_s": tokens / t["rollout"], "generate_tok_s": tokens / t["generate"],
            "rollout_ratio": t["generate"] / t["rollout"],
            "update_tok_s": tokens / u["ppo"], "plain_tok_s": tokens / u["plain"],
            "update_ratio": u["plain"] / u["ppo"],
        }  # fmt: skip
        collector.runner.env.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        child(args.child, Path(args.model), args.iterations)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = save_model(Path(tmp) / "model", args.layers, args.width, args.heads, 64)
        n = sum(p.numel() for p in __import__("safetensors.torch").torch.load_file(
            str(model / "model.safetensors")).values())  # fmt: skip
        print(f"GPT-2 shape: {args.layers} layers, {args.width} wide, {args.heads} heads, "
              f"{n / 1e6:.1f}M parameters, byte vocabulary; 1 torch thread")  # fmt: skip
        memory = measure_memory(model, args.iterations)
        full, lora = memory["full"], memory["lora"]
        print(f"\n(1) peak RSS, {args.iterations} PPO iterations + a checkpoint, own process")
        for kind, m in memory.items():
            print(f"  {kind:4s}: {m['peak_rss_mib']:8.0f} MiB  trainable {m['trainable_params']:,}")
        ratio = lora["peak_rss_mib"] / full["peak_rss_mib"]
        print(f"  LoRA / full: {ratio:.2f}  (target <= 0.5)")
        size = lora["checkpoint_bytes"] / full["checkpoint_bytes"]
        print("\n(2) checkpoint size")
        print(f"  full {full['checkpoint_bytes'] / 2**20:8.1f} MiB   "
              f"LoRA {lora['checkpoint_bytes'] / 2**20:6.2f} MiB   "
              f"ratio {100 * size:.2f}%  (target <= 5%)")  # fmt: skip
        if args.skip_speed:
            return
        print("\n(3) speed, batch 16, 32 new tokens (median of interleaved repeats)")
        for kind, s in measure_speed(model, args.repeats).items():
            print(f"  {kind:4s}: rollout {s['rollout_tok_s']:6.0f} tok/s vs generate "
                  f"{s['generate_tok_s']:6.0f}: {s['rollout_ratio']:.2f} (>= 0.9);  update "
                  f"{s['update_tok_s']:6.0f} tok/s vs plain {s['plain_tok_s']:6.0f}: "
                  f"{s['update_ratio']:.2f} (>= 0.7)")  # fmt: skip


if __name__ == "__main__":
    main()
