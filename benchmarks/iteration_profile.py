"""Where the time of one GRPO (or PPO) iteration goes, on the work of benchmarks/vs_trl.py.

    python benchmarks/iteration_profile.py [--model b] [--estimator grpo] [--dtype auto]
                                           [--iters 4] [--threads 1]

Builds our side of benchmarks/vs_trl.py (a random GPT-2 "a", "b" or "small" with the byte
tokenizer; 16 prompts x 4 completions, 32 new tokens, KL to the reference, one optimizer step)
and wraps the calls an iteration is made of with wall-clock timers:

- generation: `policy.act`, one call per token (the KV-cached forward and the sampling);
- env step: the vector env's `step` (token bookkeeping, and the reward at each episode's end);
- the rest of the rollout loop (observation tensors, buffer writes, Python);
- reference pass + KL: `apply_kl_penalty` (the frozen reference's forward over the episodes);
- advantages: `outcome_advantages` / GAE;
- update forward: `policy.evaluate` inside the update, backward: `Tensor.backward`,
  optimizer: the optimizer's `step` (and the gradient clipping around it is in "other");
- other: whatever the iteration spends outside those (loss arithmetic, logging, Python).

The timers add a `perf_counter` pair per call (~1 us): nothing next to a forward pass. Prints
seconds per iteration and the share of each part, the mean over `--iters` timed iterations after
one warm-up iteration. Times depend on the machine's load; the shares much less.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's code, and vs_trl.py

import vs_trl  # noqa: E402

SECONDS: dict[str, float] = defaultdict(float)


def timed(fn, part: str):  # noqa: ANN001, ANN201 (wraps any callable)
    """`fn`, adding its wall-clock seconds to SECONDS[part] (not counting nested calls twice:
    parts are disjoint calls)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[part] += time.perf_counter() - t0

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(vs_trl.MODELS), default="b")
    parser.add_argument("--estimator", choices=["grpo", "gae"], default="grpo")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import agents.run.trainer as trainer_module

    with tempfile.TemporaryDirectory() as tmp:
        folder = vs_trl.save_model(Path(tmp) / args.model, *vs_trl.MODELS[args.model])
        model = vs_trl.build_ours(folder, args.dtype, args.estimator)
        trainer = model.trainer
        per = trainer.steps_per_iteration
        model.learn(per)  # warm-up: allocations, first-call costs
        policy, env, optimizer = trainer.policy, trainer.env, trainer.ppo.optimizer
        policy.act = timed(policy.act, "generation (policy.act)")
        env.step = timed(env.step, "env step")
        policy.evaluate = timed(policy.evaluate, "update forward (policy.evaluate)")
        optimizer.step = timed(optimizer.step, "optimizer step")
        torch.Tensor.backward = timed(torch.Tensor.backward, "backward")
        trainer_module.apply_kl_penalty = timed(
            trainer_module.apply_kl_penalty, "reference pass + KL"
        )
        trainer_module.outcome_advantages = timed(trainer_module.outcome_advantages, "advantages")
        trainer.buffer.compute_gae = timed(trainer.buffer.compute_gae, "advantages")
        rollout0 = trainer.phase_seconds["rollout"]
        t0 = time.perf_counter()
        model.learn(per * args.iters)
        total = (time.perf_counter() - t0) / args.iters
        rollout_s = (trainer.phase_seconds["rollout"] - rollout0) / args.iters
    parts = {k: v / args.iters for k, v in SECONDS.items()}
    in_rollout = parts["generation (policy.act)"] + parts["env step"]
    parts["rollout loop, other (tensors, buffer, Python)"] = max(rollout_s - in_rollout, 0.0)
    parts["other (loss, clipping, logging, Python)"] = max(total - sum(parts.values()), 0.0)
    print(f"model {args.model} ({sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M "
          f"parameters), {args.estimator}, dtype {trainer.dtype}, {args.threads} thread(s), "
          f"torch {torch.__version__}: {total:.3f} s per iteration\n")  # fmt: skip
    print("| part | s / iteration | share |")
    print("|---|---|---|")
    for name, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {sec:.3f} | {sec / total:.0%} |")
    tokens = vs_trl.PROMPTS * vs_trl.GROUP * vs_trl.NEW_TOKENS
    gen = parts["generation (policy.act)"]
    print(f"\ngeneration: {gen / vs_trl.NEW_TOKENS * 1e3:.1f} ms per token step of "
          f"{vs_trl.PROMPTS * vs_trl.GROUP} sequences ({tokens / gen:.0f} tokens/s)")  # fmt: skip


if __name__ == "__main__":
    main()
