"""Our PPO vs Stable-Baselines3's PPO with the same hyperparameters (configs with an MLP policy):
each agent's training and final evaluation for one config and seed, SB3's model built from our
config, and the kept results that a re-run reuses (`<out>/results/`, named by a hash of the whole
config). stable-baselines3 is an optional extra, imported only here and only when asked for."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.core.buffer import map_structure
from agents.run.compare_report import write_report
from agents.run.compare_results import CompareFailed, FailedRun, RunResult, one_line
from agents.run.config import Config, load_config, step_budget, to_dict
from agents.run.envs import find_spec, make_eval_env
from agents.run.evaluation import evaluate_policy
from agents.run.files import atomic_write_text
from agents.run.jsonio import read_json
from agents.run.trainer import Trainer

# ----------------------------------------------------------------------------- our agent


def run_ours(cfg: Config) -> RunResult:
    trainer = Trainer(cfg)
    episodes: list[tuple[int, float]] = []
    start = time.perf_counter()
    while trainer.iteration < trainer.num_iterations:
        before = trainer.global_step
        trainer.iterate()
        log = trainer.last_episodes  # each episode at the env step where it ended
        episodes += [
            (before + (t + 1) * cfg.env.num_envs, r) for t, r in zip(log.rollout_steps, log.returns)
        ]
    wall = time.perf_counter() - start
    final = float(np.mean(trainer.evaluate().returns))
    trainer.close()
    return RunResult("ours", cfg.env.id, cfg.seed, final, wall, trainer.global_step, episodes)


# ----------------------------------------------------------------------------- SB3


class SB3Adapter:
    """Lets `evaluate_policy` drive an SB3 model, so both agents get the very same evaluation.
    Observations reach SB3 as numpy, in their space's structure (dicts and tuples pass through)."""

    def __init__(self, model: Any):
        self.model = model

    def initial_state(self, num_envs: int) -> None:
        return None

    def reset_state(self, state: None, done_mask: np.ndarray) -> None:
        return None

    def act(self, obs: Any, state: None, deterministic: bool = True):
        obs = map_structure(lambda x: x.cpu().numpy(), obs)
        action, _ = self.model.predict(obs, deterministic=deterministic)
        return torch.as_tensor(action), None, None, None

    def truncated_mass(self, state: None) -> None:
        return None  # SB3 samples from its whole distribution


def sb3_flattens(observation_space: gym.Space) -> bool:
    """SB3's MlpPolicy takes Box, Discrete, MultiDiscrete and MultiBinary observations (it
    one-hot encodes the discrete ones, as our encoder does) but no Tuple, and no nested Dict.
    For Tuple and Dict observations, SB3's env is wrapped in Gymnasium's FlattenObservation:
    the same one-hot / concatenated vector that our `ObsEncoder` computes, so both MLPs see the
    same input (`gymnasium.spaces.flatten` orders Dict keys as the space does, sorted unless the
    env built it from an OrderedDict)."""
    return isinstance(observation_space, (gym.spaces.Tuple, gym.spaces.Dict))


def require_sb3() -> None:
    """stable-baselines3 is an optional extra: say how to get it (or how to do without)."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        raise ValueError(
            "comparing against SB3 needs stable-baselines3, an optional extra: pip install -e "
            "'.[sb3]' (or pass --no-sb3 to compare our configs against each other)"
        ) from None


def sb3_model(cfg: Config, env: Any) -> Any:
    """An SB3 PPO with our config's hyperparameters (same network sizes, schedules, Adam eps)."""
    from stable_baselines3 import PPO as SB3PPO

    p = cfg.ppo

    def schedule(value: float, anneal: bool):
        return (lambda progress: value * progress) if anneal else value

    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[cfg.policy.activation]
    return SB3PPO(
        "MlpPolicy",
        env,
        n_steps=p.n_steps,
        batch_size=p.batch_size,
        n_epochs=p.n_epochs,
        gamma=p.gamma,
        gae_lambda=p.gae_lambda,
        learning_rate=schedule(p.learning_rate, p.anneal_lr),
        clip_range=schedule(p.clip_range, p.anneal_clip),
        clip_range_vf=p.clip_range_vf,
        normalize_advantage=p.normalize_advantage,
        ent_coef=p.ent_coef,
        vf_coef=p.vf_coef,
        max_grad_norm=p.max_grad_norm,
        target_kl=p.target_kl,
        policy_kwargs={
            "net_arch": {"pi": list(cfg.policy.hidden_sizes), "vf": list(cfg.policy.hidden_sizes)},
            "activation_fn": activation,
            "log_std_init": cfg.policy.log_std_init,
            "optimizer_kwargs": {"eps": p.adam_eps},
        },
        seed=cfg.seed,
        device="cpu",
        verbose=0,
    )


def run_sb3(cfg: Config) -> RunResult:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(cfg.run.torch_threads)

    def make_sb3_env(flatten: bool) -> Any:
        return make_vec_env(
            cfg.env.id,
            n_envs=cfg.env.num_envs,
            seed=cfg.seed,
            env_kwargs=cfg.env.kwargs,
            wrapper_class=gym.wrappers.FlattenObservation if flatten else None,
        )

    env = make_sb3_env(False)
    flatten = sb3_flattens(env.observation_space)
    if flatten:
        env.close()
        env = make_sb3_env(True)
    model = sb3_model(cfg, env)
    episodes: list[tuple[int, float]] = []

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    episodes.append((self.num_timesteps, float(info["episode"]["r"])))
            return True

    start = time.perf_counter()
    # our budget (given total_timesteps itself, SB3 would round up to one more rollout)
    model.learn(step_budget(cfg), callback=Record())
    wall = time.perf_counter() - start
    eval_env = make_eval_env(cfg)
    if flatten:
        eval_env = gym.wrappers.vector.FlattenObservation(eval_env)
    log = evaluate_policy(
        SB3Adapter(model), eval_env, cfg.eval.episodes, True, seed=10_000 + cfg.seed
    )
    eval_env.close()
    env.close()
    steps = model.num_timesteps
    final = float(np.mean(log.returns))
    return RunResult("sb3", cfg.env.id, cfg.seed, final, wall, steps, episodes, flatten)


def result_file(cfg: Config, agent: str, out: Path) -> Path:
    """Where the SB3 comparison keeps a finished (config, agent, seed) result: named by the env,
    agent, seed and a hash of the whole config, so that a re-run reuses the results of exactly
    these settings and never replaces another config's."""
    digest = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()
    env = cfg.env.id.replace(":", "_").replace("/", "_")
    return out / "results" / f"{env}_{agent}_s{cfg.seed}_{digest[:12]}.json"


def run_or_reuse(cfg: Config, agent: str, out: Path) -> tuple[RunResult, bool]:
    """(result, reused): the kept result of this config and agent from an earlier compare with
    the same `out`, or a new run's, which is kept (atomically) for the next one."""
    path = result_file(cfg, agent, out)
    if path.is_file():
        try:
            data = read_json(path)["result"]
            data["episodes"] = [tuple(e) for e in data["episodes"]]
            return RunResult(**data), True
        except (ValueError, KeyError, TypeError) as err:  # not ours any more: run it again
            print(
                f"textrlhf: warning: {path} cannot be read ({one_line(err)}); running it again",
                file=sys.stderr,
            )
    result = run_ours(cfg) if agent == "ours" else run_sb3(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"config": to_dict(cfg), "result": asdict(result)}) + "\n")
    return result, False


# ----------------------------------------------------------------------------- the comparison


def compare_with_sb3(
    configs: list[str],
    seeds: int,
    out: Path,
    overrides: list[str] | None,
    thresholds: dict[str, float] | None,
    agents: tuple[str, ...],
) -> Path:
    """`compare` of MLP configs (YAML paths or env ids): each agent of `agents` on each config
    for `seeds` seeds, then compare.md/json/png; `CompareFailed` names the runs that failed."""
    require_sb3()
    results: list[RunResult] = []
    failed: list[FailedRun] = []
    all_thresholds: dict[str, float | None] = {}
    for source in configs:
        base = load_config(
            source if source.endswith((".yaml", ".yml")) else {"env": {"id": source}}, overrides
        )
        spec = find_spec(base.env.id)
        all_thresholds[base.env.id] = (thresholds or {}).get(base.env.id, spec.reward_threshold)
        for seed in range(base.seed, base.seed + seeds):
            cfg = load_config(
                source if source.endswith((".yaml", ".yml")) else {"env": {"id": source}},
                [*(overrides or []), f"seed={seed}", "run.progress=false"],
            )
            for agent in agents:
                try:
                    result, reused = run_or_reuse(cfg, agent, out)
                except Exception as err:  # recorded, reported and raised below; the others run
                    failed.append(FailedRun(cfg.env.id, seed, one_line(err), agent))
                    print(
                        f"{cfg.env.id} {agent:4s} seed {seed}: FAILED: {failed[-1].error}",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                print(
                    f"{cfg.env.id} {agent:4s} seed {seed}: final return {result.final_return:8.1f}  "
                    f"wall {result.wall_time:6.1f}s  sps {result.sps:7.0f}"
                    + ("  (reused)" if reused else ""),
                    flush=True,
                )
                results.append(result)
    write_report(results, out, all_thresholds, failed)
    if failed:
        raise CompareFailed(out, failed, len(results) + len(failed))
    return out
