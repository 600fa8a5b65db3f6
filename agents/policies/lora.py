"""LoRA for the LM policy through peft: adapters on a frozen base, and the reference without a copy.

- `add_lora(model, cfg)` wraps a causal LM in a `peft.PeftModel` whose adapter "default" trains
  (the base stays frozen). With `cfg.adapter_path`, training starts from that trained adapter,
  and a second, frozen copy of it is loaded as the adapter "reference".
- `policy.critic: separate` adds an adapter "critic" on the SAME frozen base (`AdapterView`): the
  critic's trunk is the base plus its own adapters, no second model.
- `LoRAReference(policy)` is the frozen reference for the KL penalty: the same model with the
  adapters disabled (`PeftModel.disable_adapter()`), or with the "reference" adapter active when
  training started from a trained adapter (there the bare base is NOT the starting policy).
- Checkpoints hold the trainable tensors only (adapters + value head, `checkpoint_state`).

Only this module and `agents.policies.lm` know about peft.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.policies.base import INPUT_PATH

POLICY_ADAPTER, CRITIC_ADAPTER, REFERENCE_ADAPTER = "default", "critic", "reference"


class LoRAConfig(BaseModel):
    """`policy.lora:` LoRA adapters (peft) instead of full fine-tuning."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # at most 2**16 (wider than any layer it could adapt: no lower-rank update)
    r: int = Field(8, ge=1, le=2**16, description="The adapters' rank.")
    # the adapter's output is scaled by alpha / r in the model's float dtype: beyond 1e6 one
    # step of the adapter swamps the base model and its activations overflow
    alpha: float = Field(
        16.0, gt=0, le=1e6, description="The adapters' scale: their output times alpha / r."
    )
    dropout: float = Field(
        0.0, description="Must be 0: the rollout and the update must compute the same function."
    )
    target_modules: list[str] | None = Field(
        None,
        description="Module names to adapt (e.g. [c_attn], [wte]); null: peft's default for "
        "the architecture.",
    )
    adapter_path: Annotated[str | None, INPUT_PATH] = Field(
        None, description="Start from a trained peft adapter folder (its own r and alpha)."
    )

    @field_validator("dropout")
    @classmethod
    def _no_dropout(cls, value: float) -> float:
        if value != 0.0:
            raise ValueError(
                f"LoRA dropout must be 0.0, got {value}: PPO needs the rollout's log-probs and "
                "evaluate()'s to come from the same deterministic function"
            )
        return value


def is_peft(model: Any) -> bool:
    """True for a peft-wrapped model."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def transformer_of(model: Any) -> nn.Module:
    """The trunk that returns hidden states: `model.base_model` of the causal LM (through a peft
    wrapper, whose LoRA layers sit inside that trunk)."""
    if isinstance(model, AdapterView):
        model = model.model
    if is_peft(model):
        model = model.get_base_model()
    return model.base_model


def _peft_config(cfg: LoRAConfig, model: nn.Module) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=0.0,
        target_modules=cfg.target_modules,
        # GPT-2's Conv1D layers store (in, out) weights
        fan_in_fan_out=getattr(model.config, "model_type", None) == "gpt2",
        task_type="CAUSAL_LM",
    )


def add_lora(model: nn.Module, cfg: LoRAConfig, critic: bool = False) -> nn.Module:
    """`model` wrapped in a peft model with a trainable "default" adapter (and a trainable
    "critic" adapter if `critic`); the base is frozen. ValueError naming the modules when the
    architecture has no default target modules and `cfg.target_modules` is null."""
    from peft import PeftModel, get_peft_model

    try:
        if cfg.adapter_path is not None:
            path = Path(cfg.adapter_path)
            if not (path / "adapter_config.json").is_file():
                raise FileNotFoundError(
                    f"policy.lora.adapter_path={str(path)!r} is not a peft adapter folder (no "
                    "adapter_config.json); `textrlhf export RUN OUT` writes one"
                )
            peft_model = PeftModel.from_pretrained(
                model, str(path), adapter_name=POLICY_ADAPTER, is_trainable=True
            )
            peft_model.load_adapter(str(path), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
            peft_model.set_adapter(POLICY_ADAPTER)
        else:
            peft_model = get_peft_model(
                model, _peft_config(cfg, model), adapter_name=POLICY_ADAPTER
            )
        if critic:
            peft_model.add_adapter(CRITIC_ADAPTER, _peft_config(cfg, model))
    except ValueError as err:
        if "target_modules" not in str(err):
            raise
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is not model})
        raise ValueError(
            f"policy.lora.target_modules: peft has no default for model type "
            f"{model.config.model_type!r}; name the modules to adapt, e.g. from {names[:12]}"
        ) from None
    for name, param in peft_model.named_parameters():
        param.requires_grad_(adapter_of(name) in (POLICY_ADAPTER, CRITIC_ADAPTER))
    return peft_model


def adapter_of(name: str) -> str | None:
    """The adapter a peft parameter belongs to: the name component after its `lora_*` one
    (`...c_attn.lora_A.default.weight` of a Linear layer, `...wte.lora_embedding_A.default` of
    an Embedding layer); None for a base parameter."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("lora_"):
            return parts[i + 1]
    return None


@contextlib.contextmanager
def same_grad_flags(model: nn.Module) -> Iterator[None]:
    """Put every parameter's requires_grad back as it was after the block: peft's
    `set_adapter` and `disable_adapter` change them (only the active adapter trains)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


@contextlib.contextmanager
def use_adapter(peft_model: Any, name: str) -> Iterator[Any]:
    """Run the block with adapter `name` active (grad flags unchanged, `same_grad_flags`)."""
    previous = peft_model.active_adapter
    if previous == name:
        yield peft_model
        return
    with same_grad_flags(peft_model):
        peft_model.set_adapter(name)
        try:
            yield peft_model
        finally:
            peft_model.set_adapter(previous)


@contextlib.contextmanager
def adapters_off(peft_model: Any) -> Iterator[Any]:
    """Run the block on the bare base (`PeftModel.disable_adapter()`), grad flags unchanged."""
    with same_grad_flags(peft_model), peft_model.disable_adapter():
        yield peft_model


class AdapterView:
    """The critic under `critic: separate` with LoRA: the policy's peft model with the "critic"
    adapter active. Not an nn.Module (its parameters belong to the policy's model)."""

    def __init__(self, model: Any, adapter: str = CRITIC_ADAPTER):
        self.model, self.adapter = model, adapter

    @property
    def config(self) -> Any:
        return self.model.config

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def eval(self) -> AdapterView:
        return self

    def active(self) -> contextlib.AbstractContextManager:
        return use_adapter(self.model, self.adapter)


def model_scope(model: Any) -> contextlib.AbstractContextManager:
    """The context in which `model`'s trunk runs: its adapter for an AdapterView, else none."""
    return model.active() if isinstance(model, AdapterView) else contextlib.nullcontext()


def checkpoint_state(policy: nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA policy's checkpoint holds: the trainable tensors (adapters, value head; a
    separate full critic model too), not the frozen base nor the frozen reference adapter, which
    are rebuilt from their folders."""
    return {name: p.detach() for name, p in policy.named_parameters() if p.requires_grad}


class LoRAReference(nn.Module):
    """The frozen reference of a LoRA policy, without a copy of any weight: the policy's model
    with the adapters disabled, or with the frozen "reference" adapter (the starting adapter)
    when training started from one. Scores the full temperature-scaled distribution (no top-k /
    top-p cut), as `LMPolicy.reference()` does for a plain model. Holds no tensors."""

    is_sequence_policy = True

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.__dict__["_policy"] = policy  # not a submodule: no parameters, no state_dict
        self.from_adapter = policy.lora.adapter_path is not None

    @torch.no_grad()
    def evaluate(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        policy = self._policy
        model = policy.model
        scope = use_adapter(model, REFERENCE_ADAPTER) if self.from_adapter else adapters_off(model)
        with scope, policy.sampling(top_k=0, top_p=1.0):
            return policy.evaluate(batch, with_values=False)  # actions only, no critic


def export(policy: nn.Module, folder: str | Path, merge: bool) -> Path:
    """Write the policy's actor as a loadable folder: with `merge`, the adapter merged into the
    base (a plain transformers folder for `AutoModelForCausalLM.from_pretrained`); without, the
    peft adapter folder (for `PeftModel.from_pretrained(base, folder)`). Changes the policy when
    merging (call on a policy built for export)."""
    folder = Path(folder)
    model = policy.model
    if merge:
        for name in (CRITIC_ADAPTER, REFERENCE_ADAPTER):
            if name in model.peft_config:
                model.delete_adapter(name)
        merged = model.merge_and_unload()
        merged.save_pretrained(folder, safe_serialization=True)
    else:
        model.save_pretrained(folder, selected_adapters=[POLICY_ADAPTER])
    policy.tokenizer.save_pretrained(folder)
    return folder
