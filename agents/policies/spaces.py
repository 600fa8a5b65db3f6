"""Observation encoders for flat-input policies (the MLP): any standard Gymnasium space -> floats.

`ObsEncoder(space)` turns a batch of observations, as the rollout hands them over (torch tensors
in the space's structure: a tensor, a tuple of them for Tuple spaces, a dict for Dict spaces,
nested as the space is), into one float tensor `(*batch, encoder.dim)`:

- Box, MultiBinary: the values as floats, flattened;
- Discrete(n, start): a one-hot vector of length n (`x - start`);
- MultiDiscrete(nvec, start): one one-hot block per dimension, concatenated (sum(nvec) floats);
- Tuple: its parts in order, concatenated; Dict: its parts in sorted key order, concatenated
  (nested Tuples and Dicts recurse).

This is `gymnasium.spaces.flatten` written for batched torch tensors: one `scatter_` for all the
categorical entries of a leaf instead of a per-sample numpy loop. The rollout buffer stores the
raw observations (their own dtypes); encoding happens in the policy, so it is part of the
forward pass on the minibatch.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, and Tuple / Dict of them (nested)"


def _leaves(space: gym.Space, path: tuple = ()) -> list[tuple[tuple, gym.Space]]:
    """(path, leaf space) in encoding order; a path is the keys / indices from the root."""
    if isinstance(space, gym.spaces.Tuple):
        return [leaf for i, s in enumerate(space.spaces) for leaf in _leaves(s, path + (i,))]
    if isinstance(space, gym.spaces.Dict):
        return [leaf for k in sorted(space.spaces) for leaf in _leaves(space[k], path + (k,))]
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary)):
        return [(path, space)]
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        return [(path, space)]
    raise TypeError(
        f"the MLP policy cannot encode the observation space {space}; it supports {SUPPORTED}"
    )


def flat_dim(space: gym.Space) -> int:
    """Number of floats an observation of `space` is encoded to."""
    return sum(_leaf_dim(s) for _, s in _leaves(space))


def _leaf_dim(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    return int(np.prod(space.shape))


class ObsEncoder(nn.Module):
    """Batched observations of `space` -> float32 `(*batch, dim)`. No parameters; its index
    buffers are not persistent, so it adds nothing to a checkpoint."""

    def __init__(self, space: gym.Space):
        super().__init__()
        leaves = _leaves(space)
        self.dim = flat_dim(space)
        self.paths: list[tuple] = [path for path, _ in leaves]
        # per leaf: None (Box / MultiBinary: plain floats) or the number of one-hot columns
        self.categories: list[int | None] = []
        for i, (_, s) in enumerate(leaves):
            if isinstance(s, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
                nvec = np.asarray(getattr(s, "nvec", s.n), dtype=np.int64).reshape(-1)
                start = np.asarray(s.start, dtype=np.int64).reshape(-1)
                # column of value v in dimension j: v - start_j + offset_j
                offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]) - start
                self.register_buffer(f"offsets{i}", torch.as_tensor(offsets), persistent=False)
                self.categories.append(int(nvec.sum()))
            else:
                self.categories.append(None)
        self.is_flat = len(leaves) == 1 and leaves[0][0] == () and self.categories[0] is None

    @staticmethod
    def _get(obs: Any, path: tuple) -> torch.Tensor:
        for key in path:
            obs = obs[key]
        return obs

    def forward(self, obs: Any, batch_dims: int = 1) -> torch.Tensor:
        """obs: tensor(s) of shape (*batch, *leaf_shape), batch of `batch_dims` dims."""
        parts = []
        for i, (path, n) in enumerate(zip(self.paths, self.categories)):
            x = self._get(obs, path)
            batch = x.shape[:batch_dims]
            if n is None:
                parts.append(x.reshape(*batch, -1).float())
                continue
            index = x.reshape(*batch, -1).long() + getattr(self, f"offsets{i}")  # (*batch, k)
            one_hot = torch.zeros(*batch, n, device=x.device)
            parts.append(one_hot.scatter_(-1, index, 1.0))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
