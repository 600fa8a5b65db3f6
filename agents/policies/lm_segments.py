"""How the LM policy's `evaluate` scores `(T, B)` whole-episode columns with few forwards.

Each column is cut into segments: maximal runs of valid steps whose observation is the previous
one plus the previous action, and any tokens the env wrote after it (`step_kinds`; a new episode
starts a new segment), as `act` tells them apart. Every observation of a segment is a prefix of
its last one, so ONE teacher-forced forward over the last observation's prefix scores them all:
the action of step t is predicted at the last token of observation t. `plan_columns` finds the
segments, the sequences to run and, for each valid step, where its prediction is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from agents.policies.sequences import (
    attended_width,
    masked_ids,
    position_ids_from_mask,
    prefix_lengths,
    right_align,
    step_kinds,
)


@dataclass
class EvalPlan:
    """How `evaluate` scores `(T, B)` columns: K sequences (one per segment, right-aligned to
    width S) and, for each of the n valid steps, the sequence and column that predict its
    action."""

    seq: torch.Tensor  # (K, S) token ids
    seq_mask: torch.Tensor  # (K, S)
    positions: torch.Tensor  # (K, S)
    k_f: torch.Tensor  # (n,) sequence of each valid step
    col: torch.Tensor  # (n,) column of each valid step
    actions: torch.Tensor  # (n,) each valid step's action
    step_f: torch.Tensor  # (n,) flat b * T + t of each valid step
    T: int
    B: int

    def to_steps(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) per valid step -> (T, B), 0 on invalid steps."""
        out = torch.zeros(self.B * self.T, dtype=x.dtype, device=x.device)
        out[self.step_f] = x
        return out.view(self.B, self.T).T


def plan_columns(batch: Any, pad_id: int) -> EvalPlan | None:
    """The segments of `batch`'s `(T, B)` columns and the sequences that score them, padded with
    `pad_id` (None when no step is valid)."""
    ids, mask = batch.obs["input_ids"].long(), batch.obs["attention_mask"].long()  # (T, B, L)
    from_env = batch.obs.get("from_env") if isinstance(batch.obs, Mapping) else None
    actions, valid = batch.actions.long(), batch.valid.bool()  # (T, B)
    T, B, L = ids.shape

    # 1. segments, enumerated column by column: (B, T) layout, flattened
    ends = prefix_lengths(mask)  # (T, B)
    prev_valid = torch.cat([torch.zeros_like(valid[:1]), valid[:-1]], dim=0)
    observed = masked_ids(ids, mask)  # (T, B, L)
    linked = torch.zeros_like(valid)  # (T, B): step t continues step t-1's episode
    linked[1:] = step_kinds(
        observed[:-1],
        actions[:-1],
        observed[1:],
        ends[1:],
        None if from_env is None else from_env[1:],
    )[0]
    starts = valid & ~(prev_valid & linked)  # (T, B)
    starts_f, valid_f = starts.T.reshape(-1), valid.T.reshape(-1)  # (B*T,)
    seg_of = starts_f.long().cumsum(0) - 1  # (B*T,) segment index of each valid step
    start_idx = starts_f.nonzero().squeeze(1)  # (K,) flat (b*T + t) index of each start
    K = start_idx.numel()
    if K == 0:
        return None
    seg_b, seg_t0 = start_idx // T, start_idx % T  # (K,)
    lengths = torch.bincount(seg_of[valid_f], minlength=K)  # (K,)
    seg_t1 = seg_t0 + lengths - 1  # (K,) the segment's last step

    # 2. sequences: each segment's last observation prefix, right-aligned to width S
    last_end = ends[seg_t1, seg_b]  # (K,)
    last_mask = mask[seg_t1, seg_b]  # (K, L)
    S = attended_width(last_mask, last_end)
    seq, seq_mask = right_align(ids[seg_t1, seg_b], last_mask, last_end, S, pad_id)
    positions = position_ids_from_mask(seq_mask)

    # the valid steps: step t's action is predicted at observation t's last token
    step_f = valid_f.nonzero().squeeze(1)  # (n,) flat b*T + t of each valid step
    t_f, b_f, k_f = step_f % T, step_f // T, seg_of[step_f]
    col = ends[t_f, b_f] - 1 + (S - last_end[k_f])  # (n,) column in the segment's sequence
    return EvalPlan(seq, seq_mask, positions, k_f, col, actions[t_f, b_f], step_f, T, B)
