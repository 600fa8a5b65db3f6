"""The programs the data-parallel tests (test_distributed.py) run under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py \
        equivalence OUT_DIR CASES.json

`collectives`: `Distributed`'s collectives on rank-dependent inputs (CASES.json unused).

`slow_eval`: a short CartPole run (CASES.json: its config) in a process group whose collectives
time out after SLOW_EVAL_TIMEOUT_S, with every evaluation made longer than that timeout; rank 0
writes OUT_DIR/slow_eval.json with the run's summary.

`equivalence`: for each case (a config dict), every rank collects the SAME 1-rank rollout of all
`env.num_envs` rows (same seed, same initial weights), keeps the rows it owns, and runs one
training iteration through a Trainer of this world size (score normalization, KL penalty and
controller, GAE, the PPO update). Rank 0 writes the weights and metrics to OUT_DIR/<case>.*; the
test compares them with the same iteration at world size 1 (`one_iteration` in-process).

Importing this module also registers `RaisesOnRank1-v0`: CartPole that raises on rank 1 during
PPO iteration 3 (the failure test runs it as `dist_worker:RaisesOnRank1-v0`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

FAIL_AT_ITERATION = 3
SLOW_EVAL_TIMEOUT_S, SLOW_EVAL_S = 2.0, 3.0


class RaisesOnRank1(CartPoleEnv):
    """CartPole that raises in rank 1's process once `n_steps * 2` steps are done (iteration 3
    of a run with ppo.n_steps = n_steps)."""

    def __init__(self, n_steps: int = 8, **kwargs: Any):
        super().__init__(**kwargs)
        self.limit = n_steps * (FAIL_AT_ITERATION - 1)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if os.environ.get("RANK") == "1" and self.steps > self.limit:
            raise RuntimeError(f"rank 1 fails on purpose at PPO iteration {FAIL_AT_ITERATION}")
        return super().step(action)


gym.register("RaisesOnRank1-v0", entry_point=RaisesOnRank1, max_episode_steps=500)


def one_iteration(cfg_dict: dict, dist: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One training iteration at `dist`'s world size on the 1-rank rollout (see module doc)."""
    from agents.core.buffer import RolloutBuffer, map_structure
    from agents.core.distributed import RowShard
    from agents.core.rollout import EpisodeLog, RolloutCollector
    from agents.run.config import Config
    from agents.run.envs import make_train_env
    from agents.run.trainer import Trainer, seed_everything

    cfg = Config.model_validate(cfg_dict)
    trainer = Trainer(cfg, dist=dist)
    local = trainer.buffer
    if local.shard is None:  # world size 1: the same global permutations as the ranks draw
        local.shard = RowShard(0, cfg.env.num_envs, torch.Generator().manual_seed(cfg.seed))
    seed_everything(cfg.seed)  # the same rollout on every rank and at world size 1
    env = make_train_env(cfg)
    full = RolloutBuffer(
        cfg.ppo.n_steps, cfg.env.num_envs, env.single_observation_space,
        env.single_action_space,
    )  # fmt: skip
    RolloutCollector(env, trainer.policy, full, seed=cfg.seed).collect()
    env.close()
    rows = slice(local.shard.start, local.shard.start + local.num_envs)

    def fake_collect() -> EpisodeLog:
        map_structure(lambda d, s: d.copy_(s[:, rows]), local.obs, full.obs)
        map_structure(lambda d, s: d.copy_(s[:, rows]), local.actions, full.actions)
        for name in ("log_probs", "values", "rewards", "terminated", "truncated", "valid",
                     "episode_starts", "truncated_mass"):  # fmt: skip
            getattr(local, name).copy_(getattr(full, name)[:, rows])
        local.has_truncated_mass = full.has_truncated_mass
        local.final_values.copy_(full.final_values[:, rows])
        local.has_final_value.copy_(full.has_final_value[:, rows])
        local.last_value.copy_(full.last_value[rows])
        return EpisodeLog()

    trainer.collector.collect = fake_collect
    metrics = trainer.iterate()
    metrics["kl_beta_after"] = trainer.kl_controller.beta
    weights = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    trainer.close()
    return weights, {k: v for k, v in metrics.items() if not k.startswith("time/")}


def resume(cfg_dict: dict, out: Path, dist: Any) -> None:
    """Train `cfg_dict` uninterrupted into out/whole; train it into out/part, stopping (with a
    checkpoint) halfway, then resume it in a new Trainer to the end."""
    from agents.run.config import Config
    from agents.run.trainer import Trainer

    cfg = Config.model_validate(cfg_dict)
    for name in ("whole", "part"):
        (out / name).mkdir(parents=True, exist_ok=True)
    dist.barrier()
    Trainer(cfg, out / "whole", dist=dist).learn()
    half = cfg.total_timesteps // 2
    Trainer(cfg, out / "part", dist=dist).learn(stop_at=half)
    Trainer(cfg, out / "part", resume=True, dist=dist).learn()


def slow_eval(cfg_dict: dict, out: Path, dist: Any) -> None:
    """Train `cfg_dict` with each evaluation SLOW_EVAL_S seconds longer than it takes, more than
    the process group's collective timeout; rank 0 writes the summary."""
    import time

    from agents.run import trainer as trainer_module
    from agents.run.config import Config

    evaluate = trainer_module.run_evaluation

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(SLOW_EVAL_S)
        return evaluate(*args, **kwargs)

    trainer_module.run_evaluation = slow
    run_dir = out / "run"
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    summary = trainer_module.Trainer(Config.model_validate(cfg_dict), run_dir, dist=dist).learn()
    if dist.is_main:
        (out / "slow_eval.json").write_text(json.dumps(summary))


def collectives(out: Path, dist: Any) -> None:
    """Rank-dependent inputs to `Distributed`'s collectives; rank 0 writes what it got back."""
    r = dist.rank
    lists = {"a": [r, r + 0.5], "only_rank_0": [3.25] * (r == 0), "empty": []}
    if r == 1:
        lists["only_rank_1"] = [7.0, -1.0, 1e300]
    gathered = dist.gather_lists(lists)
    pending = dist.sum_async(torch.tensor([1.0, r]))
    result = {
        "gather_lists": gathered,
        "gather_lists_list": list(gathered),  # key order
        "sum_async": pending.wait().tolist(),
        "gather_floats": dist.gather_floats([r] * (r + 1)),
    }
    if dist.is_main:
        (out / "collectives.json").write_text(json.dumps(result))


def main(argv: list[str]) -> None:
    from safetensors.torch import save_file

    from agents.core.distributed import init_distributed

    mode, out, cases_file = argv
    torch.set_num_threads(1)
    timeout_s = SLOW_EVAL_TIMEOUT_S if mode == "slow_eval" else 120
    dist = init_distributed("cpu", timeout_s=timeout_s)
    modes = ("equivalence", "resume", "collectives", "slow_eval")
    if mode not in modes:
        raise ValueError(f"mode must be one of {list(modes)}, got {mode!r}")
    if mode == "collectives":
        collectives(Path(out), dist)
        dist.close()
        return
    cases = json.loads(Path(cases_file).read_text())
    if mode == "resume":
        resume(cases, Path(out), dist)
        dist.close()
        return
    if mode == "slow_eval":
        slow_eval(cases, Path(out), dist)
        dist.close()
        return
    for name, cfg in cases.items():
        weights, metrics = one_iteration(cfg, dist)
        if dist.is_main:
            save_file({k: v.contiguous() for k, v in weights.items()}, f"{out}/{name}.safetensors")
            Path(f"{out}/{name}.json").write_text(json.dumps(metrics))
    dist.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
