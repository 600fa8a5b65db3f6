"""Run-folder logging: TensorBoard, metrics.csv, summary.json, training_curves.png, samples.jsonl,
and a tqdm progress bar with the current return and SPS."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.run.files import atomic_file

# panels of training_curves.png, in order; any logged `episode/*` metric gets its own panel too
CURVES = (
    ("return", ("rollout/ep_return", "eval/return")),
    ("episode length", ("rollout/ep_length",)),
    ("policy loss", ("train/policy_loss",)),
    ("value loss", ("train/value_loss",)),
    ("entropy", ("train/entropy",)),
    ("approx KL", ("train/approx_kl",)),
    ("clip fraction", ("train/clipfrac",)),
    ("explained variance", ("train/explained_variance",)),
    ("KL to reference", ("kl/kl_to_ref",)),
    ("beta", ("kl/beta",)),
)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file, fsync, os.replace: readers never see a half-written file, and no
    temp file stays behind on any exception (`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


class RunLogger:
    """Writes every metric to TensorBoard and metrics.csv (one row per PPO iteration)."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, progress: bool = True):
        self.run_dir = Path(run_dir)
        # resume: drop whatever was logged after the checkpoint (TensorBoard, csv, samples)
        self.writer = SummaryWriter(
            str(self.run_dir), purge_step=start_step + 1 if start_step else None
        )
        self.csv_path = self.run_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        if self.csv_path.exists() and start_step > 0:
            self.rows = [
                {k: _num(v) for k, v in row.items()}
                for row in csv.DictReader(io.StringIO(_complete_lines(self.csv_path), newline=""))
                if float(row["step"]) <= start_step
            ]
        self.header: list[str] = []
        self._rewrite()
        self.samples_path = self.run_dir / "samples.jsonl"
        if self.samples_path.exists() and start_step > 0:
            kept = [
                line
                for line in _complete_lines(self.samples_path).splitlines(keepends=True)
                if json.loads(line)["step"] <= start_step
            ]
            atomic_write_text(self.samples_path, "".join(kept))
        # no tqdm rate: the bar counts budget steps, the postfix shows real transitions per second
        self.bar = tqdm(
            total=total_steps, initial=start_step, disable=not progress, unit="step",
            dynamic_ncols=True, leave=False,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        )  # fmt: skip

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(key, value, step)
        row = {"step": step, **metrics}
        self.rows.append(row)
        if any(k not in self.header for k in row):
            self._rewrite()
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, self.header).writerow(row)

    def _rewrite(self) -> None:
        keys: dict[str, None] = {"step": None}
        for row in self.rows:
            keys.update(dict.fromkeys(row))
        self.header = list(keys)
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.header)
            writer.writeheader()
            writer.writerows(self.rows)

    def samples(self, step: int, samples: list[dict[str, Any]], max_text: int = 4) -> None:
        """Text samples of finished episodes -> samples.jsonl and TensorBoard text."""
        if not samples:
            return
        with open(self.samples_path, "a") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **sample}) + "\n")
        lines = []
        for sample in samples[:max_text]:
            lines.append(
                " | ".join(f"**{k}**: {v!s}".replace("\n", " ") for k, v in sample.items())
            )
        self.writer.add_text("samples", "\n\n".join(lines), step)

    def progress(self, step: int, ret: float | None, sps: float) -> None:
        self.bar.update(step - self.bar.n)
        text = f"return(last 100)={ret:.1f}" if ret is not None else "return=n/a"
        self.bar.set_postfix_str(f"{text} sps={sps:,.0f}", refresh=False)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        plot_curves(self.rows, self.run_dir / "training_curves.png")


def _complete_lines(path: Path) -> str:
    """The text of a log that is appended line by line, without a last line cut short by a crash
    (no final newline): that row was written after the checkpoint a resume starts from."""
    text = path.read_text()
    return text[: text.rfind("\n") + 1]


def _num(value: str) -> int | float | str:
    """A metrics.csv cell back to the number it was written from (an empty cell stays empty, so
    a resumed run rewrites the kept rows exactly as they were)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """training_curves.png: one panel per logged quantity, against env steps."""
    # a bare Figure: no pyplot state (backend selection, a figure registry to close); savefig
    # renders the PNG with Agg
    from matplotlib.figure import Figure

    keys = {k for row in rows for k in row}
    panels = [(title, [k for k in ks if k in keys]) for title, ks in CURVES]
    panels = [(title, ks) for title, ks in panels if ks]
    episode_keys = sorted(k for k in keys if k.startswith("episode/"))
    components = [k for k in episode_keys if k.startswith("episode/reward_components/")]
    if len(components) > 1:  # e.g. a learned proxy next to a weight-0 gold reward, on one axis
        panels.append(("reward components", components))
    panels += [(k.removeprefix("episode/"), [k]) for k in episode_keys]
    if not panels:
        return
    cols = 3
    n_rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * n_rows))
    axes = fig.subplots(n_rows, cols, squeeze=False)
    for ax, (title, ks) in zip(axes.flat, panels):
        for key in ks:
            points = [
                (row["step"], row[key])
                for row in rows
                if isinstance(row.get(key), (int, float)) and not math.isnan(row[key])
            ]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if key.startswith("eval/") else None, ms=3, label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("env steps", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(ks) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    # fixed margins instead of tight_layout(), which measured every tick label of ~30 panels
    # (2 s of the 3.4 s this function took at the end of every run)
    fig.subplots_adjust(
        left=0.06,
        right=0.98,
        bottom=0.5 / fig.get_figheight(),
        top=1 - 0.35 / fig.get_figheight(),
        wspace=0.28,
        hspace=0.75,
    )
    with atomic_file(path, suffix=".tmp.png") as tmp:  # savefig picks the format by suffix
        fig.savefig(tmp, dpi=90)
