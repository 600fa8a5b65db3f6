"""Causal-LM actor-critic: any transformers causal LM plus a scalar value head.

The LM is just another implementation of the policy contract (`agents.policies.base.Policy`):

- `act(obs, state)` samples the next token. The KV cache is the recurrent `state`: the first call
  after a reset prefills the (left-padded) prompt, every later call feeds ONLY the token sampled at
  the previous step, so one env step costs one cached forward of one token
  (`agents.policies.lm_cache`, which also handles every autoreset mode).
- `evaluate(batch)` re-scores whole episodes with ONE teacher-forced forward over prompt+response
  (`agents.policies.lm_segments`). The buffer hands sequence policies `(T, B, ...)` columns of
  whole episodes.
- The value at step t is read from the hidden state at the position that predicts token t, i.e.
  the state *before* action t, in both `act` and `evaluate` (`agents.policies.lm_forward`).
- Temperature-scaled logits `logits / temperature`, cut to `top_k` / `top_p` and renormalized
  (`truncate`), are used for sampling and for log-probs alike, so the PPO ratio is exactly 1
  before an update whatever the sampling settings.

Observation layout (docs/ARCHITECTURE.md): `input_ids[:P]` is the prompt, left-padded, and the
generated tokens follow from index P. The prefix length of an observation is "index of the last
attended token + 1", and `position_ids = cumsum(mask) - 1`, so padding inside the prompt region
(left, or right as in tests/test_lm_padding.py) is masked and skipped. The policy never needs to
know P, nor which env produced the observation: it reads the spaces, and the tokenizer from the
model's folder (`agents.policies.hf`).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field
from transformers import PreTrainedModel

from agents.policies.base import INPUT_PATH, Policy, PolicyConfig
from agents.policies.hf import (
    CRITICS,
    DEFAULT_MODEL_PATH,
    check_context,
    check_vocab_and_context,
    hidden_size,
    load_models,
    without_dropout,
)
from agents.policies.lm_cache import CachedDecoding, LMState
from agents.policies.lm_forward import LMForward
from agents.policies.lm_segments import plan_columns
from agents.policies.lora import AdapterView, LoRAConfig
from agents.policies.sequences import (
    Temperature,
    TopK,
    TopP,
    attended_width,
    check_sampling,
    masked_logprobs_and_entropy,
    position_ids_from_mask,
    prefix_lengths,
    right_align,
    sample,
    truncate,
)

# the env sizes `check_env_kwargs` assumes for a key its caller leaves out: TextRLHF-v0's
# defaults. The harness passes the env's own defaults (agents.run.envs.env_kwargs_with_defaults),
# so these serve direct calls only; tests/test_layout.py checks that they match textenv's.
ENV_SIZE_DEFAULTS = {"max_prompt_tokens": 32, "max_new_tokens": 32}


class LMPolicyConfig(PolicyConfig):
    """`policy:` section of `type: lm`."""

    type: Literal["lm"] = Field("lm", description="The policy type: a causal LM with a value head.")
    model_path: Annotated[str | None, INPUT_PATH] = Field(
        None, description="A local transformers model folder; null: the default tiny model."
    )
    # in float32's range for logits / temperature (sequences.py)
    temperature: Temperature = Field(1.0, description="Sampling temperature.")
    top_k: TopK = Field(0, description="Sample from the k most likely tokens; 0: no top-k cut.")
    top_p: TopP = Field(
        1.0, description="Nucleus: sample from the smallest set with mass >= top_p; 1: off."
    )
    critic: Literal[CRITICS] = Field(  # type: ignore[valid-type]
        "shared",
        description='"shared": a value head on the actor\'s trunk; "separate": its own trunk; '
        '"none": no critic (critic-free estimators).',
    )
    # a reward-model folder is a one-label sequence classifier, as `textrlhf rm` writes
    critic_path: Annotated[str | None, INPUT_PATH] = Field(
        None,
        description="critic: separate only. A causal LM or reward-model folder to start the "
        "critic from; null: a copy of the actor.",
    )
    lora: LoRAConfig | None = Field(
        None, description="LoRA adapters on a frozen base (peft); null: full fine-tuning."
    )

    def critic_choice(self) -> str:
        return self.critic


class LMPolicy(LMForward, CachedDecoding, Policy):
    """Actor = causal LM, critic = value head on the shared trunk (or on a separate LM trunk).

    The forward passes come from `LMForward`, the cached decoding of `act` from
    `CachedDecoding`; this class holds the weights and implements the contract."""

    is_sequence_policy = True
    Config = LMPolicyConfig

    @classmethod
    def config_defaults(cls, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The `env.num_envs` and `ppo:` defaults of an LM run: the edit-distance recipe
        (configs/text_edit_distance.yaml: 0.92 held out on 5 of 5 seeds). One rollout is one
        episode per env column (n_steps = the env's max_new_tokens, 32 by default); a minibatch
        is a quarter of the columns when 4 divides them, else all."""
        env, ppo = data.get("env") or {}, data.get("ppo") or {}
        kwargs = env.get("kwargs") or {}
        n_steps = ppo.get("n_steps", kwargs.get("max_new_tokens", 32))
        columns = env.get("num_envs", 128)
        if isinstance(columns, int) and columns % 4 == 0:
            columns //= 4
        batch = n_steps * columns if isinstance(n_steps, int) and isinstance(columns, int) else 1024
        return {
            "env": {"num_envs": 128},
            "ppo": {
                "n_steps": n_steps, "batch_size": batch, "n_epochs": 2, "gamma": 1.0,
                "gae_lambda": 0.95, "learning_rate": 3.0e-4, "anneal_lr": True,
                "clip_range": 0.2, "anneal_clip": False, "clip_range_vf": None, "vf_coef": 0.5,
                "ent_coef": 0.0, "max_grad_norm": 1.0, "normalize_advantage": True,
                "target_kl": None, "adam_eps": 1.0e-5, "loss_aggregation": "token",
            },
        }  # fmt: skip

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        num_actions: int | None = None,
        max_sequence_length: int | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        critic_model: PreTrainedModel | AdapterView | None = None,
        lora: LoRAConfig | None = None,
        value_head: bool = True,
    ):
        super().__init__()
        self.temperature, self.top_k, self.top_p = check_sampling(temperature, top_k, top_p)
        self.lora = lora  # set by from_pretrained when `model` is peft-wrapped (lora.py)
        self.model = without_dropout(model)
        # None: the value head reads the actor's own trunk; an AdapterView: the actor's frozen
        # base with the critic's own LoRA adapters
        if critic_model is not None and not isinstance(critic_model, AdapterView):
            critic_model = without_dropout(critic_model)
        self.critic_model = critic_model
        self.tokenizer = tokenizer

        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        if self.pad_id is None or self.eos_id is None or self.pad_id == self.eos_id:
            raise ValueError(
                f"the tokenizer needs distinct pad and EOS tokens, got pad_token_id={self.pad_id}"
                f" and eos_token_id={self.eos_id}"
            )
        models = [self.model] + ([self.critic_model] if self.critic_model is not None else [])
        check_vocab_and_context(tokenizer, models, num_actions, max_sequence_length)

        if critic_model is not None and not value_head:
            raise ValueError("a separate critic model needs the value head (value_head=True)")
        self.value_head: nn.Linear | None = None  # None: critic-free, every value is 0
        if value_head:
            hidden = hidden_size((critic_model if critic_model is not None else model).config)
            self.value_head = nn.Linear(hidden, 1)
            nn.init.normal_(self.value_head.weight, std=1.0 / np.sqrt(hidden + 1))
            nn.init.zeros_(self.value_head.bias)
        self._version = 0  # bumped whenever evaluate() runs with grad (i.e. an update is coming)
        # run.dtype: None = float32; torch.bfloat16 runs the trunks and heads under autocast
        self.compute_dtype: torch.dtype | None = None
        self._check_head_path()

    @property
    def has_critic(self) -> bool:
        """False for a critic-free policy (`critic: none`): its values are all 0."""
        return self.value_head is not None

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | os.PathLike | None = None,
        *,
        num_actions: int | None = None,
        max_sequence_length: int | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        critic: str = "shared",
        critic_path: str | os.PathLike | None = None,
        lora: LoRAConfig | None = None,
    ) -> LMPolicy:
        """Load the actor (and optional separate critic) from local transformers folders.

        The tokenizer is read from the actor's folder (a byte-level tokenizer if the folder has
        none, `hf.load_tokenizer`). `critic="separate"` builds the critic from `critic_path`, or
        from a copy of the actor's starting weights when `critic_path` is None.
        """
        model, tokenizer, critic_model, score_head = load_models(
            model_path, critic, critic_path, lora
        )
        policy = cls(
            model,
            tokenizer,
            num_actions=num_actions,
            max_sequence_length=max_sequence_length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            critic_model=critic_model,
            lora=lora,
            value_head=critic != "none",
        )
        if score_head is not None and policy.value_head is not None:  # V(s) = the RM's score
            with torch.no_grad():
                policy.value_head.weight.copy_(score_head.weight)
                bias = score_head.bias
                policy.value_head.bias.copy_(bias if bias is not None else torch.zeros(1))
        return policy

    @classmethod
    def from_config(
        cls, policy_cfg: LMPolicyConfig, observation_space: Any, action_space: Any
    ) -> LMPolicy:
        """Build from the `policy:` config section and the env's spaces (see ARCHITECTURE.md)."""
        shape = getattr(observation_space, "spaces", {}).get("input_ids")
        if shape is None:
            raise ValueError(
                "policy.type: lm needs a Dict observation space with 'input_ids' and "
                f"'attention_mask' (the TextRLHF-v0 layout), got {observation_space}"
            )
        return cls.from_pretrained(
            policy_cfg.model_path,
            num_actions=int(action_space.n),
            max_sequence_length=int(shape.shape[-1]),
            temperature=policy_cfg.temperature,
            top_k=policy_cfg.top_k,
            top_p=policy_cfg.top_p,
            critic=policy_cfg.critic,
            critic_path=policy_cfg.critic_path,
            lora=policy_cfg.lora,
        )

    @classmethod
    def check_env_kwargs(cls, policy_cfg: LMPolicyConfig, env_kwargs: Mapping[str, Any]) -> None:
        """Check the env's sizes against the model(s) BEFORE the env allocates anything.

        Reads only each model folder's config.json (no weights): `max_prompt_tokens +
        max_new_tokens` of `env_kwargs` (a missing one: `ENV_SIZE_DEFAULTS`) must fit the context
        of the actor and of a separate critic. ValueError naming the sizes if not;
        FileNotFoundError for a missing model folder. Values that are not ints are left for the
        env to report.
        """
        sizes = {}
        for name, default in ENV_SIZE_DEFAULTS.items():
            value = env_kwargs.get(name, default)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                return  # the env's own check explains it
            sizes[name] = int(value)
        paths = [policy_cfg.model_path or DEFAULT_MODEL_PATH]
        if policy_cfg.critic == "separate" and policy_cfg.critic_path:
            paths.append(policy_cfg.critic_path)
        check_context(paths, sizes["max_prompt_tokens"], sizes["max_new_tokens"])

    def train(self, mode: bool = True) -> LMPolicy:
        """Keep the transformers models in eval mode (no dropout) whatever PPO asks for."""
        super().train(mode)
        self.model.eval()
        if self.critic_model is not None:
            self.critic_model.eval()
        return self

    # -- acting ------------------------------------------------------------------------------

    def initial_state(self, num_envs: int) -> LMState:
        return LMState(num_envs=num_envs)

    def reset_state(self, state: LMState, done_mask: np.ndarray) -> LMState:
        """Nothing to do: the next `act` sees from each row's observation whether it continues,
        restarted or is unchanged (a finished lockstep row), whatever the autoreset mode."""
        return state

    @torch.no_grad()
    def act(
        self, obs: dict[str, torch.Tensor], state: LMState, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LMState]:
        """Sample one token per row. Returns action (B,), log_prob (B,), value (B,), state.
        With a separate critic the values are 0 here: see `values_after_rollout`."""
        logits, value = self._outputs(obs, state)
        state.logits, state.value = logits, value
        full = logits.float() / self.temperature  # (B, V)
        scaled = truncate(full, self.top_k, self.top_p)  # (B, V), the same tensor without a cut
        if deterministic:
            action = scaled.argmax(-1)
        else:
            action = sample(scaled)
        lse = torch.logsumexp(scaled, -1)  # (B,)
        log_prob = scaled.gather(1, action.unsqueeze(1)).squeeze(1) - lse
        # the mass outside the kept set, 1 - sum(kept p), for the diagnostics (no RNG draw)
        cut = scaled is not full
        state.cut_mass = -torch.expm1(lse - torch.logsumexp(full, -1)) if cut else None
        state.last_action = action
        return action, log_prob, value, state

    def truncated_mass(self, state: LMState) -> torch.Tensor | None:
        """(B,) probability mass the last `act`'s top-k / top-p cut away (None without a cut)."""
        return state.cut_mass

    @torch.no_grad()
    def predict_value(self, obs: dict[str, torch.Tensor], state: LMState) -> torch.Tensor:
        """Value of `obs` (B,), computed from the observation alone; leaves `state` untouched
        (which may be None)."""
        if self.critic_model is None:
            return self._prefill(obs, LMState(num_envs=obs["input_ids"].shape[0]))[1]
        ids, mask = obs["input_ids"].long(), obs["attention_mask"].long()  # (B, L)
        ends = prefix_lengths(mask)
        ids, mask = right_align(ids, mask, ends, attended_width(mask, ends), self.pad_id)
        hidden = self._trunk(self.critic_model, ids, mask, position_ids_from_mask(mask), None)
        return self._value(hidden[:, -1])

    @property
    def values_after_rollout(self) -> bool:
        """True with a separate critic: `act` returns values of 0 and the rollout collector
        asks `rollout_values` for them once the rollout is done. The critic never shapes the
        sampling, so its values come from ONE batched forward over the finished sequences
        (compute-bound) instead of a cached forward per token (bound by streaming the critic's
        weights at every step): the rollout streams the actor alone."""
        return self.critic_model is not None

    @torch.no_grad()
    def rollout_values(self, batch: Any) -> torch.Tensor:
        """(T, B) values of every valid step of the `(T, B)` columns `batch` (0 elsewhere): the
        critic's part of `evaluate`, the same numbers `evaluate` gives."""
        plan = plan_columns(batch, self.pad_id)
        if plan is None:
            return torch.zeros(batch.valid.shape, device=batch.actions.device)
        critic = self.critic_model if self.critic_model is not None else self.model
        hidden = self._trunk(critic, plan.seq, plan.seq_mask, plan.positions, None)
        return plan.to_steps(self._value(hidden[plan.k_f, plan.col]))

    # -- scoring -----------------------------------------------------------------------------

    def evaluate(
        self, batch: Any, with_values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-score `(T, B)` whole-episode columns with one teacher-forced forward per segment
        (`lm_segments`): the action of step t is predicted at the last token of observation t.
        Env-written tokens are inputs there, never targets. Returns (T, B) log_prob, entropy,
        value, zero on invalid steps. `with_values=False` skips the critic (a separate critic's
        whole forward): values are 0.
        """
        if torch.is_grad_enabled():
            self._version += 1  # parameters are about to change: cached keys/values go stale
        plan = plan_columns(batch, self.pad_id)
        if plan is None:
            zeros = torch.zeros(batch.valid.shape, device=batch.actions.device)
            return zeros, zeros.clone(), zeros.clone()

        # one forward; step t's action is predicted at observation t's last token
        hidden = self._trunk(self.model, plan.seq, plan.seq_mask, plan.positions, None)
        hidden = hidden[plan.k_f, plan.col]  # (n, H)
        if with_values:
            critic_hidden = None
            if self.critic_model is not None:
                critic_hidden = self._trunk(
                    self.critic_model, plan.seq, plan.seq_mask, plan.positions, None
                )[plan.k_f, plan.col]
            logits, value = self._heads(hidden, critic_hidden)  # (n, V), (n,)
        else:
            logits = self._logits(hidden)
            value = torch.zeros(logits.shape[0], device=logits.device)
        log_prob, entropy = masked_logprobs_and_entropy(
            logits, plan.actions, self.temperature, self.top_k, self.top_p
        )
        return plan.to_steps(log_prob), plan.to_steps(entropy), plan.to_steps(value)

    # -- sampling settings and the reference ------------------------------------------------

    @contextlib.contextmanager
    def sampling(
        self,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> Iterator[LMPolicy]:
        """Sample with other settings inside the block (evaluation's `eval.sampling`); None keeps
        the policy's own. The training settings come back on exit."""
        saved = self.temperature, self.top_k, self.top_p
        self.temperature, self.top_k, self.top_p = check_sampling(
            saved[0] if temperature is None else temperature,
            saved[1] if top_k is None else top_k,
            saved[2] if top_p is None else top_p,
        )
        try:
            yield self
        finally:
            self.temperature, self.top_k, self.top_p = saved

    def reference(self) -> nn.Module:
        """The frozen reference for the KL penalty: the starting policy, scored under its FULL
        temperature-scaled distribution (no top-k / top-p cut; docs/lm.md explains why). A frozen
        deep copy for a plain model; under LoRA, the same base with the adapters off (or a frozen
        copy of the starting adapter), see `agents.policies.lora`."""
        if self.lora is not None:
            from agents.policies.lora import LoRAReference

            return LoRAReference(self)
        # the reference only scores actions: no copy of a separate critic, no value head (it
        # would cost a forward of the critic in every KL pass, and its memory)
        critic, head = self.critic_model, self.value_head
        self.critic_model, self.value_head = None, None
        try:
            reference = copy.deepcopy(self)
        finally:
            self.critic_model, self.value_head = critic, head
        reference.top_k, reference.top_p = 0, 1.0
        reference.requires_grad_(False)
        reference.eval()
        return reference

    def token_texts(self, token_ids: list[int]) -> list[str]:
        """Each token id decoded on its own (special tokens by their names; a byte that is
        part of a multi-byte character shows as U+FFFD)."""
        return self.tokenizer.batch_decode([[int(i)] for i in token_ids])

    # -- saving -----------------------------------------------------------------------------

    @classmethod
    def pinned_folders(cls, policy_cfg: LMPolicyConfig) -> dict[str, Path]:
        """The model folders a checkpoint of this policy needs but does not hold, by config key:
        under LoRA, the base (`policy.model_path`) and a starting adapter
        (`policy.lora.adapter_path`, the reference); none for full fine-tuning, whose checkpoints
        hold every weight. The harness records their hashes in each checkpoint."""
        if policy_cfg.lora is None:
            return {}
        folders = {"policy.model_path": Path(policy_cfg.model_path or DEFAULT_MODEL_PATH)}
        if policy_cfg.lora.adapter_path is not None:
            folders["policy.lora.adapter_path"] = Path(policy_cfg.lora.adapter_path)
        return folders

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds (agents.run.checkpoint): everything for a plain model;
        under LoRA only the trainable ones (adapters, value head), not the frozen base."""
        if self.lora is None:
            return self.state_dict()
        from agents.policies.lora import checkpoint_state

        return checkpoint_state(self)

    def save_pretrained(self, folder: str | os.PathLike, merge: bool = True) -> Path:
        """Write the actor as a transformers folder (safetensors + config + tokenizer). Under
        LoRA: the adapter merged into the base (`merge`, changes this policy), or the peft
        adapter folder."""
        folder = Path(folder)
        if self.lora is not None:
            from agents.policies.lora import export

            return export(self, folder, merge)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        return folder
