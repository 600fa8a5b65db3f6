"""trajectories.jsonl: a few whole text episodes per logged iteration, token by token, for the
report's episode viewer (agents/run/report.py) and `textrlhf export-trajectories`.

Which iterations: the first, every `run.trajectory_every`-th (0: often enough for about
`AUTO_LOGGED_ITERATIONS` of them) and the last. Which episodes: `run.trajectory_episodes` of the
rollout's complete episodes (started and ended in it), evenly spread over their ranks by return:
the worst, the best and those between. No random draw: the run is the same with or without it.

One JSON object per line (docs/report.md has every field):

    {"step", "iteration", "policy_version", "split": "train", "row", "return", "length",
     "prompt", "response", "prompt_length", "token_ids", "token_text", "from_env", "logprobs",
     "ref_logprobs", "values", "advantages", "rewards", "info"}

The per-token lists run over the whole episode, prompt first (`prompt_length` tokens), then the
generated tokens, the agent's and the env's (`from_env` 1) in the order they were written; an
agent token carries its step's numbers, every other token null. Episodes only of runs whose
observations hold `input_ids` (TextRLHF-v0's layout) and `attention_mask`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.core.buffer import RolloutBuffer
from agents.core.rollout import EpisodeLog
from agents.run.files import atomic_file, atomic_write_text

TRAJECTORIES = "trajectories.jsonl"
AUTO_LOGGED_ITERATIONS = 50  # trajectory_every 0: about this many iterations logged per run
# the file stops growing at this size (one warning): the report embeds it whole
MAX_TRAJECTORY_BYTES = 4 * 2**20


def is_text(buffer: RolloutBuffer) -> bool:
    """Whether the rollout's observations are token sequences (TextRLHF-v0's layout)."""
    return isinstance(buffer.obs, dict) and {"input_ids", "attention_mask"} <= buffer.obs.keys()


def logs_iteration(iteration: int, num_iterations: int, every: int) -> bool:
    """Whether iteration `iteration` (1-based) of `num_iterations` writes trajectories: the
    first, each `every`-th (0: about AUTO_LOGGED_ITERATIONS in all) and the last."""
    if every <= 0:
        every = max(1, math.ceil(num_iterations / AUTO_LOGGED_ITERATIONS))
    return iteration == 1 or iteration % every == 0 or iteration == num_iterations


def spread(values: list[float], k: int) -> list[int]:
    """Indices of `k` of `values` evenly spread over their ranks (lowest and highest included;
    ties in index order), in ascending order of value."""
    if k <= 0 or not values:
        return []
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    if k >= len(order):
        return order
    picks = np.linspace(0, len(order) - 1, k).round().astype(int)
    return [order[p] for p in dict.fromkeys(picks.tolist())]


def _number(x: float) -> float | None:
    """A float for JSON: 6 significant digits, None for NaN / inf."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def _episodes(buffer: RolloutBuffer) -> list[tuple[int, list[int]]]:
    """(row, valid steps) of each complete episode of the rollout: it starts (a step flagged in
    `episode_starts`) and ends (terminated or truncated) inside it."""
    valid = buffer.valid.cpu().numpy()
    starts = buffer.episode_starts.cpu().numpy()
    done = (buffer.terminated | buffer.truncated).cpu().numpy()
    found = []
    for row in range(buffer.num_envs):
        steps: list[int] | None = None
        for t in np.flatnonzero(valid[:, row]).tolist():
            if starts[t, row]:
                steps = []
            if steps is None:  # the episode started before this rollout
                continue
            steps.append(t)
            if done[t, row]:
                found.append((row, steps))
                steps = None
    return found


def episode_tokens(buffer: RolloutBuffer, row: int, steps: list[int]) -> dict[str, Any] | None:
    """The token sequence of one episode: ids in column order, the prompt length, the env's
    marks, and which sequence positions hold the agent's tokens (one per step). None when the
    observations do not show one agent token per step (an env that rewrote the sequence)."""
    obs = buffer.obs
    first, last = steps[0], steps[-1]
    mask_first = obs["attention_mask"][first, row].bool().cpu()
    mask_last = obs["attention_mask"][last, row].bool().cpu()
    ids = obs["input_ids"][last, row].cpu()
    from_env = obs.get("from_env")
    env_col = (
        from_env[last, row].bool().cpu() if from_env is not None else torch.zeros_like(mask_last)
    )
    prompt = mask_first.nonzero().flatten().tolist()
    generated = (mask_last & ~mask_first).nonzero().flatten().tolist()
    token_ids = [int(ids[c]) for c in prompt + generated]
    marks = [0] * len(prompt) + [int(env_col[c]) for c in generated]
    token_ids.append(int(buffer.actions[last, row]))  # the last action: in no observation
    marks.append(0)
    agent = [i for i in range(len(prompt), len(token_ids)) if not marks[i]]
    if len(agent) != len(steps):
        return None
    return {"token_ids": token_ids, "from_env": marks, "prompt_length": len(prompt), "agent": agent}


def trajectory_records(
    buffer: RolloutBuffer,
    env_rewards: torch.Tensor,
    episodes: EpisodeLog,
    k: int,
    texts: Any,
    iteration: int,
    step: int,
    has_reference: bool,
) -> list[dict[str, Any]]:
    """Up to `k` episodes of the rollout in `buffer` as trajectory records (module docstring).

    `env_rewards` (T, N): the env's rewards before score normalization and the KL penalty;
    `episodes`: this process's episode log of the rollout (returns and infos by row and end
    step); `texts(ids) -> list[str] | None`: each token's text; `iteration`: 1-based (the
    policy that sampled had `iteration - 1` updates); `step`: the run's env steps after it."""
    if k <= 0 or not is_text(buffer):
        return []
    ends = {(r, t): j for j, (r, t) in enumerate(zip(episodes.rows, episodes.rollout_steps))}
    complete = [(row, steps) for row, steps in _episodes(buffer) if (row, steps[-1]) in ends]
    returns = [episodes.returns[ends[(row, steps[-1])]] for row, steps in complete]
    records = []
    for index in spread(returns, k):
        row, steps = complete[index]
        tokens = episode_tokens(buffer, row, steps)
        if tokens is None:
            continue
        j = ends[(row, steps[-1])]
        info = dict(episodes.infos[j] or {}) if j < len(episodes.infos) else {}
        n = len(tokens["token_ids"])
        columns: dict[str, list[Any]] = {
            key: [None] * n
            for key in ("logprobs", "ref_logprobs", "values", "advantages", "rewards")
        }
        sources = {
            "logprobs": buffer.log_probs, "values": buffer.values,
            "advantages": buffer.advantages, "rewards": env_rewards,
        }  # fmt: skip
        if has_reference:
            sources["ref_logprobs"] = buffer.ref_log_probs
        for key, source in sources.items():
            numbers = source[steps, row].tolist()
            for position, value in zip(tokens["agent"], numbers):
                columns[key][position] = _number(value)
        if not has_reference:
            columns["ref_logprobs"] = None
        text = texts(tokens["token_ids"])
        P = tokens["prompt_length"]
        prompt = info.pop("prompt", None)
        response = info.pop("response", None)
        records.append(
            {
                "step": step,
                "iteration": iteration,
                "policy_version": iteration - 1,
                "split": "train",
                "row": row,
                "return": _number(episodes.returns[j]),
                "length": len(steps),
                "prompt": prompt if prompt is not None else _join(text, 0, P),
                "response": response if response is not None else _join(text, P, n),
                "prompt_length": P,
                "token_ids": tokens["token_ids"],
                "token_text": text,
                "from_env": tokens["from_env"],
                **columns,
                "info": {k: (_number(v) if isinstance(v, float) else v) for k, v in info.items()},
            }
        )
    return records


def _join(text: list[str] | None, start: int, end: int) -> str | None:
    return None if text is None else "".join(text[start:end])


# ----------------------------------------------------------------------------- export

# the fields of an exported record, in order (docs/report.md describes each)
EXPORT_FIELDS = (
    "iteration", "policy_version", "step", "split", "prompt", "response", "return",
    "prompt_length", "token_ids", "token_text", "from_env", "logprobs", "ref_logprobs", "values",
    "advantages", "rewards", "info",
)  # fmt: skip
EXPORT_FORMATS = (".jsonl", ".parquet")


def export_records(run_dir: Path) -> list[dict[str, Any]]:
    """The logged episodes of a run folder as export records (`EXPORT_FIELDS`). ValueError when
    the folder has no trajectories.jsonl."""
    path = Path(run_dir) / TRAJECTORIES
    if not path.is_file():
        raise ValueError(
            f"{run_dir} has no {TRAJECTORIES}: only text runs log episodes (run.trajectory_episodes "
            "> 0), from this version on"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break  # a last line that a crash cut short
            raise ValueError(f"{path} line {number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("token_ids"), list):
            raise ValueError(f"{path} line {number} is not a trajectory record")
        records.append({key: record.get(key) for key in EXPORT_FIELDS})
    return records


def export_trajectories(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's logged episodes to `out`: JSON Lines (.jsonl), or Parquet (.parquet,
    needs pyarrow), atomically. Returns `out`."""
    out = Path(out)
    if out.suffix not in EXPORT_FORMATS:
        raise ValueError(
            f"cannot export trajectories to {out}: the file name must end in one of "
            f"{', '.join(EXPORT_FORMATS)}"
        )
    if out.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(
                f"writing {out} (Parquet) needs pyarrow, which is not installed: pip install "
                "pyarrow, or export to a .jsonl file"
            ) from None
    records = export_records(Path(run_dir))
    if out.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write_text(out, text)
        return out
    rows = [{**r, "info": json.dumps(r["info"], ensure_ascii=False)} for r in records]
    table = pa.Table.from_pylist(rows, schema=_parquet_schema(pa))
    with atomic_file(out, suffix=".tmp.parquet") as tmp:
        pq.write_table(table, tmp)
    return out


def _parquet_schema(pa: Any) -> Any:
    """The Parquet columns of `EXPORT_FIELDS` (`info` as a JSON string)."""
    floats = pa.list_(pa.float64())
    types = {
        "iteration": pa.int64(), "policy_version": pa.int64(), "step": pa.int64(),
        "split": pa.string(), "prompt": pa.string(), "response": pa.string(),
        "return": pa.float64(), "prompt_length": pa.int64(), "token_ids": pa.list_(pa.int64()),
        "token_text": pa.list_(pa.string()), "from_env": pa.list_(pa.int8()),
        "logprobs": floats, "ref_logprobs": floats, "values": floats, "advantages": floats,
        "rewards": floats, "info": pa.string(),
    }  # fmt: skip
    return pa.schema([(key, types[key]) for key in EXPORT_FIELDS])
