"""Rollout collection: the only place that steps environments.

Works with any Gymnasium VectorEnv: sync, async, or a native one (`vector_entry_point`, such as
CartPole's). The autoreset mode is read from `env.metadata["autoreset_mode"]`:

- NEXT_STEP (Gymnasium's default): after a done, the next `step` resets that row and ignores the
  action. That step is stored with `valid = False`; its observation is the episode's final one, so
  its value is the truncation bootstrap (see `RolloutBuffer.compute_gae`).
- SAME_STEP: the final observation comes in `info["final_obs"]`; its value is stored explicitly.
- "lockstep" (textenv's vector env): every row starts at `reset()` at the beginning of each
  rollout; a finished row stays finished and its later steps are invalid. The rollout ends when
  every row is done or after T steps.

Finished episodes are reported generically: numeric final-step info entries become metrics
`episode/<key>` (nested dicts flattened with "/"), string entries become text samples.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.core.buffer import RolloutBuffer
from agents.core.kl import kl_estimate

LOCKSTEP = "lockstep"
NEXT_STEP = "next_step"
SAME_STEP = "same_step"
VECTORIZATION_MODES = ("auto", "vector_entry_point", "sync", "async")


# ----------------------------------------------------------------------------- env creation


def make_env(
    env_id: str, num_envs: int, vectorization: str = "auto", kwargs: dict | None = None
) -> gym.vector.VectorEnv:
    """`gym.make_vec` with a clear error for unknown ids. "auto" picks the env's native
    `vector_entry_point` when its spec has one (e.g. CartPole-v1), else "sync"."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.5)
        hint = f"; close matches: {close}" if close else ""
        raise ValueError(f"unknown env id {env_id!r} ({err}){hint}") from None
    if vectorization not in VECTORIZATION_MODES:
        raise ValueError(
            f"env.vectorization must be one of {list(VECTORIZATION_MODES)}, got {vectorization!r}"
        )
    if vectorization == "auto":
        vectorization = "vector_entry_point" if spec.vector_entry_point else "sync"
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode=vectorization, **(kwargs or {})
    )


def autoreset_mode(env: gym.vector.VectorEnv) -> str:
    """The env's autoreset mode as one of "next_step", "same_step", "lockstep"."""
    mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    mode = getattr(mode, "value", mode)
    names = {"NextStep": NEXT_STEP, "SameStep": SAME_STEP, LOCKSTEP: LOCKSTEP}
    if mode not in names:
        raise ValueError(
            f"unsupported autoreset mode {mode!r}; supported: NEXT_STEP, SAME_STEP, 'lockstep'"
        )
    return names[mode]


def obs_to_tensor(obs: Any, device: torch.device | str = "cpu") -> Any:
    """numpy observation(s) -> torch tensor(s) without copying on CPU (dicts stay dicts)."""
    if isinstance(obs, dict):
        return {k: obs_to_tensor(v, device) for k, v in obs.items()}
    tensor = torch.from_numpy(np.asarray(obs))
    if tensor.dtype == torch.float64:
        tensor = tensor.float()
    return tensor.to(device) if tensor.device != torch.device(device) else tensor


def _write(dst: Any, src: Any) -> None:
    if isinstance(dst, dict):
        for k in dst:
            dst[k].copy_(src[k])
    else:
        dst.copy_(src)


# ----------------------------------------------------------------------------- episode infos


@dataclass
class EpisodeLog:
    """What finished during one rollout: env returns/lengths, numeric infos, text samples."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    rollout_steps: list[int] = field(default_factory=list)  # rollout step t (0-based) of each end
    metrics: dict[str, list[float]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


def _collect_infos(info: dict, rows: np.ndarray, log: EpisodeLog) -> None:
    """Add the final-step infos of the finished `rows` (vectorized Gymnasium-style infos with
    `_key` masks; nested dicts are flattened to "a/b"). Numeric entries become metrics; a row
    with string entries becomes a sample holding its strings and its numeric entries."""
    strings: dict[int, dict[str, Any]] = {}
    numbers: dict[int, dict[str, float]] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if key.startswith("_") or key == "final_obs":
                continue
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
                continue
            value, mask = np.asarray(value), node.get(f"_{key}")
            if value.ndim == 0:
                continue
            for i in rows:
                if mask is not None and not mask[i]:
                    continue
                item = value[i]
                if isinstance(item, str):
                    strings.setdefault(int(i), {})[prefix + key] = item
                elif isinstance(item, (int, float, np.number, bool, np.bool_)):
                    log.metrics.setdefault(prefix + key, []).append(float(item))
                    numbers.setdefault(int(i), {})[prefix + key] = float(item)

    walk(info, "")
    for i, sample in strings.items():
        log.samples.append({**sample, **numbers.get(i, {})})


# ----------------------------------------------------------------------------- collector


class RolloutCollector:
    """Steps `env` with `policy`, writing into `buffer`; keeps the carry-over between rollouts
    (next observation, recurrent state, running episode returns)."""

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        policy: Any,
        buffer: RolloutBuffer,
        seed: int | None = None,
        device: str | torch.device = "cpu",
    ):
        self.env, self.policy, self.buffer = env, policy, buffer
        self.device = torch.device(device)
        self.mode = autoreset_mode(env)
        self.num_envs = env.num_envs
        self.seed = seed
        self.action_space = env.single_action_space
        self.clip_actions = isinstance(self.action_space, gym.spaces.Box)
        self.obs: Any = None  # next observation (numpy), None until the first reset
        self.state: Any = None
        self.reset_next = np.zeros(self.num_envs, dtype=bool)  # NEXT_STEP rows to be reset
        self.ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)

    def _reset(self) -> None:
        seed, self.seed = self.seed, None  # seed only the very first reset
        self.obs, _ = self.env.reset(seed=seed)
        self.state = self.policy.initial_state(self.num_envs)
        self.reset_next[:] = False
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0

    def _env_action(self, action: torch.Tensor) -> np.ndarray:
        """Policy action -> env action. Box actions are clipped to the space only here; the
        buffer keeps the unclipped sample so that its log-prob stays exact."""
        action = action.cpu().numpy()
        if self.clip_actions:
            return np.clip(action, self.action_space.low, self.action_space.high)
        return action

    @torch.no_grad()
    def collect(self) -> EpisodeLog:
        """Fill the buffer with T steps of every env (fewer under lockstep if all rows end).

        Per-step flags and rewards go to numpy arrays and policy outputs to lists; both are
        copied into the buffer once at the end (one op per field instead of one per step).
        """
        buf, policy, log = self.buffer, self.policy, EpisodeLog()
        if self.obs is None or self.mode == LOCKSTEP:
            self._reset()
        T, N = buf.n_steps, self.num_envs
        rewards = np.zeros((T, N), dtype=np.float32)
        terminated_all = np.zeros((T, N), dtype=bool)
        truncated_all = np.zeros((T, N), dtype=bool)
        valid_all = np.zeros((T, N), dtype=bool)
        actions, log_probs, values = [], [], []
        buf.has_final_value.zero_()
        finished = np.zeros(N, dtype=bool)  # lockstep: rows done in this rollout
        for t in range(T):
            obs = obs_to_tensor(self.obs, self.device)
            action, log_prob, value, self.state = policy.act(obs, self.state)
            valid = ~(finished if self.mode == LOCKSTEP else self.reset_next)  # (N,)
            _write(_index_t(buf.obs, t), obs)
            actions.append(action)
            log_probs.append(log_prob)
            values.append(value)
            valid_all[t] = valid

            self.obs, reward, terminated, truncated, info = self.env.step(self._env_action(action))
            terminated = terminated & valid
            truncated = truncated & valid
            done = terminated | truncated
            reward = reward * valid
            rewards[t] = reward
            terminated_all[t] = terminated
            truncated_all[t] = truncated
            self.ep_return += reward
            self.ep_length += valid

            if done.any():
                rows = np.flatnonzero(done)
                log.returns.extend(self.ep_return[rows].tolist())
                log.lengths.extend(self.ep_length[rows].tolist())
                log.rollout_steps.extend([t] * len(rows))
                self.ep_return[rows] = 0.0
                self.ep_length[rows] = 0
                _collect_infos(info.get("final_info", info), rows, log)
                if self.mode == SAME_STEP:
                    self._store_final_values(t, info, truncated)
                finished |= done
            self.state = policy.reset_state(self.state, finished if self.mode == LOCKSTEP else done)
            if self.mode == NEXT_STEP:
                self.reset_next = done  # the env resets these rows at the next step
            if self.mode == LOCKSTEP and finished.all():
                break

        if self.mode == LOCKSTEP and not finished.all():
            # the next rollout resets every row: unfinished episodes would never be scored
            raise ValueError(
                f"ppo.n_steps={T} is shorter than this lockstep env's episodes: "
                f"{int((~finished).sum())} of {N} rows were still running after {T} steps; "
                "set ppo.n_steps >= the env's episode length limit"
            )
        n = len(actions)  # T, or fewer when every lockstep row ended early
        buf.actions[:n] = torch.stack(actions)
        buf.log_probs[:n] = torch.stack(log_probs)
        buf.values[:n] = torch.stack(values)
        buf.rewards.copy_(torch.from_numpy(rewards))
        buf.terminated.copy_(torch.from_numpy(terminated_all))
        buf.truncated.copy_(torch.from_numpy(truncated_all))
        buf.valid.copy_(torch.from_numpy(valid_all))
        if self.mode == LOCKSTEP:
            buf.last_value.zero_()  # nothing to bootstrap: every row ended
        else:
            buf.last_value.copy_(
                policy.predict_value(obs_to_tensor(self.obs, self.device), self.state)
            )
        return log

    def _store_final_values(self, t: int, info: dict, truncated: np.ndarray) -> None:
        """SAME_STEP autoreset: the truncated rows' final observations are in the info; store
        their values for the bootstrap (`RolloutBuffer.compute_gae`)."""
        rows = np.flatnonzero(truncated)
        if len(rows) == 0:
            return
        final_obs = info["final_obs"]
        stacked = (
            {k: np.stack([final_obs[i][k] for i in rows]) for k in final_obs[rows[0]]}
            if isinstance(final_obs[rows[0]], dict)
            else np.stack([final_obs[i] for i in rows])
        )
        values = self.policy.predict_value(obs_to_tensor(stacked, self.device), None)
        idx = torch.from_numpy(rows)
        self.buffer.final_values[t, idx] = values
        self.buffer.has_final_value[t, idx] = True

    # -- checkpointing of the carry-over -------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Carry-over arrays for a checkpoint (MLP-style policies: recurrent state not saved)."""
        out = {
            "reset_next": self.reset_next,
            "ep_return": self.ep_return,
            "ep_length": self.ep_length,
        }
        if self.obs is not None:
            obs = self.obs if isinstance(self.obs, dict) else {"": self.obs}
            out.update({f"obs/{k}": np.asarray(v) for k, v in obs.items()})
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.reset_next = arrays["reset_next"].astype(bool).copy()
        self.ep_return = arrays["ep_return"].astype(np.float64).copy()
        self.ep_length = arrays["ep_length"].astype(np.int64).copy()
        obs = {k[4:]: v.copy() for k, v in arrays.items() if k.startswith("obs/")}
        if obs:
            self.obs = obs.get("", obs)
            self.state = self.policy.initial_state(self.num_envs)
            self.seed = None


def _index_t(x: Any, t: int) -> Any:
    return {k: v[t] for k, v in x.items()} if isinstance(x, dict) else x[t]


# ----------------------------------------------------------------------------- KL penalty


@torch.no_grad()
def apply_kl_penalty(
    buffer: RolloutBuffer, policy: Any, reference: Any, beta: float, estimator: str
) -> dict[str, float]:
    """Add `-beta * kl_t` to the rewards of valid steps; return KL statistics.

    Both log-probs come from `evaluate` on the same data (the policy has not changed since the
    rollout), so a reference equal to the policy gives a penalty of exactly 0.
    `kl_to_ref` is the KL summed over each episode segment, averaged over segments.
    """
    sequence = policy.is_sequence_policy
    batch = buffer.full_batch(sequence)
    log_prob = policy.evaluate(batch)[0]
    ref_log_prob = reference.evaluate(batch)[0]
    T, N = buffer.n_steps, buffer.num_envs
    kl = kl_estimate(log_prob, ref_log_prob, estimator).reshape(T, N) * buffer.valid
    buffer.rewards.sub_(beta * kl)
    # segments: runs of valid steps between dones (one per episode piece in this rollout)
    done = buffer.terminated | buffer.truncated
    prev_open = torch.cat([torch.zeros_like(buffer.valid[:1]), buffer.valid[:-1] & ~done[:-1]])
    n_segments = max(int((buffer.valid & ~prev_open).sum()), 1)
    n_valid = max(int(buffer.valid.sum()), 1)
    return {
        "kl_to_ref": float(kl.sum()) / n_segments,
        "kl_per_step": float(kl.sum()) / n_valid,
        "kl_segments": n_segments,
        "beta": beta,
    }


def timed_collect(collector: RolloutCollector) -> tuple[EpisodeLog, float]:
    start = time.perf_counter()
    log = collector.collect()
    return log, time.perf_counter() - start
