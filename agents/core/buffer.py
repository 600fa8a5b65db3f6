"""Preallocated (T, N) rollout storage, GAE with truncation bootstrap, minibatch iterators.

`valid[t, i]` is False for a step that is not a real transition: the reset step right after a
done under Gymnasium's NEXT_STEP autoreset (the env ignores that action and returns the first
observation of the next episode), or the steps after a row finished under "lockstep" episodes.
Invalid steps get zero advantage and are left out of every loss by masked means.

Observations and actions are stored raw, in their space's dtype and structure (a tensor; a dict
for Dict spaces, a tuple for Tuple spaces); the policy encodes them.
"""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import torch

from agents.core.distributed import RowShard
from agents.policies.base import Minibatch

TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float32,  # float64 observations are stored as float32
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
}


def _storage(space: gym.Space, prefix: tuple[int, ...], device: torch.device):
    """Zero tensor(s) of shape prefix + space.shape in the space's dtype, structured as the space:
    a dict of them for Dict spaces, a tuple for Tuple spaces (nested as the space is).
    Discrete, MultiDiscrete and MultiBinary keep their integer dtypes (int64, int64, int8 by
    default); the policy encodes them (one-hot, floats)."""
    if isinstance(space, gym.spaces.Dict):
        return {k: _storage(s, prefix, device) for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_storage(s, prefix, device) for s in space.spaces)
    if isinstance(space, gym.spaces.Discrete):
        return torch.zeros(prefix, dtype=torch.int64, device=device)
    if (
        not isinstance(space, (gym.spaces.Box, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary))
        or space.dtype is None
        or np.dtype(space.dtype) not in TORCH_DTYPES
    ):
        raise TypeError(
            f"unsupported space for the rollout buffer: {space} (supported: Box, Discrete, "
            "MultiDiscrete, MultiBinary with dtypes "
            f"{sorted(str(d) for d in TORCH_DTYPES)}, and Tuple / Dict of them)"
        )
    return torch.zeros(
        prefix + space.shape, dtype=TORCH_DTYPES[np.dtype(space.dtype)], device=device
    )


def map_structure(fn, *xs):
    """fn applied leaf-wise over tensors / arrays structured as dicts and tuples (observations of
    Dict and Tuple spaces); the first argument gives the structure."""
    x = xs[0]
    if isinstance(x, dict):
        return {k: map_structure(fn, *(y[k] for y in xs)) for k in x}
    if isinstance(x, (tuple, list)):
        return tuple(map_structure(fn, *(y[i] for y in xs)) for i in range(len(x)))
    return fn(*xs)


def _index(x, idx):
    """Apply an index to a tensor or to each tensor of a dict / tuple."""
    if isinstance(x, torch.Tensor):
        return x[idx]
    return map_structure(lambda v: v[idx], x)


def _flatten(x, n: int):
    """(T, N, ...) -> (T*N, ...) for a tensor or a dict / tuple of tensors."""
    if isinstance(x, torch.Tensor):
        return x.reshape(n, *x.shape[2:])
    return map_structure(lambda v: v.reshape(n, *v.shape[2:]), x)


class RolloutBuffer:
    """Storage for one rollout of T steps of N envs, written in place by `agents.core.rollout`."""

    def __init__(
        self,
        n_steps: int,
        num_envs: int,
        observation_space: gym.Space,
        action_space: gym.Space,
        device: str | torch.device = "cpu",
    ):
        T, N = n_steps, num_envs
        self.n_steps, self.num_envs = T, N
        self.device = torch.device(device)
        self.obs = _storage(observation_space, (T, N), self.device)  # (T, N, *obs_shape)
        self.actions = _storage(action_space, (T, N), self.device)  # (T, N, *act_shape)
        zeros = lambda dtype=torch.float32: torch.zeros(T, N, dtype=dtype, device=self.device)  # noqa: E731
        self.log_probs = zeros()
        self.values = zeros()
        self.rewards = zeros()
        self.terminated = zeros(torch.bool)
        self.truncated = zeros(torch.bool)
        self.valid = zeros(torch.bool)
        # Value of the final observation for steps whose episode was truncated when the env does
        # not show that observation at step t+1 (Gymnasium SAME_STEP autoreset); see `gae`.
        self.final_values = zeros()
        self.has_final_value = zeros(torch.bool)
        self.advantages = zeros()
        self.returns = zeros()
        self.ref_log_probs = zeros()  # the reference policy's, when the KL sits in the loss
        self.episode_weights = torch.ones(T, N, device=self.device)  # see `set_episode_weights`
        self.last_value = torch.zeros(N, device=self.device)  # V(obs after the last step)
        # diagnostics (agents/core/diagnostics.py): where each step sits in the rollout, which
        # steps start an episode, and the sampling's cut mass when the policy reports one
        self.step_index = torch.arange(T * N, device=self.device).view(T, N)  # t * N + row
        self.episode_starts = zeros(torch.bool)
        self.truncated_mass = zeros()
        self.has_truncated_mass = False
        # data-parallel runs: which of the global env rows these N are (see `_shard_minibatches`)
        self.shard: RowShard | None = None
        # rows per group (advantage.group_size): sequence minibatches take a group's K rows
        # together, so that each holds whole groups, balanced by the estimator's own baseline
        self.group_size = 1

    def clear_flags(self) -> None:
        """Reset the per-rollout masks (the rollout overwrites every other field)."""
        self.valid.zero_()
        self.terminated.zero_()
        self.truncated.zero_()
        self.has_final_value.zero_()
        self.rewards.zero_()
        self.episode_starts.zero_()

    @torch.no_grad()
    def compute_gae(self, gamma: float, gae_lambda: float) -> None:
        """Generalized advantage estimation, a backward loop over t (SB3/CleanRL style).

        delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
        A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}

        On truncation (a time limit, not a real end) the value of the final observation is
        bootstrapped instead of 0: under NEXT_STEP autoreset that observation is what the policy
        saw at step t+1 (the invalid reset step), so V(s_{t+1}) = values[t+1], or `last_value`
        after the last step. The chain is cut at every done (terminated or truncated).
        """
        next_values = torch.cat([self.values[1:], self.last_value.unsqueeze(0)])  # (T, N)
        next_values = torch.where(self.has_final_value, self.final_values, next_values)
        not_terminated = (~self.terminated).float()
        not_done = (~(self.terminated | self.truncated)).float()
        deltas = self.rewards + gamma * next_values * not_terminated - self.values
        deltas = deltas * self.valid
        advantages = self.advantages
        last = torch.zeros_like(self.last_value)
        for t in reversed(range(self.n_steps)):
            last = deltas[t] + gamma * gae_lambda * not_done[t] * last
            last = last * self.valid[t]
            advantages[t] = last
        torch.add(advantages, self.values, out=self.returns)

    @torch.no_grad()
    def set_episode_weights(self) -> None:
        """`episode_weights[t, i]` = 1 / (number of valid steps of the episode piece that step
        (t, i) belongs to), for per-sequence loss aggregation. A piece is a run of valid steps
        of one row that no done interrupts (an episode, or its part inside this rollout)."""
        done = self.terminated | self.truncated
        valid = self.valid
        # a piece starts at a valid step whose previous step (same row) is invalid or a done
        prev_open = torch.cat([torch.zeros_like(valid[:1]), valid[:-1] & ~done[:-1]])
        starts = valid & ~prev_open  # (T, N)
        piece = starts.T.reshape(-1).long().cumsum(0) - 1  # (N*T,) row-major over (N, T)
        flat_valid = valid.T.reshape(-1)
        n_pieces = int(starts.sum())
        if n_pieces == 0:
            self.episode_weights.fill_(1.0)
            return
        lengths = torch.bincount(piece[flat_valid], minlength=n_pieces).float()  # (P,)
        weights = torch.ones_like(flat_valid, dtype=torch.float32)
        weights[flat_valid] = 1.0 / lengths[piece[flat_valid]]
        self.episode_weights.copy_(weights.view(self.num_envs, self.n_steps).T)

    # -- reading ------------------------------------------------------------------------------

    def full_batch(self, sequence: bool) -> Minibatch:
        """All the data as one Minibatch: (T, N, ...) for sequence policies, else (T*N, ...)."""
        fields = (self.obs, self.actions, self.log_probs, self.values, self.advantages)
        fields += (self.returns, self.valid, self.ref_log_probs, self.episode_weights)
        fields += (self.step_index,)
        if sequence:
            return Minibatch(*fields)
        n = self.n_steps * self.num_envs
        return Minibatch(*(_flatten(f, n) for f in fields))

    def num_minibatches(self, batch_size: int, sequence: bool) -> int:
        num_envs = self.num_envs if self.shard is None else self.shard.total  # global rows
        if sequence:
            columns = max(batch_size // self.n_steps, 1)
            return -(-num_envs // columns)
        return -(-(self.n_steps * num_envs) // batch_size)

    def _row_permutation(self, rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(rows,) a random order of the env rows in which each group's K consecutive rows stay
        together (K = `group_size`; groups in random order), on the buffer's device. Drawn from
        `generator` (on the CPU), else from the device's default generator."""
        K = self.group_size
        if generator is None:
            groups = torch.randperm(rows // K, device=self.device)  # (G,)
        else:
            groups = torch.randperm(rows // K, generator=generator).to(self.device)
        if K == 1:
            return groups
        return (groups.unsqueeze(1) * K + torch.arange(K, device=self.device)).reshape(-1)

    def minibatches(self, batch_size: int, sequence: bool) -> Iterator[Minibatch]:
        """One epoch of minibatches.

        Transition policies: shuffled transitions, `batch_size` each, shapes (B, ...).
        Sequence policies: shuffled whole env columns, `batch_size // n_steps` columns each,
        shapes (T, B, ...); with groups (`group_size` K > 1) whole groups are shuffled, so a
        minibatch of a multiple of K columns holds whole groups (each balanced by a critic-free
        estimator's own baseline). When one minibatch holds the whole
        rollout, no shuffling is needed (the loss is a mean over the batch) and the stored
        tensors are handed out as they are.
        """
        if self.shard is not None and self.num_minibatches(batch_size, sequence) > 1:
            yield from self._shard_minibatches(batch_size, sequence)
            return
        full = self.full_batch(sequence)
        if sequence:
            columns = batch_size // self.n_steps
            if columns >= self.num_envs:
                yield full
                return
            perm = self._row_permutation(self.num_envs)
            for start in range(0, self.num_envs, columns):
                idx = perm[start : start + columns]
                yield Minibatch(*(_index(f, (slice(None), idx)) for f in full))
            return
        n = self.n_steps * self.num_envs
        if batch_size >= n:
            yield full
            return
        # shuffle every field once per epoch, then hand out contiguous slices (views)
        perm = torch.randperm(n, device=self.device)
        shuffled = Minibatch(*(_index(f, perm) for f in full))
        for start in range(0, n, batch_size):
            yield Minibatch(*(_index(f, slice(start, start + batch_size)) for f in shuffled))

    def _shard_minibatches(self, batch_size: int, sequence: bool) -> Iterator[Minibatch]:
        """Data-parallel epoch: this rank's part of each GLOBAL minibatch.

        Every rank draws the same permutation of the global rows (or global transitions,
        index t * total + row) from `shard.generator` and keeps the entries it owns, so the
        union over ranks of minibatch k is the 1-rank minibatch k. Parts may differ in size
        (even be empty); the loss divides by the global valid count (agents/core/ppo.py).
        """
        start, total, generator = self.shard
        local, T = self.num_envs, self.n_steps
        full = self.full_batch(sequence)
        if sequence:
            columns = batch_size // T
            perm = self._row_permutation(total, generator)
            for s in range(0, total, columns):
                rows = perm[s : s + columns]
                idx = rows[(rows >= start) & (rows < start + local)] - start
                yield Minibatch(*(_index(f, (slice(None), idx)) for f in full))
            return
        perm = torch.randperm(T * total, generator=generator).to(self.device)
        t, row = perm // total, perm % total
        owned = (row >= start) & (row < start + local)
        local_idx = t * local + row - start
        for s in range(0, T * total, batch_size):
            part = local_idx[s : s + batch_size][owned[s : s + batch_size]]
            yield Minibatch(*(_index(f, part) for f in full))
