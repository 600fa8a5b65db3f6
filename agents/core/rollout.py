"""Rollout collection: the only place that steps environments (training and evaluation alike).

Works with any Gymnasium VectorEnv: sync, async, or a native one (`vector_entry_point`, such as
CartPole's). The autoreset mode is read from `env.metadata["autoreset_mode"]`:

- NEXT_STEP (Gymnasium's default): after a done, the next `step` resets that row and ignores the
  action. That step is stored with `valid = False`; its observation is the episode's final one, so
  its value is the truncation bootstrap (see `RolloutBuffer.compute_gae`).
- SAME_STEP: the final observation comes in `info["final_obs"]`; its value is stored explicitly.
- "lockstep" (textenv's vector env): every row starts at `reset()`; a finished row stays finished
  and its later steps are invalid until every row is done, then all rows reset together. A
  training rollout starts with that reset and ends when every row is done or after T steps.

`EnvRunner` is the one episode-stepping loop body: policy action -> env action (Box actions are
clipped here only), validity under the autoreset mode, episode returns and lengths, and the infos
of finished episodes. `RolloutCollector` (training) and `agents.run.evaluation` (evaluation) both
drive it. Finished episodes are reported generically: numeric final-step info entries become
metrics `episode/<key>` (nested dicts flattened with "/"), string entries become text samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from agents.core.buffer import RolloutBuffer, map_structure

LOCKSTEP = "lockstep"
NEXT_STEP = "next_step"
SAME_STEP = "same_step"


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
    """numpy observation(s) -> C-contiguous torch tensor(s), in the space's structure (dicts stay
    dicts, tuples stay tuples; nested as the space is). float64 becomes float32.

    No copy on CPU unless the env's array is laid out otherwise (CartPoleVectorEnv returns the
    transpose of its (4, N) state): the policy always sees one memory layout, because a matmul
    over a transposed input can round differently, and an observation restored from a
    checkpoint is C-contiguous, so without this a resumed run would drift from the
    uninterrupted one in the last bits."""
    if isinstance(obs, dict):
        return {k: obs_to_tensor(v, device) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(obs_to_tensor(v, device) for v in obs)
    array = np.asarray(obs)
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    tensor = torch.from_numpy(array)
    if tensor.dtype == torch.float64:
        tensor = tensor.float()
    return tensor.to(device) if tensor.device != torch.device(device) else tensor


def _write(dst: Any, src: Any) -> None:
    """Copy `src` into the storage `dst` (tensors, or dicts / tuples of them)."""
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    else:
        map_structure(lambda d, s: d.copy_(s), dst, src)


def _index_t(x: Any, t: int) -> Any:
    """Step `t` of (T, N, ...) storage (tensors, or dicts / tuples of them)."""
    return x[t] if isinstance(x, torch.Tensor) else map_structure(lambda v: v[t], x)


def flatten_arrays(x: Any, path: str = "") -> dict[str, np.ndarray]:
    """A structured observation (array, dict, tuple; nested) -> flat {path: array}: the array
    itself at "", dict entries and tuple items at "<key or index>/..." (flat string keys for a
    safetensors checkpoint)."""
    if isinstance(x, dict):
        items = list(x.items())
    elif isinstance(x, tuple):
        items = list(enumerate(x))
    else:
        return {path: np.asarray(x)}
    out: dict[str, np.ndarray] = {}
    for key, item in items:
        out.update(flatten_arrays(item, f"{path}/{key}" if path else str(key)))
    return out


def unflatten_arrays(space: gym.Space, arrays: dict[str, np.ndarray], path: str = "") -> Any:
    """Inverse of `flatten_arrays`, with the structure read from the (single-row) space."""
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        keys = list(space.spaces) if isinstance(space, gym.spaces.Dict) else range(len(space))
        parts = [
            unflatten_arrays(space[k], arrays, f"{path}/{k}" if path else str(k)) for k in keys
        ]
        return dict(zip(keys, parts)) if isinstance(space, gym.spaces.Dict) else tuple(parts)
    if path not in arrays:
        raise KeyError(f"no saved observation array {path!r} (saved: {sorted(arrays)})")
    return arrays[path].copy()


# ----------------------------------------------------------------------------- episode infos


@dataclass
class EpisodeLog:
    """What finished during one rollout: env returns/lengths, numeric infos, text samples."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    rollout_steps: list[int] = field(default_factory=list)  # runner step (0-based) of each end
    metrics: dict[str, list[float]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # env row of each finished episode
    # each finished episode's string and numeric final infos (None: it had none), as `returns`
    infos: list[dict[str, Any] | None] = field(default_factory=list)


def collect_infos(info: dict, rows: np.ndarray, log: EpisodeLog) -> None:
    """Add the final-step infos of the finished `rows` (vectorized Gymnasium-style infos with
    `_key` masks; nested dicts are flattened to "a/b"). Numeric entries become metrics; a row
    with string entries becomes a sample holding its strings and its numeric entries; each row's
    strings and numbers are its entry of `log.infos` (in the order of `rows`)."""
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
    for i in rows:
        entry = {**strings.get(int(i), {}), **numbers.get(int(i), {})}
        log.infos.append(entry or None)


# ----------------------------------------------------------------------------- stepping


class Step(NamedTuple):
    """One step of N env rows, as the runner took it."""

    obs: Any  # tensor(s) the policy acted on, (N, ...)
    action: torch.Tensor  # (N, ...) as sampled (unclipped)
    log_prob: torch.Tensor  # (N,)
    value: torch.Tensor  # (N,)
    reward: np.ndarray  # (N,) env reward, 0 on steps that are not counted
    terminated: np.ndarray  # (N,) bool, counted steps only
    truncated: np.ndarray  # (N,) bool, counted steps only
    valid: np.ndarray  # (N,) bool: a real transition of a counted episode
    info: dict
    first: np.ndarray | None = None  # (N,) bool: a valid step that starts its episode
    cut_mass: torch.Tensor | None = None  # (N,) `policy.truncated_mass` after this act


def to_env_action(action: torch.Tensor, space: gym.Space) -> np.ndarray:
    """Policy action -> env action (N, *action_shape) in the space's dtype. Box actions are
    clipped to the space only here; the buffer keeps the unclipped sample so that its log-prob
    stays exact. Discrete / MultiDiscrete categories (counted from 0 by the policy) are shifted by
    the space's `start`."""
    start = getattr(space, "start", None)
    start = None if start is None or not np.any(start) else np.asarray(start)
    return _env_action(action, space, isinstance(space, gym.spaces.Box), start)


def _env_action(
    action: torch.Tensor, space: gym.Space, clip: bool, start: np.ndarray | None
) -> np.ndarray:
    action = action.cpu().numpy()
    if clip:
        return np.clip(action, space.low, space.high)
    if start is not None:
        action = action + start
    dtype = space.dtype
    return action if dtype is None or action.dtype == dtype else action.astype(dtype)


class EnvRunner:
    """Steps a vector env with a policy and keeps the carry-over between steps: the next
    observation, the policy's recurrent state, which rows' next step is not a real transition,
    and the running episode returns and lengths."""

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        policy: Any,
        device: str | torch.device = "cpu",
        reset_options: dict[str, Any] | None = None,
    ):
        self.env, self.policy = env, policy
        self.reset_options = reset_options or None  # passed to every env.reset
        self.device = torch.device(device)
        self.mode = autoreset_mode(env)
        self.num_envs = env.num_envs
        self.action_space = env.single_action_space
        self.clip_actions = isinstance(self.action_space, gym.spaces.Box)
        # policies sample categories from 0: Discrete / MultiDiscrete spaces may start elsewhere
        start = getattr(self.action_space, "start", None)
        self.action_start = None if start is None or not np.any(start) else np.asarray(start)
        self.obs: Any = None  # next observation (numpy), None until the first reset
        self.state: Any = None
        # rows whose next step is not a real transition: the NEXT_STEP reset step, or a
        # lockstep row that already finished
        self.skip = np.zeros(self.num_envs, dtype=bool)
        self.ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self.all_rows = np.ones(self.num_envs, dtype=bool)  # default `counted`, made once

    def reset(self, seed: int | None = None) -> None:
        self.obs, _ = self.env.reset(seed=seed, options=self.reset_options)
        self.state = self.policy.initial_state(self.num_envs)
        self.skip[:] = False
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """Policy action -> env action (`to_env_action`, with the space's facts looked up once)."""
        return _env_action(action, self.action_space, self.clip_actions, self.action_start)

    @torch.no_grad()
    def step(
        self,
        log: EpisodeLog,
        deterministic: bool = False,
        counted: np.ndarray | None = None,
        t: int = 0,
    ) -> Step:
        """Act and step every row once. Episodes that end on a counted row (`counted` (N,) bool,
        default all) are added to `log` at step index `t`; the other rows still step but are not
        recorded. Under lockstep, all rows reset together once every counted row is done."""
        counted = self.all_rows if counted is None else counted
        if self.obs is None or (self.mode == LOCKSTEP and (self.skip | ~counted).all()):
            self.reset()
        obs = obs_to_tensor(self.obs, self.device)
        action, log_prob, value, self.state = self.policy.act(obs, self.state, deterministic)
        cut_mass = self.policy.truncated_mass(self.state)
        valid = ~self.skip & counted  # (N,)
        first = valid & (self.ep_length == 0)  # nothing of this episode counted yet
        self.obs, reward, terminated, truncated, info = self.env.step(self.env_action(action))
        ended = terminated | truncated  # (N,) every row whose episode ends here
        terminated = terminated & valid
        truncated = truncated & valid
        done = terminated | truncated
        reward = reward * valid
        self.ep_return += reward
        self.ep_length += valid
        if done.any():
            rows = np.flatnonzero(done)
            log.returns.extend(self.ep_return[rows].tolist())
            log.lengths.extend(self.ep_length[rows].tolist())
            log.rollout_steps.extend([t] * len(rows))
            log.rows.extend(rows.tolist())
            self.ep_return[rows] = 0.0
            self.ep_length[rows] = 0
            collect_infos(info.get("final_info", info), rows, log)
        if self.mode == LOCKSTEP:
            self.skip |= ended  # finished rows wait for the others
            self.state = self.policy.reset_state(self.state, self.skip)
        else:
            if self.mode == NEXT_STEP:
                self.skip = ended  # the env resets these rows at the next step
            self.state = self.policy.reset_state(self.state, ended)
        return Step(
            obs, action, log_prob, value, reward, terminated, truncated, valid, info, first,
            cut_mass,
        )  # fmt: skip

    # -- checkpointing of the carry-over -------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Carry-over arrays for a checkpoint (the policy's recurrent state is not saved). The
        next observation is saved leaf by leaf: `obs/` for an array, `obs/<key>/<index>/...` for
        Dict and Tuple observations (nested)."""
        out = {"skip": self.skip, "ep_return": self.ep_return, "ep_length": self.ep_length}
        if self.obs is not None:
            out.update({f"obs/{k}": v for k, v in flatten_arrays(self.obs).items()})
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.skip = arrays["skip"].astype(bool).copy()
        self.ep_return = arrays["ep_return"].astype(np.float64).copy()
        self.ep_length = arrays["ep_length"].astype(np.int64).copy()
        obs = {k[4:]: v for k, v in arrays.items() if k.startswith("obs/")}
        if obs:
            self.obs = unflatten_arrays(self.env.single_observation_space, obs)
            self.state = self.policy.initial_state(self.num_envs)


# ----------------------------------------------------------------------------- training rollouts


class RolloutCollector:
    """Fills a `RolloutBuffer` with T steps of every env row through an `EnvRunner`."""

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        policy: Any,
        buffer: RolloutBuffer,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        reset_options: dict[str, Any] | None = None,
    ):
        self.runner = EnvRunner(env, policy, device, reset_options)
        self.policy, self.buffer = policy, buffer
        self.seed = seed  # of the first reset only

    @torch.no_grad()
    def collect(self) -> EpisodeLog:
        """Fill the buffer with T steps of every env (fewer under lockstep if all rows end).

        Per-step flags and rewards go to numpy arrays and policy outputs to lists; both are
        copied into the buffer once at the end (one op per field instead of one per step).
        """
        buf, runner, log = self.buffer, self.runner, EpisodeLog()
        if runner.obs is None:
            runner.reset(seed=self.seed)
        lockstep = runner.mode == LOCKSTEP
        T, N = buf.n_steps, runner.num_envs
        rewards = np.zeros((T, N), dtype=np.float32)
        terminated = np.zeros((T, N), dtype=bool)
        truncated = np.zeros((T, N), dtype=bool)
        valid = np.zeros((T, N), dtype=bool)
        first = np.zeros((T, N), dtype=bool)
        actions, log_probs, values, cut_mass = [], [], [], []
        buf.has_final_value.zero_()
        for t in range(T):
            step = runner.step(log, t=t)
            _write(_index_t(buf.obs, t), step.obs)
            actions.append(step.action)
            log_probs.append(step.log_prob)
            values.append(step.value)
            rewards[t], terminated[t], truncated[t] = step.reward, step.terminated, step.truncated
            valid[t], first[t] = step.valid, step.first
            if step.cut_mass is not None:
                cut_mass.append(step.cut_mass)
            if runner.mode == SAME_STEP and step.truncated.any():
                self._store_final_values(t, step.info, step.truncated)
            if lockstep and runner.skip.all():
                break
        if lockstep and not runner.skip.all():
            # the next rollout resets every row: unfinished episodes would never be scored
            raise ValueError(
                f"ppo.n_steps={T} is shorter than this lockstep env's episodes: "
                f"{int((~runner.skip).sum())} of {N} rows were still running after {T} steps; "
                "set ppo.n_steps >= the env's episode length limit"
            )
        n = len(actions)  # T, or fewer when every lockstep row ended early
        buf.actions[:n] = torch.stack(actions)
        buf.log_probs[:n] = torch.stack(log_probs)
        buf.values[:n] = torch.stack(values)
        buf.rewards.copy_(torch.from_numpy(rewards))
        buf.terminated.copy_(torch.from_numpy(terminated))
        buf.truncated.copy_(torch.from_numpy(truncated))
        buf.valid.copy_(torch.from_numpy(valid))
        buf.episode_starts.copy_(torch.from_numpy(first))
        buf.has_truncated_mass = len(cut_mass) == n
        if buf.has_truncated_mass:
            buf.truncated_mass[:n] = torch.stack(cut_mass)
        if self.policy.values_after_rollout:
            # values the policy did not compute while acting (e.g. a separate critic), for
            # every step at once: the whole rollout as (T, N) columns
            buf.values.copy_(self.policy.rollout_values(buf.full_batch(sequence=True)))
        if lockstep:
            buf.last_value.zero_()  # nothing to bootstrap: every row ended
        else:
            buf.last_value.copy_(
                self.policy.predict_value(obs_to_tensor(runner.obs, runner.device), runner.state)
            )
        return log

    def _store_final_values(self, t: int, info: dict, truncated: np.ndarray) -> None:
        """SAME_STEP autoreset: the truncated rows' final observations are in the info; store
        their values for the bootstrap (`RolloutBuffer.compute_gae`)."""
        rows = np.flatnonzero(truncated)
        final_obs = info["final_obs"]
        stacked = map_structure(lambda *rows_obs: np.stack(rows_obs), *(final_obs[i] for i in rows))
        values = self.policy.predict_value(obs_to_tensor(stacked, self.runner.device), None)
        idx = torch.from_numpy(rows)
        self.buffer.final_values[t, idx] = values
        self.buffer.has_final_value[t, idx] = True
