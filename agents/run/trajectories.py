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


def sequence_tokens(
    first_mask: torch.Tensor,
    last_obs: dict[str, torch.Tensor],
    last_action: int,
    n_steps: int,
) -> dict[str, Any] | None:
    """The token sequence of one episode from its first observation's attention mask (L,), its
    last observation (`input_ids`, `attention_mask`, optional `from_env`, each (L,)) and the
    last action: ids in column order, the prompt length, the env's marks, and which sequence
    positions hold the agent's tokens. None when that is not one agent token per step (`n_steps`;
    an env that rewrote the sequence)."""
    mask_first = first_mask.bool().cpu()
    mask_last = last_obs["attention_mask"].bool().cpu()
    ids = last_obs["input_ids"].cpu()
    from_env = last_obs.get("from_env")
    env_col = from_env.bool().cpu() if from_env is not None else torch.zeros_like(mask_last)
    prompt = mask_first.nonzero().flatten().tolist()
    generated = (mask_last & ~mask_first).nonzero().flatten().tolist()
    token_ids = [int(ids[c]) for c in prompt + generated] + [int(last_action)]
    marks = [0] * len(prompt) + [int(env_col[c]) for c in generated] + [0]
    agent = [i for i in range(len(prompt), len(token_ids)) if not marks[i]]
    if len(agent) != n_steps:
        return None
    return {"token_ids": token_ids, "from_env": marks, "prompt_length": len(prompt), "agent": agent}


def episode_tokens(buffer: RolloutBuffer, row: int, steps: list[int]) -> dict[str, Any] | None:
    """`sequence_tokens` of the episode of `row` whose valid steps are `steps`."""
    obs = buffer.obs
    first, last = steps[0], steps[-1]
    last_obs = {k: v[last, row] for k, v in obs.items()}
    return sequence_tokens(
        obs["attention_mask"][first, row], last_obs, int(buffer.actions[last, row]), len(steps)
    )


def _record(
    tokens: dict[str, Any],
    numbers: dict[str, list[float]],
    info: dict[str, Any],
    texts: Any,
    head: dict[str, Any],
) -> dict[str, Any]:
    """One trajectory record: `head` (step, iteration, ..., return, length), the per-token
    lists (`numbers` per agent token, by key; a key absent: null lists), the texts, `info`."""
    n = len(tokens["token_ids"])
    columns: dict[str, list[Any] | None] = {}
    for key in ("logprobs", "ref_logprobs", "values", "advantages", "rewards"):
        if key not in numbers:
            columns[key] = None
            continue
        column: list[Any] = [None] * n
        for position, value in zip(tokens["agent"], numbers[key]):
            column[position] = _number(value)
        columns[key] = column
    text = texts(tokens["token_ids"])
    info = dict(info)
    P = tokens["prompt_length"]
    prompt, response = info.pop("prompt", None), info.pop("response", None)
    return {
        **head,
        "prompt": prompt if prompt is not None else _join(text, 0, P),
        "response": response if response is not None else _join(text, P, n),
        "prompt_length": P,
        "token_ids": tokens["token_ids"],
        "token_text": text,
        "from_env": tokens["from_env"],
        **columns,
        "info": {k: (_number(v) if isinstance(v, float) else v) for k, v in info.items()},
    }


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
        sources = {
            "logprobs": buffer.log_probs, "values": buffer.values,
            "advantages": buffer.advantages, "rewards": env_rewards,
        }  # fmt: skip
        if has_reference:
            sources["ref_logprobs"] = buffer.ref_log_probs
        numbers = {key: source[steps, row].tolist() for key, source in sources.items()}
        head = {
            "step": step, "iteration": iteration, "policy_version": iteration - 1,
            "split": "train", "row": row, "return": _number(episodes.returns[j]),
            "length": len(steps),
        }  # fmt: skip
        records.append(_record(tokens, numbers, episodes.infos[j] or {}, texts, head))
    return records


class EvalRecorder:
    """Keeps the token sequences of an evaluation's episodes (`evaluate_policy` hands it each
    `Step`), for trajectory records of split "eval": the agent's log-probs, values and the
    env's rewards per token (no reference log-probs or advantages: an evaluation computes
    neither). At most `MAX_KEPT` episodes are kept, the first that end."""

    MAX_KEPT = 1024

    def __init__(self) -> None:
        self.open: dict[int, dict[str, Any]] = {}  # row -> the episode it is running
        self.done: list[dict[str, Any]] = []  # tokens, numbers, return

    def observe(self, step: Any, log: EpisodeLog) -> None:
        """Take one `EnvRunner` step (`Step`) of a text env; `log`: the evaluation's episode
        log, already holding the episodes that ended at this step (their infos)."""
        if not isinstance(step.obs, dict) or "attention_mask" not in step.obs:
            return
        done = step.terminated | step.truncated
        n_done = int(done.sum())
        ended = {row: len(log.rows) - n_done + i for i, row in enumerate(np.flatnonzero(done))}
        for row in np.flatnonzero(step.valid).tolist():
            if step.first is not None and step.first[row]:
                self.open[row] = {"mask": step.obs["attention_mask"][row].clone(), "numbers": []}
            episode = self.open.get(row)
            if episode is None:
                continue
            episode["numbers"].append(
                (float(step.log_prob[row]), float(step.value[row]), float(step.reward[row]))
            )
            if not done[row]:
                continue
            del self.open[row]
            if len(self.done) >= self.MAX_KEPT:
                continue
            last = {k: v[row] for k, v in step.obs.items()}
            tokens = sequence_tokens(
                episode["mask"], last, int(step.action[row]), len(episode["numbers"])
            )
            if tokens is not None:
                j = ended[row]
                logprobs, values, rewards = (list(x) for x in zip(*episode["numbers"]))
                self.done.append({
                    "tokens": tokens, "return": log.returns[j], "info": log.infos[j] or {},
                    "numbers": {"logprobs": logprobs, "values": values, "rewards": rewards},
                })  # fmt: skip

    def records(self, k: int, texts: Any, iteration: int, step: int) -> list[dict[str, Any]]:
        """`k` of the kept episodes, spread by return, as records of split "eval" (`iteration`:
        the updates the evaluated policy had, its version)."""
        records = []
        for index in spread([e["return"] for e in self.done], k):
            episode = self.done[index]
            head = {
                "step": step, "iteration": iteration, "policy_version": iteration,
                "split": "eval", "row": None, "return": _number(episode["return"]),
                "length": len(episode["tokens"]["agent"]),
            }  # fmt: skip
            records.append(_record(episode["tokens"], episode["numbers"], episode["info"],
                                   texts, head))  # fmt: skip
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
