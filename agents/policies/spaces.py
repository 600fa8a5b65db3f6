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
    buffer is not persistent, so it adds nothing to a checkpoint.

    One output tensor per call: float leaves are copied into their columns, and every
    categorical entry of every leaf is set by a single `scatter_` (the columns of value v in
    dimension j of a leaf: v - start_j + the leaf's block offset)."""

    def __init__(self, space: gym.Space):
        super().__init__()
        leaves = _leaves(space)
        self.dim = flat_dim(space)
        self.paths: list[tuple] = [path for path, _ in leaves]
        self.columns: list[tuple[int, int] | None] = []  # float leaves: their [a, b) columns
        offsets, column = [], 0
        for _, s in leaves:
            width = _leaf_dim(s)
            if isinstance(s, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
                nvec = np.asarray(s.n if isinstance(s, gym.spaces.Discrete) else s.nvec).ravel()
                start = np.broadcast_to(np.asarray(s.start, dtype=np.int64).ravel(), nvec.shape)
                offsets.append(column + np.concatenate([[0], np.cumsum(nvec)[:-1]]) - start)
                self.columns.append(None)
            else:
                self.columns.append((column, column + width))
            column += width
        offsets = np.concatenate(offsets) if offsets else np.zeros(0, dtype=np.int64)
        self.register_buffer("offsets", torch.as_tensor(offsets), persistent=False)
        self.has_categorical = bool(len(offsets))
        self.is_flat = len(leaves) == 1 and leaves[0][0] == () and not self.has_categorical

    def forward(self, obs: Any, batch_dims: int = 1) -> torch.Tensor:
        """obs: tensor(s) of shape (*batch, *leaf_shape), batch of `batch_dims` dims."""
        leaves = []
        for path in self.paths:
            x = obs
            for key in path:
                x = x[key]
            leaves.append(x)
        batch = leaves[0].shape[:batch_dims]
        if self.is_flat:
            return leaves[0].reshape(*batch, -1).float()
        out = torch.zeros(*batch, self.dim, device=leaves[0].device)
        categories = []
        for x, columns in zip(leaves, self.columns):
            if columns is None:
                categories.append(x.reshape(*batch, -1).long())
            else:
                out[..., columns[0] : columns[1]] = x.reshape(*batch, -1)
        if categories:
            index = torch.cat(categories, -1) if len(categories) > 1 else categories[0]
            out.scatter_(-1, index + self.offsets, 1.0)
        return out
