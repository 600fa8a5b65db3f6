"""transformers models for the LM policy: loading from local folders, and the KV cache.

Everything is read from a local folder (`from_pretrained(path)`, safetensors only): nothing is
downloaded at run time. The KV cache (`new_cache`) preallocates its storage, so that a token step
writes into it instead of copying the whole cache.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "assets" / "tiny-sft"


def context_size(config: Any) -> int | None:
    """The model's maximum sequence length, whatever the architecture calls it."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_folder(path: str | os.PathLike) -> Path:
    """`path` as a Path; FileNotFoundError with a clear message unless it is a folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model path {str(path)!r} does not exist or is not a folder; expected a local "
            "transformers model folder (config.json + model.safetensors), or policy.model_path: "
            f"null for the built-in default model at {DEFAULT_MODEL_PATH}"
        )
    return path


def load_causal_lm(path: str | os.PathLike) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(path)` from a local folder, with a clear error."""
    return AutoModelForCausalLM.from_pretrained(model_folder(path), use_safetensors=True)


def load_critic(path: str | os.PathLike) -> tuple[PreTrainedModel, nn.Linear | None]:
    """The separate critic's model from a local folder, and the head its value head starts from:
    a causal LM (no head: the value head starts fresh), or a reward model, i.e. a one-label
    `...ForSequenceClassification` (its score head: the critic starts as the reward model)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = model_folder(path)
    config = AutoConfig.from_pretrained(folder)
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        return load_causal_lm(folder), None
    if config.num_labels != 1:
        raise ValueError(
            f"policy.critic_path={str(path)!r} is a sequence classifier with {config.num_labels} "
            "labels; a reward model to start the critic from has exactly 1 (a scalar score)"
        )
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise ValueError(
            f"policy.critic_path={str(path)!r}: the reward model's score head is not a "
            f"Linear(hidden, 1) (got {type(head).__name__}); cannot start the value head from it"
        )
    return model, head


@functools.cache
def cache_keyword(model_class: type) -> str:
    """The name under which `model_class.forward` takes the KV cache: `cache` where it exists
    (recent transformers, e.g. 5.24, which deprecates `past_key_values` with a FutureWarning at
    every call and drops it in 5.40), else `past_key_values` (older versions, and architectures
    not renamed yet)."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def without_dropout(model: PreTrainedModel) -> PreTrainedModel:
    """PPO needs act() and evaluate() to be the same deterministic function: fp32, no dropout."""
    model.float()
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


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
