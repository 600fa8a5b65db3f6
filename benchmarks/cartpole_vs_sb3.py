"""CartPole-v1, 100k steps, zoo hyperparameters: our PPO vs SB3's PPO, alternately in one process.

Both use 1 torch thread and the same hyperparameters (configs/cartpole.yaml). Wall-clock is the
training call only (our `Trainer.learn(log=False)` vs SB3's `model.learn`), after construction;
each agent's eval return is the mean of 10 deterministic episodes on the same eval env seeds.

    python benchmarks/cartpole_vs_sb3.py [--rounds 3] [--steps 100000]
    python benchmarks/cartpole_vs_sb3.py --ours-only --rounds 10   # learning check over 10 seeds
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from agents.run.compare import SB3Adapter, sb3_model
from agents.run.config import load_config, step_budget
from agents.run.envs import make_env
from agents.run.evaluation import evaluate_policy
from agents.run.trainer import Trainer


def eval_return(policy, cfg) -> float:
    env = make_env(cfg.env.id, cfg.env.num_envs, cfg.env.vectorization)
    log = evaluate_policy(policy, env, cfg.eval.episodes, True, seed=10_000 + cfg.seed)
    env.close()
    return float(np.mean(log.returns))


def run_ours(cfg) -> tuple[float, float]:
    trainer = Trainer(cfg)
    start = time.perf_counter()
    trainer.learn(log=False)
    wall = time.perf_counter() - start
    phases = trainer.phase_seconds
    print(f"  ours: rollout {phases['rollout']:.2f}s, update {phases['update']:.2f}s", flush=True)
    return wall, eval_return(trainer.policy, cfg)


def run_sb3(cfg) -> tuple[float, float]:
    from stable_baselines3.common.env_util import make_vec_env

    torch.manual_seed(cfg.seed)
    env = make_vec_env(cfg.env.id, n_envs=cfg.env.num_envs, seed=cfg.seed)
    model = sb3_model(cfg, env)
    start = time.perf_counter()
    model.learn(step_budget(cfg))
    wall = time.perf_counter() - start
    return wall, eval_return(SB3Adapter(model), cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--config", default="configs/cartpole.yaml")
    parser.add_argument("--ours-only", action="store_true", help="only our agent, seeds 1..rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.ours_only:
        results = []
        for seed in range(1, args.rounds + 1):
            cfg = load_config(
                args.config, [f"total_timesteps={args.steps}", f"seed={seed}", "run.progress=false"]
            )
            wall, ret = run_ours(cfg)
            results.append(ret)
            print(f"seed {seed}: ours {wall:6.2f}s eval {ret:6.1f}", flush=True)
        solved = sum(r >= 475 for r in results)
        print(f"eval mean return >= 475 on {solved} of {len(results)} seeds")
        return
    ratios = []
    for round_ in range(args.rounds):
        cfg = load_config(
            args.config,
            [f"total_timesteps={args.steps}", f"seed={round_ + 1}", "run.progress=false"],
        )
        ours_wall, ours_eval = run_ours(cfg)
        sb3_wall, sb3_eval = run_sb3(cfg)
        ratios.append(ours_wall / sb3_wall)
        print(
            f"round {round_ + 1}: ours {ours_wall:6.2f}s eval {ours_eval:6.1f} | "
            f"sb3 {sb3_wall:6.2f}s eval {sb3_eval:6.1f} | ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(f"median wall-clock ratio ours/SB3: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
