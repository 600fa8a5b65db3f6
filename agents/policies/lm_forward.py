"""The LM policy's forward passes: the trunk, the heads, and the compute dtype they run in.

Logits are `output_embeddings(last hidden state)` and the value is `value_head(hidden state)` of
the critic's trunk (the actor's own by default), so ONE trunk pass gives both
(`_check_head_path` refuses models whose logits do more than that). `run.dtype: bfloat16` runs the
trunks and heads under `torch.autocast`; the weights, gradients, log-probs, entropies and values
stay float32.

`LMForward` is a mixin of `agents.policies.lm.LMPolicy`: it uses the policy's `model`,
`critic_model`, `value_head`, `compute_dtype`, `tokenizer` and `eos_id`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn
from transformers import DynamicCache, PreTrainedModel

from agents.policies.hf import cache_keyword
from agents.policies.lora import model_scope, transformer_of
from agents.policies.sequences import position_ids_from_mask

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # run.dtype -> autocast dtype


class LMForward:
    """Trunk and heads of `LMPolicy` under its compute dtype (see the module docstring)."""

    model: PreTrainedModel
    critic_model: Any
    value_head: nn.Linear | None
    compute_dtype: torch.dtype | None
    tokenizer: Any
    eos_id: int
    COMPUTE_DTYPES: tuple[str, ...] = tuple(DTYPES)

    def set_compute_dtype(self, dtype: str) -> None:
        """run.dtype: "float32", or "bfloat16" for forward passes under torch.autocast. The
        weights, the gradients, the optimizer state, the log-probs, entropies and values (and so
        the PPO ratio and loss) stay float32."""
        if dtype not in DTYPES:
            raise ValueError(f"run.dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.compute_dtype = DTYPES[dtype]

    def _autocast(self) -> Any:
        device = next(self.model.parameters()).device.type
        return torch.autocast(
            device, self.compute_dtype or torch.float32, self.compute_dtype is not None
        )

    def _trunk(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache | None,
    ) -> torch.Tensor:
        """Last hidden states (B, S, H) of `model`'s trunk; extends `cache` in place if given.
        `model` is a transformers causal LM, its peft wrapper, or an AdapterView (the critic's
        adapters on the actor's base, made active for this call)."""
        base = transformer_of(model)
        autocast = self._autocast() if self.compute_dtype is not None else contextlib.nullcontext()
        with model_scope(model), autocast:
            out = base(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=cache is not None,
                **{cache_keyword(type(base)): cache},
            )
        return out.last_hidden_state

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., H) -> float32 logits (..., V), without the value head."""
        if self.compute_dtype is not None:
            with self._autocast():
                return self.model.get_output_embeddings()(hidden).float()
        return self.model.get_output_embeddings()(hidden)

    def _value(self, critic_hidden: torch.Tensor) -> torch.Tensor:
        """The critic's hidden state (..., H) -> float32 value (...)."""
        if self.value_head is None:
            return critic_hidden.new_zeros(critic_hidden.shape[:-1], dtype=torch.float32)
        if self.compute_dtype is not None:
            with self._autocast():
                return self.value_head(critic_hidden).squeeze(-1).float()
        return self.value_head(critic_hidden).squeeze(-1)

    def _heads(
        self, hidden: torch.Tensor, critic_hidden: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (..., H) -> logits (..., V) and value (...) from `critic_hidden`, or from
        `hidden` when the value head reads the actor's trunk (0 without a value head)."""
        return self._logits(hidden), self._value(hidden if critic_hidden is None else critic_hidden)

    def _act_heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and value from the actor's hidden state during a rollout. A separate critic's
        values are not computed here (0): `rollout_values` scores every step after the rollout
        in one batched forward, so a token step costs one cached forward of the actor alone."""
        if self.critic_model is None:
            return self._heads(hidden, None)
        return self._logits(hidden), hidden.new_zeros(hidden.shape[:-1], dtype=torch.float32)

    @torch.no_grad()
    def _check_head_path(self) -> None:
        """We compute logits as output_embeddings(last hidden state) to get logits and the value
        input from one trunk pass; refuse models whose head does more than that."""
        ids = torch.tensor([[self.eos_id, (self.eos_id + 1) % len(self.tokenizer)]])  # (1, 2)
        mask = torch.ones_like(ids)
        full = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        hidden = self._trunk(self.model, ids, mask, position_ids_from_mask(mask), None)
        mine = self.model.get_output_embeddings()(hidden)
        if not torch.allclose(full, mine, atol=1e-4, rtol=1e-4):
            raise ValueError(
                f"model type {self.model.config.model_type!r} post-processes its logits beyond "
                "the output embedding (e.g. scaling or soft-capping); LMPolicy supports causal "
                "LMs whose logits are output_embeddings(last_hidden_state)"
            )
