"""The comparison reports: compare.md (tables), compare.json (the numbers) and compare.png (learning
curves), each written atomically, for ours vs SB3 (`write_report`) and for our configs against
each other (`write_config_report`). Failed runs are marked in the tables with their error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agents.run.compare_results import WINDOW, ConfigRun, FailedRun, RunResult
from agents.run.files import atomic_file, atomic_write_text
from agents.run.provenance import provenance_line


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported when a report is written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: Path) -> None:
    """Lay `fig` out, write it as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _cell(text: str) -> str:
    """`text` inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _legend(ax: Any) -> None:
    """A legend, when the axis has labelled lines (every run of it may have failed)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _failed_note(failed: list[FailedRun], total: int) -> list[str]:
    """The report's opening line about failed runs (none when every run finished)."""
    if not failed:
        return []
    return [
        f"**{len(failed)} of {total} runs failed** (marked 'failed', with their error); the same "
        "command again retries them and reuses the finished runs.",
        "",
    ]


# ----------------------------------------------------------------------------- ours vs SB3


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
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    failed = failed or []
    env_ids = list(dict.fromkeys([r.env_id for r in results] + [f.label for f in failed]))
    lines = _sb3_intro(results, failed)
    verdicts: list[str] = []
    fig, axes = plt.subplots(1, len(env_ids), figsize=(5 * len(env_ids), 3.6), squeeze=False)
    for ax, env_id in zip(axes.flat, env_ids):
        rows, verdict = _sb3_env(
            ax,
            env_id,
            [r for r in results if r.env_id == env_id],
            [f for f in failed if f.label == env_id],
            thresholds.get(env_id),
        )
        lines += rows
        verdicts += verdict
    _save_figure(fig, out / "compare.png")
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


def _sb3_intro(results: list[RunResult], failed: list[FailedRun]) -> list[str]:
    """The SB3 report's title, notes and table header."""
    lines = [
        "# Our PPO vs Stable-Baselines3 PPO (same hyperparameters)",
        "",
        provenance_line(),
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
    return lines + [
        "| env | agent | seeds | final return | median | steps to threshold | wall-clock (s) "
        "| SPS |",
        "|---|---|---|---|---|---|---|---|",
    ]


def _sb3_env(
    ax: Any, env_id: str, runs: list[RunResult], fails: list[FailedRun], threshold: float | None
) -> tuple[list[str], list[str]]:
    """One env of the SB3 report: (its table rows, its verdict line if both agents finished),
    and its learning curves drawn on `ax`."""
    rows = []
    finals_of: dict[str, np.ndarray] = {}  # agent -> final returns over seeds
    # returns of order 1 (Blackjack, FrozenLake) need more than one decimal
    scale = max([abs(r.final_return) for r in runs], default=0)
    d = 1 if scale >= 10 else 3
    for agent, color in (("ours", "C0"), ("sb3", "C1")):
        mine = [r for r in runs if r.agent == agent]
        my_fails = [f for f in fails if f.agent == agent]
        seeds = f"{len(mine)}" + (f" ({len(my_fails)} failed)" if my_fails else "")
        if not mine:
            if my_fails:  # every seed failed: the first error in the table, all of them below
                rows.append(
                    f"| {env_id} | {agent} | {seeds} | failed: {_cell(my_fails[0].error)} "
                    "| n/a | n/a | n/a | n/a |"
                )
            continue
        finals_of[agent] = np.array([r.final_return for r in mine])
        rows.append(_sb3_row(env_id, agent, seeds, mine, threshold, d))
        _plot_band(ax, mine, color, agent)
    verdicts = []
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
    return rows, verdicts


def _sb3_row(
    env_id: str, agent: str, seeds: str, runs: list[RunResult], threshold: float | None, d: int
) -> str:
    """The table row of one agent on one env (`d` decimals for returns)."""
    finals = np.array([r.final_return for r in runs])
    reached = [s for s in (r.steps_to(threshold) for r in runs) if s is not None]
    to_thr = (
        "n/a (no threshold)" if threshold is None
        else f"{int(np.median(reached)):,} ({len(reached)}/{len(runs)})" if reached
        else f"not reached (0/{len(runs)})"
    )  # fmt: skip
    wall = np.mean([r.wall_time for r in runs])
    sps = np.mean([r.sps for r in runs])
    return (
        f"| {env_id} | {agent} | {seeds} | {finals.mean():.{d}f} ± "
        f"{finals.std():.{d}f} | {np.median(finals):.{d}f} | {to_thr} | {wall:.1f} "
        f"| {sps:,.0f} |"
    )


def _plot_band(ax: Any, runs: list[RunResult], color: str, label: str) -> None:
    """The mean learning curve over seeds with its min-max band."""
    grid = np.linspace(0, max(r.steps for r in runs), 100)
    curves = np.stack([curve(r, grid) for r in runs])  # (seeds, 100), nan before data
    seen = ~np.isnan(curves).all(0)  # grid points where some seed has episodes
    curves, grid = curves[:, seen], grid[seen]
    ax.plot(grid, np.nanmean(curves, axis=0), color=color, label=label)
    ax.fill_between(grid, np.nanmin(curves, 0), np.nanmax(curves, 0), color=color, alpha=0.2)


# ----------------------------------------------------------------------------- our configs


def _fmt(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def write_config_report(
    runs: list[ConfigRun],
    out: Path,
    command: str | None = None,
    failed: list[FailedRun] | None = None,
) -> None:
    """compare.md, compare.json and compare.png (each written atomically) of the finished runs;
    the `failed` ones are marked in the tables with their error."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    failed = failed or []
    labels = list(dict.fromkeys([r.label for r in runs] + [f.label for f in failed]))
    lines = ["# Config comparison", ""]
    if command:
        lines += ["Made with:", "", f"    {command}", ""]
    lines += [provenance_line(r.code_version for r in runs), ""]
    lines += _failed_note(failed, len(runs) + len(failed))
    lines += _config_table(runs, failed, labels)
    lines += _seed_table(runs, failed, labels)
    lines += _components_table(runs, labels)
    lines += _start_final_table(runs, labels)
    atomic_write_text(out / "compare.md", "\n".join(lines) + "\n")
    raw = [r.__dict__ for r in runs]
    atomic_write_text(out / "compare.json", json.dumps(raw, indent=1) + "\n")
    _plot_config_curves(plt, runs, labels, out / "compare.png")


def _config_table(runs: list[ConfigRun], failed: list[FailedRun], labels: list[str]) -> list[str]:
    """What the columns mean, and one row per config over its seeds."""
    lines = [
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
            f"{_fmt(_mean([r.initial_return for r in rs]))} | "
            f"{np.mean([r.wall_time for r in rs]):.0f} | "
            f"{_fmt(_mean([r.kl_to_ref for r in rs]), 2)} "
            f"| {np.mean([r.transitions for r in rs]):,.0f} |"
        )
    return lines


def _seed_table(runs: list[ConfigRun], failed: list[FailedRun], labels: list[str]) -> list[str]:
    """One row per (config, seed), failed ones with their error."""
    lines = ["", "| config | seed | start | final | wall-clock (s) | KL | tokens |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in sorted([*runs, *failed], key=lambda r: (labels.index(r.label), r.seed)):
        if isinstance(r, FailedRun):
            lines.append(
                f"| {r.label} | {r.seed} | n/a | failed: {_cell(r.error)} | n/a | n/a | n/a |"
            )
            continue
        lines.append(
            f"| {r.label} | {r.seed} | {_fmt(r.initial_return)} | {r.final_return:.3f} | "
            f"{r.wall_time:.0f} | {_fmt(r.kl_to_ref, 2)} | {r.transitions:,} |"
        )
    return lines


def _components_table(runs: list[ConfigRun], labels: list[str]) -> list[str]:
    """The reward components at the final evaluation, when there are more than one."""
    names = sorted({k for r in runs for k in r.components})
    if len(names) <= 1:
        return []
    # e.g. the reward model's score next to a weight-0 gold reward
    lines = ["", "Reward components at the final evaluation, mean ± std over seeds:", ""]
    lines += ["| config | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label in labels:
        cells = []
        for name in names:
            xs = np.array([r.components[name] for r in runs
                           if r.label == label and name in r.components])  # fmt: skip
            cells.append(f"{xs.mean():.3f} ± {xs.std():.3f}" if len(xs) else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _start_final_table(runs: list[ConfigRun], labels: list[str]) -> list[str]:
    """Each reward component before training (the step-0 evaluation, e.g. the SFT level), at the
    final evaluation, and the gain (final - start per seed), for runs that evaluated their start."""
    names = sorted({k for r in runs for k in r.start_components if k in r.components})
    if not names:
        return []
    lines = [
        "",
        "Reward components before training (start: the step-0 evaluation) and at the final "
        "evaluation; gain = final - start per seed; mean ± std over the seeds that have both:",
        "",
        "| config | component | seeds | start | final | gain |",
        "|---|---|---|---|---|---|",
    ]
    for label in labels:
        for name in names:
            both = [r for r in runs if r.label == label
                    and name in r.start_components and name in r.components]  # fmt: skip
            if not both:
                continue
            start = np.array([r.start_components[name] for r in both])
            final = np.array([r.components[name] for r in both])
            cells = [f"{x.mean():.3f} ± {x.std():.3f}" for x in (start, final, final - start)]
            lines.append(f"| {label} | {name} | {len(both)} | " + " | ".join(cells) + " |")
    return lines


def _plot_config_curves(plt: Any, runs: list[ConfigRun], labels: list[str], path: Path) -> None:
    """The periodic eval return against wall-clock and against tokens, one line per seed."""
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
    _save_figure(fig, path)
