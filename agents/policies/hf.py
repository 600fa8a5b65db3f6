"""Loading the LM policy's parts from local transformers folders, and checking their sizes.

Everything is read from a local folder (`from_pretrained(path)`, safetensors only): nothing is
downloaded at run time. The actor, its tokenizer, a separate critic (a causal LM or a reward model)
and LoRA adapters (`agents.policies.lora`) come from here; the sizes the env asks for are checked
against the models' config.json before any weight or env buffer exists (`check_context`), and
against the built models (`check_vocab_and_context`). Nothing here knows the env: the tokenizer of
a folder without one is transformers' byte-level `ByT5Tokenizer(extra_ids=0)`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn
from transformers import AutoModelForCausalLM, PreTrainedModel

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "assets" / "tiny-sft"
CRITICS = ("shared", "separate", "none")  # none: no value head (critic-free estimators)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")


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


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer of the model folder `path`; a folder without tokenizer files gets the
    byte-level `ByT5Tokenizer(extra_ids=0)` (259 ids: pad 0, EOS 1, unk 2, byte b is b + 3)."""
    path = Path(path)
    if any((path / name).exists() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer(extra_ids=0)


def load_models(
    model_path: str | os.PathLike | None,
    critic: str,
    critic_path: str | os.PathLike | None,
    lora: Any,
) -> tuple[PreTrainedModel, Any, Any, nn.Linear | None]:
    """The LM policy's parts: (actor, tokenizer, separate critic or None, the reward model's
    score head the value head starts from or None). The actor is peft-wrapped under `lora`;
    `critic="separate"` without `critic_path` is a copy of the actor's starting weights (under
    LoRA: the critic's own adapters on the same base, an `AdapterView`)."""
    if critic not in CRITICS:
        raise ValueError(f"policy.critic must be one of {list(CRITICS)}, got {critic!r}")
    if critic != "separate" and critic_path is not None:
        raise ValueError(
            f"policy.critic_path={str(critic_path)!r} is only used with policy.critic: "
            f"separate (got critic: {critic})"
        )
    path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
    model = load_causal_lm(path)
    tokenizer = load_tokenizer(path)
    critic_model = score_head = None
    if critic == "separate" and critic_path:
        critic_model, score_head = load_critic(critic_path)
    if lora is not None:
        from agents.policies.lora import AdapterView, add_lora

        model = add_lora(model, lora, critic=critic == "separate" and critic_model is None)
        if critic == "separate" and critic_model is None:
            critic_model = AdapterView(model)
    elif critic == "separate" and critic_model is None:
        critic_model = copy.deepcopy(model)
    return model, tokenizer, critic_model, score_head


def check_context(paths: Sequence[str | os.PathLike], prompt: int, new: int) -> None:
    """Refuse `prompt + new` tokens beyond the context of any model folder in `paths`, reading
    only their config.json (no weights): ValueError naming the sizes, FileNotFoundError for a
    missing folder."""
    from transformers import AutoConfig

    for path in paths:
        config = AutoConfig.from_pretrained(model_folder(path))
        context = context_size(config)
        if context is not None and prompt + new > context:
            raise ValueError(
                f"env max_prompt_tokens + max_new_tokens = {prompt} + {new} = "
                f"{prompt + new} tokens exceeds the model's context of {context} positions "
                f"({config.model_type} at {str(path)!r}); lower env.kwargs.max_new_tokens / "
                "max_prompt_tokens or use a model with a longer context"
            )


def embedding_rows(module: nn.Module) -> int:
    """Rows of an input embedding, also when LoRA wraps it (`policy.lora.target_modules` with
    the embedding, e.g. GPT-2's `wte`: peft's layer keeps the nn.Embedding as `base_layer`)."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return int(base.weight.shape[0])


def check_vocab_and_context(
    tokenizer: Any,
    models: Sequence[Any],
    num_actions: int | None,
    max_sequence_length: int | None,
) -> None:
    """The tokenizer, each model's embedding and the env's action space must have the same
    size, and the env's sequences must fit each model's context."""
    vocab = len(tokenizer)
    for model in models:
        embeddings = embedding_rows(model.get_input_embeddings())
        if vocab != embeddings or (num_actions is not None and num_actions != vocab):
            raise ValueError(
                "vocabulary sizes do not match: tokenizer has "
                f"{vocab} tokens, the model's embedding has {embeddings} rows, the env's "
                f"action space has {num_actions} actions; all three must be equal (use the "
                "env's tokenizer= with the model's own tokenizer folder)"
            )
        context = context_size(model.config)
        too_long = max_sequence_length is not None and context is not None
        if too_long and max_sequence_length > context:
            raise ValueError(
                f"prompt + max_new_tokens = {max_sequence_length} tokens exceeds the "
                f"model's context of {context} positions ({model.config.model_type}); "
                "lower env max_prompt_tokens / max_new_tokens or use a model with a "
                "longer context"
            )


def hidden_size(config: Any) -> int:
    """The width of a model's hidden states, whatever the architecture calls it."""
    return getattr(config, "hidden_size", None) or config.n_embd
