"""`textrlhf compare`: our PPO vs Stable-Baselines3's PPO with the same hyperparameters, or our
configs against each other (algorithms, settings, seeds).

**Ours vs SB3** (configs with an MLP policy, which SB3 can run too). For each config and seed, both agents train for the same `step_budget(cfg)` env steps; each
finished training episode is recorded as (env step, return). The table (`compare.md`) reports the
final deterministic eval return (mean ± std and median over seeds, same eval episodes for both),
whether the two means lie within one SB3 standard deviation of each other, the env steps at which
the mean return of the last 20 training episodes first reached the env's reward threshold, the
training wall-clock and SPS. `compare.png` shows the learning curves (mean and min-max band
over seeds). SB3 takes no Tuple (or nested Dict) observations: for Tuple and Dict observation
spaces its envs are wrapped in Gymnasium's `FlattenObservation`, and the table says so.

**Our configs against each other** (any config SB3 cannot run, e.g. LM policies, or with
`sb3=False`). Each (config, seed) is a full `textrlhf train` run in `<out>/runs/<name>_s<seed>`
(metrics.csv, TensorBoard, checkpoints), `jobs` of them at a time in separate processes.
`compare.md` has the final eval return (the config's own eval: held-out prompts for the text
configs) as mean ± std, median and min over seeds, the start, wall-clock, the KL to the reference
and the tokens (valid env steps) generated, per config and per seed; `compare.png` plots the
periodic eval return against wall-clock and against tokens generated.

**Failures and re-runs.** A run that fails does not stop the others: the report has what finished,
each failed run marked with its error (one line), and `compare` then raises `CompareFailed`
naming the failed runs (`textrlhf compare` exits 1). The same command again reuses what finished:
a run folder whose `summary.json` says `finished: true` and whose config.yaml is the same config
is read back, an unfinished one with a checkpoint is resumed (`--resume`), and a finished run of
another config is refused, never deleted. The SB3 comparison keeps each finished (config, agent,
seed) result in `<out>/results/`, named with a hash of the whole config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.core.buffer import map_structure
from agents.run.config import Config, flat_config, load_config, read_yaml, step_budget, to_dict
from agents.run.envs import find_spec, make_eval_env
from agents.run.evaluation import evaluate_policy
from agents.run.files import atomic_file, atomic_write_text
from agents.run.jsonio import read_json
from agents.run.rundir import RunFolderError
from agents.run.trainer import Trainer, train

WINDOW = 20  # training episodes in the moving average used for curves and thresholds


@dataclass
class FailedRun:
    """A compared run that did not finish, and why (its error on one line)."""

    label: str  # the config (ours vs ours) or the env id (ours vs SB3)
    seed: int
    error: str
    agent: str = "ours"


class CompareFailed(RuntimeError):
    """Some runs of a comparison failed; the report at `out` has the ones that finished."""

    def __init__(self, out: Path, failed: list[FailedRun], total: int):
        self.out, self.failed = out, failed
        which = "; ".join(f"{f.label} {f.agent} seed {f.seed} ({f.error})" for f in failed)
        super().__init__(
            f"{len(failed)} of {total} runs failed: {which}. {out / 'compare.md'} reports the "
            f"{total - len(failed)} that finished; the same command again retries the failed "
            "runs and reuses the finished ones"
        )


def one_line(err: BaseException, limit: int = 300) -> str:
    """An error as one line for a table cell: its type and message, whitespace collapsed."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(text: str) -> str:
    """`text` inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _legend(ax: Any) -> None:
    """A legend, when the axis has labelled lines (every run of it may have failed)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


@dataclass
class RunResult:
    agent: str
    env_id: str
    seed: int
    final_return: float
    wall_time: float
    steps: int
    episodes: list[tuple[int, float]] = field(default_factory=list)  # (env step, return)
    flattened_obs: bool = False  # SB3 saw the observations through FlattenObservation

    @property
    def sps(self) -> float:
        return self.steps / self.wall_time

    def steps_to(self, threshold: float | None) -> int | None:
        if threshold is None:
            return None
        returns = [r for _, r in self.episodes]
        for i in range(len(returns)):
            if i + 1 >= WINDOW and np.mean(returns[i + 1 - WINDOW : i + 1]) >= threshold:
                return self.episodes[i][0]
        return None


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


# ----------------------------------------------------------------------------- report


def curve(result: RunResult, grid: np.ndarray) -> np.ndarray:
    """Moving average of the last WINDOW training returns, sampled at `grid` env steps."""
    steps = np.array([s for s, _ in result.episodes])
    returns = np.array([r for _, r in result.episodes])
    out = np.full(len(grid), np.nan)
    for j, g in enumerate(grid):
        seen = returns[steps <= g]
        if len(seen):
            out[j] = seen[-WINDOW:].mean()
    return out


def write_report(
    results: list[RunResult],
    out: Path,
    thresholds: dict[str, float | None],
    failed: list[FailedRun] | None = None,
) -> None:
    """compare.md, compare.json and compare.png (each written atomically) of the finished runs;
    the `failed` ones are marked in the table with their error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    failed = failed or []
    env_ids = list(dict.fromkeys([r.env_id for r in results] + [f.label for f in failed]))
    lines = [
        "# Our PPO vs Stable-Baselines3 PPO (same hyperparameters)",
        "",
        *_failed_note(failed, len(results) + len(failed)),
        "Final return: deterministic eval, mean ± std and median over seeds. Steps to "
        f"threshold: first env step where the mean of the last {WINDOW} training episodes "
        "reached the threshold (median over the seeds that reached it, with the count). "
        "Wall-clock: training only, 1 torch thread, mean over seeds.",
        "",
    ]
    flattened = list(dict.fromkeys(r.env_id for r in results if r.flattened_obs))
    if flattened:
        lines += [
            f"SB3 cannot take these envs' Tuple / Dict observations: for {', '.join(flattened)} "
            "its env is wrapped in Gymnasium's FlattenObservation (one-hot Discrete parts, "
            "concatenated), the same vector our MLP's observation encoder computes.",
            "",
        ]
    lines += [
        "| env | agent | seeds | final return | median | steps to threshold | wall-clock (s) "
        "| SPS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    fig, axes = plt.subplots(1, len(env_ids), figsize=(5 * len(env_ids), 3.6), squeeze=False)
    for ax, env_id in zip(axes.flat, env_ids):
        threshold = thresholds.get(env_id)
        finals_of: dict[str, np.ndarray] = {}  # agent -> final returns over seeds
        # returns of order 1 (Blackjack, FrozenLake) need more than one decimal
        scale = max([abs(r.final_return) for r in results if r.env_id == env_id], default=0)
        d = 1 if scale >= 10 else 3
        for agent, color in (("ours", "C0"), ("sb3", "C1")):
            runs = [r for r in results if r.env_id == env_id and r.agent == agent]
            fails = [f for f in failed if f.label == env_id and f.agent == agent]
            seeds = f"{len(runs)}" + (f" ({len(fails)} failed)" if fails else "")
            if not runs:
                if fails:  # every seed failed: the first error in the table, all of them below
                    lines.append(
                        f"| {env_id} | {agent} | {seeds} | failed: {_cell(fails[0].error)} "
                        "| n/a | n/a | n/a | n/a |"
                    )
                continue
            finals = np.array([r.final_return for r in runs])
            reached = [s for s in (r.steps_to(threshold) for r in runs) if s is not None]
            to_thr = (
                "n/a (no threshold)" if threshold is None
                else f"{int(np.median(reached)):,} ({len(reached)}/{len(runs)})" if reached
                else f"not reached (0/{len(runs)})"
            )  # fmt: skip
            wall = np.mean([r.wall_time for r in runs])
            sps = np.mean([r.sps for r in runs])
            lines.append(
                f"| {env_id} | {agent} | {seeds} | {finals.mean():.{d}f} ± "
                f"{finals.std():.{d}f} | {np.median(finals):.{d}f} | {to_thr} | {wall:.1f} "
                f"| {sps:,.0f} |"
            )
            finals_of[agent] = finals
            grid = np.linspace(0, max(r.steps for r in runs), 100)
            curves = np.stack([curve(r, grid) for r in runs])  # (seeds, 100), nan before data
            seen = ~np.isnan(curves).all(0)  # grid points where some seed has episodes
            curves, grid = curves[:, seen], grid[seen]
            ax.plot(grid, np.nanmean(curves, axis=0), color=color, label=agent)
            ax.fill_between(
                grid, np.nanmin(curves, 0), np.nanmax(curves, 0), color=color, alpha=0.2
            )
        if len(finals_of) == 2:
            gap = finals_of["ours"].mean() - finals_of["sb3"].mean()
            sb3_std = finals_of["sb3"].std()
            within = "within" if abs(gap) <= sb3_std else "NOT within"
            verdicts.append(
                f"- {env_id}: mean final return ours - sb3 = {gap:+.{d}f}, {within} one SB3 "
                f"standard deviation ({sb3_std:.{d}f})"
            )
        if threshold is not None:
            ax.axhline(threshold, color="gray", ls="--", lw=0.8, label="threshold")
        ax.set_title(env_id)
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"return (last {WINDOW} episodes)")
        _legend(ax)
    fig.tight_layout()
    with atomic_file(out / "compare.png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    lines += ["", *verdicts] if verdicts else []
    lines += ["", "Thresholds: " + ", ".join(f"{k}: {v}" for k, v in thresholds.items()), ""]
    if failed:
        lines += ["Failed runs:", ""]
        lines += [f"- {f.label} {f.agent} seed {f.seed}: {f.error}" for f in failed] + [""]
    atomic_write_text(out / "compare.md", "\n".join(lines))
    raw = [
        {"agent": r.agent, "env_id": r.env_id, "seed": r.seed, "final_return": r.final_return,
         "wall_time": r.wall_time, "steps": r.steps, "steps_to_threshold": r.steps_to(thresholds.get(r.env_id))}
        for r in results
    ]  # fmt: skip
    atomic_write_text(out / "compare.json", json.dumps(raw, indent=1) + "\n")


def _failed_note(failed: list[FailedRun], total: int) -> list[str]:
    """The report's opening line about failed runs (none when every run finished)."""
    if not failed:
        return []
    return [
        f"**{len(failed)} of {total} runs failed** (marked 'failed', with their error); the same "
        "command again retries them and reuses the finished runs.",
        "",
    ]


# ----------------------------------------------------------------------------- our configs


@dataclass
class ConfigRun:
    """One finished `textrlhf train` run of a compared config, read back from its run folder."""

    label: str
    seed: int
    run_dir: str
    initial_return: float | None
    final_return: float
    wall_time: float
    transitions: int
    kl_to_ref: float | None  # at the last iteration
    # periodic evaluations: (seconds since the start, tokens generated so far, eval return)
    curve: list[tuple[float, float, float]] = field(default_factory=list)
    # the last evaluation's reward components (e.g. a learned proxy and a weight-0 gold reward)
    components: dict[str, float] = field(default_factory=dict)


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def read_run(run_dir: Path, label: str, seed: int) -> ConfigRun:
    """Summary and learning curve of a finished run folder."""
    import csv

    try:
        summary = read_json(run_dir / "summary.json")
    except ValueError as err:
        raise ValueError(f"{run_dir / 'summary.json'} cannot be read: {err}") from None
    curve: list[tuple[float, float, float]] = []
    transitions, kl = 0.0, None
    components: dict[str, float] = {}
    prefix = "eval/reward_components/"
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            transitions = _number(row.get("rollout/transitions")) or transitions
            kl = _number(row.get("kl/kl_to_ref")) if row.get("kl/kl_to_ref") else kl
            ret, elapsed = _number(row.get("eval/return")), _number(row.get("time/elapsed"))
            if ret is not None and elapsed is not None:
                curve.append((elapsed, transitions, ret))
                components = {
                    k.removeprefix(prefix): float(v)
                    for k, v in row.items()
                    if k.startswith(prefix) and v not in (None, "")
                }
    return ConfigRun(
        label, seed, str(run_dir), summary.get("initial_return"), summary["final_return"],
        summary["wall_time_s"], int(summary["transitions"]), kl, curve, components,
    )  # fmt: skip


def train_one(source: str, overrides: list[str], seed: int, root: str, label: str) -> ConfigRun:
    """Train `source` with `seed` into `<root>/<label>_s<seed>` and read the run back; a run
    folder there from an earlier compare is reused or resumed (`continue_run`). A top-level
    function, so that worker processes can run it."""
    cfg = load_config(
        source, [*overrides, f"seed={seed}", "run.progress=false", f"run.root={root}"]
    )
    name = f"{label}_s{seed}"
    run_dir = Path(root) / name
    if run_dir.exists() or run_dir.is_symlink():
        run_dir = continue_run(cfg, run_dir, label)
    else:
        run_dir = train(cfg, name=name)
    return read_run(run_dir, label, seed)


# a finished run is reused when its config.yaml equals the config but for these keys
REUSE_MAY_DIFFER = ("run.root", "run.progress")


def continue_run(cfg: Config, run_dir: Path, label: str) -> Path:
    """The run folder of a (config, seed) that an earlier compare with the same --out made:
    reused when it finished with this config, resumed when it has a checkpoint (`--resume`:
    it refuses a changed training setting), trained again only when it has neither (nothing
    in it to keep). A finished run of another config is an error: it is never deleted."""
    summary_file = run_dir / "summary.json"
    summary = {}
    if summary_file.is_file():
        try:
            summary = read_json(summary_file)  # deep nesting too: a ValueError
        except ValueError as err:
            raise ValueError(f"{summary_file} is not JSON ({err}); remove it to resume") from None
    if isinstance(summary, dict) and summary.get("finished") is True:
        changed = _config_changes(run_dir, cfg)
        if changed:
            raise RunFolderError(
                f"{run_dir} holds a finished run of another config ({'; '.join(changed)}); "
                "pass another --out, or remove that folder to train this config there"
            )
        print(f"{label} seed {cfg.seed}: reusing the finished run {run_dir}", flush=True)
        return run_dir
    if (run_dir / "checkpoints" / "latest.json").is_file():
        print(f"{label} seed {cfg.seed}: resuming the unfinished run {run_dir}", flush=True)
        return train(cfg, resume=run_dir)
    return train(cfg, name=run_dir.name, overwrite=True)  # no checkpoint, not finished


def _config_changes(run_dir: Path, cfg: Config) -> list[str]:
    """'key: <in the run folder> there, <now> now' for each setting (but REUSE_MAY_DIFFER) in
    which the run folder's config.yaml differs from `cfg` (read through today's schema, so
    that keys added since it was written count at their defaults)."""
    saved = read_yaml(run_dir / "config.yaml")
    with contextlib.suppress(ValueError, TypeError):  # no longer valid: compare it as written
        saved = to_dict(load_config(saved))
    old, new = flat_config(saved), flat_config(to_dict(cfg))
    return [
        f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
        for key in sorted(set(old) | set(new))
        if key not in REUSE_MAY_DIFFER and old.get(key) != new.get(key)
    ]


def _labels(configs: list[str], overrides: list[str] | None) -> list[str]:
    """Each config's name, made unique (a repeated name gets -2, -3, ...)."""
    labels: list[str] = []
    for source in configs:
        name = load_config(source, overrides).name
        label, k = name, 2
        while label in labels:
            label, k = f"{name}-{k}", k + 1
        labels.append(label)
    return labels


def compare_configs(
    configs: list[str],
    seeds: int,
    out: str | Path,
    overrides: list[str] | None = None,
    jobs: int = 1,
    command: str | None = None,
) -> Path:
    """Train each config for `seeds` seeds (from its own `seed`), `jobs` runs at a time, and
    write compare.md, compare.json and compare.png to `out`. A run that fails does not stop
    the others; the report has the ones that finished, and then `CompareFailed` names the
    failed ones. A re-run with the same `out` reuses the finished runs (`train_one`)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out = Path(out)
    root = str(out / "runs")
    overrides = list(overrides or [])
    tasks = []
    for source, label in zip(configs, _labels(configs, overrides)):
        first = load_config(source, overrides).seed
        tasks += [(source, overrides, seed, root, label) for seed in range(first, first + seeds)]
    results: list[ConfigRun] = []
    failed: list[FailedRun] = []

    def report(task: tuple, run: ConfigRun | None, err: Exception | None) -> None:
        label, seed = task[4], task[2]
        if err is not None:
            failed.append(FailedRun(label, seed, one_line(err)))
            print(f"{label} seed {seed}: FAILED: {failed[-1].error}", file=sys.stderr, flush=True)
            return
        results.append(run)
        print(
            f"{run.label} seed {run.seed}: eval {run.initial_return} -> {run.final_return:.4f}  "
            f"wall {run.wall_time:6.1f}s  KL {run.kl_to_ref}",
            flush=True,
        )

    if jobs <= 1:
        for task in tasks:
            try:
                run = train_one(*task)
            except Exception as err:  # recorded, reported and raised below; the others run
                report(task, None, err)
            else:
                report(task, run, None)
    else:
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        spawn = multiprocessing.get_context("spawn")
        broken = []  # a worker that dies (a crash, the OOM killer) breaks the whole pool
        with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
            futures = {pool.submit(train_one, *task): task for task in tasks}
            for future in as_completed(futures):
                try:
                    run = future.result()
                except BrokenProcessPool:
                    broken.append(futures[future])
                except Exception as err:  # as above
                    report(futures[future], None, err)
                else:
                    report(futures[future], run, None)
        for task in broken:  # so each of its runs gets a process of its own, one at a time
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                try:
                    run = pool.submit(train_one, *task).result()
                except Exception as err:  # as above; BrokenProcessPool: this run's process died
                    report(task, None, err)
                else:
                    report(task, run, None)
    order = {(task[4], task[2]): k for k, task in enumerate(tasks)}  # the planned order
    results.sort(key=lambda r: order[r.label, r.seed])
    failed.sort(key=lambda f: order[f.label, f.seed])
    write_config_report(results, out, command, failed)
    if failed:
        raise CompareFailed(out, failed, len(tasks))
    return out


def write_config_report(
    runs: list[ConfigRun],
    out: Path,
    command: str | None = None,
    failed: list[FailedRun] | None = None,
) -> None:
    """compare.md, compare.json and compare.png (each written atomically) of the finished runs;
    the `failed` ones are marked in the tables with their error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)

    def fmt(x: float | None, d: int = 3) -> str:
        return "n/a" if x is None else f"{x:.{d}f}"

    def mean(xs: list[float | None]) -> float | None:
        xs = [x for x in xs if x is not None]
        return float(np.mean(xs)) if xs else None

    failed = failed or []
    labels = list(dict.fromkeys([r.label for r in runs] + [f.label for f in failed]))
    lines = ["# Config comparison", ""]
    if command:
        lines += ["Made with:", "", f"    {command}", ""]
    lines += _failed_note(failed, len(runs) + len(failed))
    lines += [
        "Final: the config's own evaluation at the end of training (for the text configs: sampled "
        "responses to held-out prompts), mean ± std (population), median and min over seeds. "
        "Start: the same evaluation before training. Wall-clock: training and periodic "
        "evaluations. KL: the KL to the reference at the last iteration (sum over an episode). "
        "Tokens: valid env steps generated in training.",
        "",
        "| config | seeds | final (mean ± std) | median | min | start | wall-clock (s) | KL | tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        rs = [r for r in runs if r.label == label]
        fails = [f for f in failed if f.label == label]
        seeds = f"{len(rs)}" + (f" ({len(fails)} failed)" if fails else "")
        if not rs:
            lines.append(f"| {label} | {seeds} | failed | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        finals = np.array([r.final_return for r in rs])
        lines.append(
            f"| {label} | {seeds} | {finals.mean():.3f} ± {finals.std():.3f} | "
            f"{np.median(finals):.3f} | {finals.min():.3f} | "
            f"{fmt(mean([r.initial_return for r in rs]))} | "
            f"{np.mean([r.wall_time for r in rs]):.0f} | {fmt(mean([r.kl_to_ref for r in rs]), 2)} "
            f"| {np.mean([r.transitions for r in rs]):,.0f} |"
        )
    lines += ["", "| config | seed | start | final | wall-clock (s) | KL | tokens |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in sorted([*runs, *failed], key=lambda r: (labels.index(r.label), r.seed)):
        if isinstance(r, FailedRun):
            lines.append(
                f"| {r.label} | {r.seed} | n/a | failed: {_cell(r.error)} | n/a | n/a | n/a |"
            )
            continue
        lines.append(
            f"| {r.label} | {r.seed} | {fmt(r.initial_return)} | {r.final_return:.3f} | "
            f"{r.wall_time:.0f} | {fmt(r.kl_to_ref, 2)} | {r.transitions:,} |"
        )
    names = sorted({k for r in runs for k in r.components})
    if len(names) > 1:  # e.g. the reward model's score next to a weight-0 gold reward
        lines += ["", "Reward components at the final evaluation, mean ± std over seeds:", ""]
        lines += ["| config | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for label in labels:
            cells = []
            for name in names:
                xs = np.array([r.components[name] for r in runs
                               if r.label == label and name in r.components])  # fmt: skip
                cells.append(f"{xs.mean():.3f} ± {xs.std():.3f}" if len(xs) else "n/a")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    atomic_write_text(out / "compare.md", "\n".join(lines) + "\n")
    raw = [r.__dict__ for r in runs]
    atomic_write_text(out / "compare.json", json.dumps(raw, indent=1) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, label in enumerate(labels):
        color = f"C{k}"
        for j, r in enumerate(rs for rs in runs if rs.label == label):
            if not r.curve:
                continue
            t, tok, ret = (np.array(c) for c in zip(*r.curve))
            for ax, x in zip(axes, (t, tok)):
                ax.plot(x, ret, color=color, alpha=0.7, lw=1, label=label if j == 0 else None)
    axes[0].set_xlabel("wall-clock (s)")
    axes[1].set_xlabel("tokens generated (valid env steps)")
    for ax in axes:
        ax.set_ylabel("eval return")
        _legend(ax)
        ax.grid(alpha=0.3)
    fig.suptitle("eval return during training (one line per seed)")
    fig.tight_layout()
    with atomic_file(out / "compare.png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def compare(
    configs: list[str],
    seeds: int,
    out: str | Path,
    overrides: list[str] | None = None,
    thresholds: dict[str, float] | None = None,
    agents: tuple[str, ...] = ("ours", "sb3"),
    jobs: int = 1,
    command: str | None = None,
) -> Path:
    """Run every config (a YAML path or an env id with default settings) for `seeds` seeds:
    ours vs SB3 when `agents` includes "sb3" and every config has an MLP policy (SB3 runs
    those); otherwise our configs against each other (`compare_configs`). Either way a failed
    run does not stop the others: the report has what finished, and `CompareFailed` then names
    the failed runs; a re-run with the same `out` reuses what finished."""
    sources = [s if s.endswith((".yaml", ".yml")) else {"env": {"id": s}} for s in configs]
    sb3_can_run = all(load_config(s, overrides).policy.type == "mlp" for s in sources)
    if "sb3" not in agents or not sb3_can_run:
        paths = [s if isinstance(s, str) else _env_config(s, out) for s in sources]
        return compare_configs(paths, seeds, out, overrides, jobs, command)
    require_sb3()
    out = Path(out)
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


def _env_config(data: dict, out: str | Path) -> str:
    """A config file for a bare env id (so that worker processes can load it)."""
    from agents.run.config import save_config

    path = Path(out) / f"{data['env']['id'].replace(':', '_').replace('/', '_')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(load_config(data), path)
    return str(path)
