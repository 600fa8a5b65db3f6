"""Run-folder logging: TensorBoard, metrics.csv, summary.json, training_curves.png, samples.jsonl,
trajectories.jsonl (agents/run/trajectories.py), and a tqdm progress bar with the current return
and SPS."""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.run.files import atomic_file, atomic_write_text, naming_the_file
from agents.run.trajectories import MAX_TRAJECTORY_BYTES, TRAJECTORIES

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


class RunLogger:
    """Writes every metric to TensorBoard and metrics.csv (one row per PPO iteration)."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, progress: bool = True):
        self.run_dir = Path(run_dir)
        # resume: drop whatever was logged after the checkpoint (TensorBoard, csv, samples)
        self.writer = SummaryWriter(
            str(self.run_dir), purge_step=start_step + 1 if start_step else None
        )
        self.csv_path = self.run_dir / "metrics.csv"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.trajectories_path = self.run_dir / TRAJECTORIES
        self.trajectories_full = False  # MAX_TRAJECTORY_BYTES reached (said once)
        self.rows: list[dict[str, Any]] = []
        self.header: list[str] = []
        try:
            if self.csv_path.exists() and start_step > 0:
                self.rows, problem = read_metrics(self.csv_path, start_step)
                set_aside(self.csv_path, problem, len(self.rows))
            self._rewrite()
            for path in (self.samples_path, self.trajectories_path):
                if path.exists() and start_step > 0:
                    kept, problem = read_samples(path, start_step)
                    set_aside(path, problem, len(kept))
                    atomic_write_text(path, "".join(kept))
        except BaseException:  # e.g. a full disk: no TensorBoard writer thread left behind
            self.writer.close()
            raise
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
        else:  # an append: a failure can only cut this row short (resume drops a torn line)
            with naming_the_file(self.csv_path), open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, self.header).writerow(row)

    def _rewrite(self) -> None:
        """The whole file again, with a header of every column so far (on resume, and when a
        metric appears). Atomic: a failed write leaves the previous metrics.csv whole."""
        keys: dict[str, None] = {"step": None}
        for row in self.rows:
            keys.update(dict.fromkeys(row))
        header = list(keys)
        text = io.StringIO()
        writer = csv.DictWriter(text, header)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv_path, text.getvalue())
        self.header = header  # only once the file has it

    def samples(self, step: int, samples: list[dict[str, Any]], max_text: int = 4) -> None:
        """Text samples of finished episodes -> samples.jsonl and TensorBoard text."""
        if not samples:
            return
        with naming_the_file(self.samples_path), open(self.samples_path, "a") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **sample}) + "\n")
        lines = []
        for sample in samples[:max_text]:
            lines.append(
                " | ".join(f"**{k}**: {v!s}".replace("\n", " ") for k, v in sample.items())
            )
        self.writer.add_text("samples", "\n\n".join(lines), step)

    def trajectories(self, records: list[dict[str, Any]]) -> None:
        """Append an iteration's trajectory records to trajectories.jsonl in one write (a crash
        can only cut the last line short; a resume drops it). The file stops growing before
        MAX_TRAJECTORY_BYTES, with one line on stderr."""
        if not records or self.trajectories_full:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        size = self.trajectories_path.stat().st_size if self.trajectories_path.exists() else 0
        if size + len(text.encode()) > MAX_TRAJECTORY_BYTES:
            self.trajectories_full = True
            print(
                f"textrlhf: warning: {self.trajectories_path} reached its bound of "
                f"{MAX_TRAJECTORY_BYTES // 2**20} MiB: no more episodes are logged in it (fewer "
                "with run.trajectory_episodes, or less often with run.trajectory_every)",
                file=sys.stderr,
                flush=True,
            )
            return
        path = self.trajectories_path
        with naming_the_file(path), open(path, "a", encoding="utf-8") as f:
            f.write(text)

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


# ----------------------------------------------------------------------------- reading logs back
#
# Logs are not checkpoints: a resumed run rereads metrics.csv and samples.jsonl only to keep the
# rows up to its checkpoint. A log that someone re-saved (a spreadsheet: a byte-order mark, ';'
# between cells) or that was damaged must not stop the run: it is set aside, with one warning line
# naming the file and the line, and the log goes on from the rows that could be read.


@dataclass
class LogProblem:
    """What is wrong with a log, from `line` (1-based) on. `lost`: the rows from that line on
    were not kept; otherwise every row was read and only the file's format differed."""

    line: int
    what: str
    lost: bool = True


def _log_lines(path: Path) -> tuple[list[str], LogProblem | None]:
    """The complete lines of a log that is appended line by line, decoded as UTF-8, up to the
    first line that is not UTF-8. A last line cut short by a crash (no final newline) is left
    out: it was written after the checkpoint a resume starts from. A UTF-8 byte-order mark is
    skipped and reported (a format problem, nothing is lost)."""
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    problem = None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        problem = LogProblem(1, "starts with a byte-order mark (re-saved by an editor?)", False)
    lines = []
    for number, raw in enumerate(data.splitlines(keepends=True), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            return lines, LogProblem(number, f"has byte {raw[err.start]:#04x}, not UTF-8 text")
    return lines, problem


def read_metrics(path: Path, start_step: int) -> tuple[list[dict[str, Any]], LogProblem | None]:
    """The rows of metrics.csv up to `start_step` (numbers back as numbers), and the first
    problem found: the rows stop before a line that is not a row of numbers under the header."""
    lines, problem = _log_lines(path)
    if not lines:
        return [], problem
    header = _cells(lines[0], ",")
    delimiter = ","
    for other in (";", "\t", "|"):  # a spreadsheet's choice (';' where ',' is the decimal mark)
        if "step" not in header and "step" in _cells(lines[0], other):
            delimiter, header = other, _cells(lines[0], other)
            what = f"has {other!r} between cells, not ','"
            what = f"{problem.what} and {what}" if problem else what
            problem = LogProblem(1, what, lost=False)
    if "step" not in header:
        shown = lines[0].strip()
        return [], LogProblem(1, f"has no 'step' column in its header {shown[:60]!r}")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines[1:], 2):
        try:
            cells = next(csv.reader([line], delimiter=delimiter), [])
        except csv.Error as err:  # e.g. a cell over the csv module's size limit
            return rows, LogProblem(number, f"is not a CSV row ({err})")
        bad = _bad_row(header, cells)
        if bad:
            return rows, LogProblem(number, bad)
        row = {k: _num(v) for k, v in zip(header, cells)}
        if row["step"] <= start_step:
            rows.append(row)
    return rows, problem


def _cells(line: str, delimiter: str) -> list[str]:
    """The cells of a header line; [] for one the csv module refuses (a cell over its size
    limit): a header without a 'step' column."""
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return []


def _bad_row(header: list[str], cells: list[str]) -> str | None:
    """Why `cells` is not a metrics.csv row under `header` (None if it is one): as many cells
    as columns, a whole-number step, and numbers or empty cells everywhere else."""
    if len(cells) != len(header):
        return f"has {len(cells)} cells, the header has {len(header)}"
    for key, cell in zip(header, cells):
        value = _num(cell)
        if key == "step" and not isinstance(value, int):
            return f"has step {cell[:40]!r}, not a whole number"
        if isinstance(value, str) and value != "":
            return f"has {key} = {cell[:40]!r}, not a number"
    return None


def read_samples(path: Path, start_step: int) -> tuple[list[str], LogProblem | None]:
    """The lines of samples.jsonl up to `start_step`, and the first problem found: the lines
    stop before one that is not a JSON object with a whole-number "step"."""
    lines, problem = _log_lines(path)
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as err:
            return kept, LogProblem(number, f"is not JSON ({str(err)[:80]})")
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            return kept, LogProblem(number, "is not a JSON object with a whole-number 'step'")
        if step <= start_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    return kept, problem


def set_aside(path: Path, problem: LogProblem | None, kept: int) -> None:
    """Rename a log with a problem to `<name>.damaged-<time>` (the file as it was stays there)
    and say so in one line on stderr; the caller writes the log again from the `kept` rows."""
    if problem is None:
        return
    stamp = f"{path.name}.damaged-{datetime.now():%Y%m%d-%H%M%S}"
    aside, k = path.with_name(stamp), 2
    while aside.exists():
        aside, k = path.with_name(f"{stamp}-{k}"), k + 1
    path.rename(aside)
    rows = "row" if kept == 1 else "rows"
    after = (
        f"the log goes on from the {kept} {rows} before that line"
        if problem.lost
        else f"the log goes on from all its {kept} {rows} up to the checkpoint"
    )
    print(
        f"textrlhf: warning: {path} line {problem.line} {problem.what}; set it aside as "
        f"{aside.name}, {after}",
        file=sys.stderr,
        flush=True,
    )


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
