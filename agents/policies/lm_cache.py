"""The LM policy's KV-cache decoding engine: one cached forward per env step.

The KV cache is the policy's recurrent `state` (`LMState`). The first `act` after a reset, or
after an update made the cached keys/values stale, prefills each row's (left-padded) observation
(`_prefill`); every later `act` feeds ONLY what is new in the observation, so one env step costs
one cached forward of one token.

Any autoreset mode works (lockstep, NEXT_STEP, SAME_STEP; the native vector env or Gymnasium's
sync/async ones): the observation is the whole Markov state, so each `act` compares it, row by row,
with the observation of the previous `act` (`step_kinds`). A row that CONTINUES (the old prefix plus
the token sampled for it, and any tokens the env wrote after it) feeds those tokens; a row whose
observation is UNCHANGED (a finished lockstep row, whose actions the env ignores) gets its previous
outputs again; any other row is a new episode and RESTARTS: its prefix is encoded alone and spliced
into the batch cache (`_splice`), or, where the cache's layers do not allow that, every row is
re-encoded from its observation.

`CachedDecoding` is a mixin of `agents.policies.lm.LMPolicy`: it uses the policy's `model`,
`pad_id`, `_version`, `_trunk` (a trunk forward that extends a cache) and `_act_heads` (hidden
state -> logits, value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from agents.policies.sequences import (
    attended_width,
    first_attended,
    masked_ids,
    position_ids_from_mask,
    prefix_lengths,
    right_align,
    step_kinds,
)

Outputs = tuple[torch.Tensor, torch.Tensor]  # logits (B, V), value (B,)


# ----------------------------------------------------------------------------- cache storage

# ----------------------------------------------------------------------------- KV cache


class PreallocatedLayer(DynamicLayer):
    """A DynamicCache layer that writes new keys/values into preallocated storage (capacity
    doubles when full) instead of `torch.cat`-ing the whole cache at every step, which costs
    O(length) copies per token. Returns views of the filled part, like DynamicLayer."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.length, self._k, self._v = 0, None, None
        start, end = self.length, self.length + key_states.shape[-2]
        if self._k is None or end > self._k.shape[-2]:
            capacity = max(end + 64, 2 * end)
            k = key_states.new_empty(*key_states.shape[:-2], capacity, key_states.shape[-1])
            v = value_states.new_empty(*value_states.shape[:-2], capacity, value_states.shape[-1])
            if start:
                k[..., :start, :], v[..., :start, :] = (
                    self._k[..., :start, :],
                    self._v[..., :start, :],
                )
            self._k, self._v = k, v
        self._k[..., start:end, :] = key_states
        self._v[..., start:end, :] = value_states
        self.length = end
        self.keys, self.values = self._k[..., :end, :], self._v[..., :end, :]
        return self.keys, self.values


def new_cache(model: PreTrainedModel) -> DynamicCache:
    """A DynamicCache for `model` whose plain (full-attention) layers preallocate."""
    cache = DynamicCache(config=model.config)
    cache.layers = [
        PreallocatedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache


def spliceable(cache: DynamicCache | None, width: int) -> bool:
    """Whether rows of `cache` can be overwritten in place: every layer is a PreallocatedLayer
    holding `width` columns (sliding-window, quantized or linear-attention layers are not)."""
    return cache is not None and all(
        type(layer) is PreallocatedLayer and layer._k is not None and layer.length == width
        for layer in cache.layers
    )


# ----------------------------------------------------------------------------- state


@dataclass
class LMState:
    """Recurrent state of a batch of B rows: the KV cache and what the next step needs.

    `cache is None` means "prefill from the next observation" (at the start, or after a policy
    update made the cached keys/values stale). Row by row, the next observation is compared with
    the previous one (`obs_ids/obs_mask`) to tell a continuing row from a restarted or an
    unchanged one (`CachedDecoding._advance`).
    """

    num_envs: int
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None  # (B, S) attention mask of everything cached so far
    next_pos: torch.Tensor | None = None  # (B,) position id of the next fed token
    last_action: torch.Tensor | None = None  # (B,) token sampled at the previous step
    version: int = -1  # policy parameter version the cache was built with
    logits: torch.Tensor | None = None  # (B, V) outputs of the previous act, reused for
    value: torch.Tensor | None = None  # (B,)      rows whose observation did not change
    stale: torch.Tensor | None = None  # (B,) bool: the cache holds tokens the obs does not
    any_stale: bool = False
    # the previous observation, (B, L + 1) with a spare last column, and where the env will write
    # the sampled token if the row continues: its prefix length, or the spare column L for a
    # stale row (expected to stay unchanged)
    obs_ids: torch.Tensor | None = None
    obs_mask: torch.Tensor | None = None
    write_col: torch.Tensor | None = None  # (B, 1)
    advance: torch.Tensor | None = None  # (B, 1): 1, or 0 for a stale row
    live_end: int = -1  # the largest prefix length of a row that is not stale
    # (B,) probability mass the last act's top-k / top-p cut took away; None without a cut
    cut_mass: torch.Tensor | None = None


# ----------------------------------------------------------------------------- the engine


class CachedDecoding:
    """The cached forwards of `LMPolicy.act` (see the module docstring). A mixin: the policy
    provides `model`, `pad_id`, `_version`, and `_trunk` and `_act_heads`
    (`agents.policies.lm_forward.LMForward`)."""

    model: PreTrainedModel
    pad_id: int
    _version: int

    def _outputs(self, obs: dict[str, torch.Tensor], state: LMState) -> Outputs:
        """Logits (B, V) and value (B,) for `obs`, extending `state`'s cache, or building it when
        there is none or the parameters changed since."""
        ids, mask = obs["input_ids"].long(), obs["attention_mask"]  # (B, L)
        if state.cache is None or state.version != self._version:
            logits, value = self._prefill(obs, state)
            self._remember(ids, mask, state)
            return logits, value
        return self._advance(ids, mask, state, obs.get("from_env"))

    def _prefill(self, obs: dict[str, torch.Tensor], state: LMState) -> Outputs:
        """Encode each row's whole observed prefix; fills fresh caches in `state`."""
        ids, mask = obs["input_ids"].long(), obs["attention_mask"].long()  # (B, L)
        ends = prefix_lengths(mask)  # (B,)
        width = attended_width(mask, ends)
        ids, mask = right_align(ids, mask, ends, width, self.pad_id)  # (B, S)
        positions = position_ids_from_mask(mask)
        state.cache = new_cache(self.model)
        hidden = self._trunk(self.model, ids, mask, positions, state.cache)[:, -1]  # (B, H)
        state.mask = mask
        state.next_pos = mask.sum(1)
        state.version = self._version
        state.stale = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        return self._act_heads(hidden)

    def _reencode(self, ids: torch.Tensor, mask: torch.Tensor, state: LMState) -> Outputs:
        """Prefill every row afresh from its observation `ids/mask` (B, L)."""
        logits, value = self._prefill({"input_ids": ids, "attention_mask": mask}, state)
        self._remember(ids, mask, state)
        return logits, value

    def _splice(
        self, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, state: LMState
    ) -> bool:
        """Re-encode only `rows` (R,) from their observations `ids/mask` (B, L) into the batch
        cache of width S. Each row's prefix without its last token, from its first attended token
        (w columns at most), is encoded alone, right-aligned; its keys/values overwrite the row's
        last w cache columns in place, and the row's mask hides every older column (their old,
        finite keys/values stay, with weight exactly 0). The next `_step` then feeds the row's last
        token like any other row's. Returns False, changing nothing, when the cache's layers cannot
        be written in place or a prefix is wider than S: the caller then re-encodes every row."""
        width = state.mask.shape[1]
        if not spliceable(state.cache, width):
            return False
        row_mask = mask[rows].long()  # (R, L)
        ends = prefix_lengths(row_mask)  # (R,)
        firsts = first_attended(row_mask)  # (R,)
        span = int((ends - 1 - firsts).max())  # columns to encode: w
        if int(ends.min()) < 1 or span > width:
            return False
        new_mask = torch.zeros_like(state.mask[rows])  # (R, S)
        if span > 0:
            pre_ids, pre_mask = right_align(ids[rows], row_mask, ends - 1, span, self.pad_id)
            positions = position_ids_from_mask(pre_mask)
            part = DynamicCache(config=self.model.config)
            self._trunk(self.model, pre_ids, pre_mask, positions, part)
            for layer, new in zip(state.cache.layers, part.layers, strict=True):
                layer._k[rows, :, width - span : width] = new.keys
                layer._v[rows, :, width - span : width] = new.values
            new_mask[:, width - span :] = pre_mask
        state.mask[rows] = new_mask
        state.next_pos[rows] = new_mask.sum(1)
        state.stale[rows] = False
        return True

    def _advance(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        state: LMState,
        from_env: torch.Tensor | None = None,
    ) -> Outputs:
        """One step from a built cache: continuing rows feed their sampled token (and the tokens
        the env wrote after it: `from_env`), restarted rows are spliced in, unchanged rows get
        their previous outputs (see the module docstring)."""
        L = ids.shape[1]
        wide = state.mask.shape[1] >= 2 * L  # many restarts made the cache wide: start afresh
        if not wide and state.live_end < L:
            outputs = self._expected_step(ids, mask, state)
            if outputs is not None:
                return outputs
        if wide:
            return self._reencode(ids, mask, state)
        return self._classified_step(ids, mask, state, from_env)

    def _expected_step(
        self, ids: torch.Tensor, mask: torch.Tensor, state: LMState
    ) -> Outputs | None:
        """The hot loop (lockstep, and most steps of any mode), or None when it does not apply:
        each row is its previous observation with the sampled token written right after the
        prefix, or, if stale, unchanged. Two scatters and two comparisons, no per-row reductions."""
        L = ids.shape[1]
        exp_ids = state.obs_ids.scatter(1, state.write_col, state.last_action.unsqueeze(1))
        exp_mask = state.obs_mask.scatter(1, state.write_col, 1)
        if not (torch.equal(exp_ids[:, :L], ids) and torch.equal(exp_mask[:, :L], mask)):
            return None
        state.obs_ids, state.obs_mask = exp_ids, exp_mask
        state.write_col = state.write_col + state.advance
        state.live_end += 1
        logits, value = self._step(state, state.last_action)
        if state.any_stale:
            logits, value = self._reuse(logits, value, state.stale, state)
        return logits, value

    def _classified_step(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        state: LMState,
        from_env: torch.Tensor | None,
    ) -> Outputs:
        """The exact row-by-row step: each row continues, restarted or is unchanged."""
        L = ids.shape[1]
        ends = prefix_lengths(mask)  # (B,)
        prev = masked_ids(state.obs_ids[:, :L], state.obs_mask[:, :L])
        now = masked_ids(ids, mask)
        cont, same = step_kinds(prev, state.last_action, now, ends, from_env)
        cont = cont & ~state.stale
        restart = ~(cont | same)
        # what each row feeds: a continuing row its new columns (the sampled token, then any env
        # tokens), a restarted row its last token after the splice
        feed = (now >= 0) & (prev < 0) & cont.unsqueeze(1)  # (B, L)
        if bool(restart.any()):
            rows = restart.nonzero().squeeze(1)
            if rows.numel() == restart.numel() or not self._splice(ids, mask, rows, state):
                return self._reencode(ids, mask, state)
            feed[rows, ends[rows] - 1] = True
        logits, value = self._feed_new(ids, ends, feed, same, state)
        if bool(same.any()):
            logits, value = self._reuse(logits, value, same, state)
            # fed its sampled token anyway (the batch steps together); that token is not in
            # its observation, so the row's cache is stale until the row restarts
            state.stale = state.stale | same
        self._remember(ids, mask, state)
        return logits, value

    def _feed_new(
        self,
        ids: torch.Tensor,
        ends: torch.Tensor,
        feed: torch.Tensor,
        same: torch.Tensor,
        state: LMState,
    ) -> Outputs:
        """Feed each row's columns `feed` (B, L) bool of `ids` (an unchanged row, `same`, its
        sampled token): one token per row through `_step`, else a right-aligned block."""
        n_feed = feed.sum(1)  # (B,)
        if bool((n_feed <= 1).all()):  # one token per row: the sampled one, or a restart's last
            last = (ends - 1).clamp(min=0).unsqueeze(1)
            fed = torch.where(n_feed == 1, ids.gather(1, last).squeeze(1), state.last_action)
            return self._step(state, fed)
        # env tokens: variable counts per row, one batched forward, right-aligned
        first = feed.long().argmax(1)  # (B,)
        width = int(torch.where(n_feed > 0, ends - first, 1).max())
        block_ids, block_mask = right_align(ids, feed.long(), ends, width, self.pad_id)
        block_ids = block_ids.masked_fill(~block_mask.bool(), self.pad_id)
        block_ids[same, -1], block_mask[same, -1] = state.last_action[same], 1
        return self._feed(state, block_ids, block_mask)

    @staticmethod
    def _reuse(
        logits: torch.Tensor, value: torch.Tensor, rows: torch.Tensor, state: LMState
    ) -> Outputs:
        """The previous act's outputs for `rows` (B,) bool, whose observation is unchanged."""
        logits = torch.where(rows.unsqueeze(1), state.logits, logits)
        return logits, torch.where(rows, state.value, value)

    def _remember(self, ids: torch.Tensor, mask: torch.Tensor, state: LMState) -> None:
        """Keep the observation just acted on, and what the next act's fast path expects."""
        B, L = ids.shape
        state.obs_ids = torch.cat([ids, ids.new_full((B, 1), self.pad_id)], dim=1)
        state.obs_mask = torch.cat([mask, mask.new_zeros((B, 1))], dim=1)
        ends = prefix_lengths(mask)
        state.write_col = torch.where(state.stale, L, ends).unsqueeze(1)
        state.advance = (~state.stale).long().unsqueeze(1)
        live = ends[~state.stale]
        state.live_end = int(live.max()) if live.numel() else -1
        state.any_stale = bool(state.stale.any())

    def _position_cap(self, positions: torch.Tensor) -> torch.Tensor:
        """`positions` clamped to the model's position table. Only a finished (stale) row can
        pass its end: the batch feeds it a token at every step although its episode is over,
        and when the env wrote tokens, its sequence plus those steps can outrun the context.
        Its outputs are discarded (`_reuse`), so any position does; a live row's never exceeds
        the observation width, which fits the context (checked at construction)."""
        config = self.model.config
        cap = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 0)
        return positions.clamp(max=cap - 1) if cap else positions

    def _step(self, state: LMState, fed: torch.Tensor) -> Outputs:
        """Feed one token per row, `fed` (B,), through the cached trunk(s)."""
        ids = fed.unsqueeze(1)  # (B, 1)
        state.mask = torch.cat([state.mask, torch.ones_like(ids)], dim=1)  # (B, S+1)
        positions = self._position_cap(state.next_pos.unsqueeze(1))  # (B, 1)
        hidden = self._trunk(self.model, ids, state.mask, positions, state.cache)[:, -1]
        state.next_pos = state.next_pos + 1
        return self._act_heads(hidden)

    def _feed(self, state: LMState, ids: torch.Tensor, mask: torch.Tensor) -> Outputs:
        """Feed a (B, W) block through the cached trunk(s) in one forward: each row's tokens
        right-aligned, mask 0 on the columns before them (rows take different numbers of tokens:
        the sampled one plus the env's). Outputs at the last column, each row's last token."""
        state.mask = torch.cat([state.mask, mask], dim=1)  # (B, S+W)
        positions = state.next_pos.unsqueeze(1) + (mask.cumsum(1) - 1).clamp(min=0)  # (B, W)
        positions = self._position_cap(positions)
        hidden = self._trunk(self.model, ids, state.mask, positions, state.cache)[:, -1]
        state.next_pos = state.next_pos + mask.sum(1)
        return self._act_heads(hidden)
