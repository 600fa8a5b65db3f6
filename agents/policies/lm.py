"""Causal-LM actor-critic: any transformers causal LM plus a scalar value head.

The LM is just another implementation of the policy protocol (agents/policies/base.py):

- `act(obs, state)` samples the next token. The KV cache is the recurrent `state`: the first call
  after a reset prefills the (left-padded) prompt, every later call feeds ONLY the token sampled at
  the previous step, so one env step costs one cached forward of one token.
- `evaluate(batch)` re-scores whole episodes with ONE teacher-forced forward over prompt+response.
  The buffer hands sequence policies `(T, B, ...)` columns of whole episodes.
- The value at step t is read from the hidden state at the position that predicts token t, i.e.
  the state *before* action t, in both `act` and `evaluate`.
- Temperature-scaled logits `logits / temperature`, cut to `top_k` / `top_p` and renormalized
  (`truncate`), are used for sampling and for log-probs alike, so the PPO ratio is exactly 1
  before an update whatever the sampling settings.

Observation layout (docs/ARCHITECTURE.md): `input_ids[:P]` is the prompt, left-padded, and the
generated tokens follow from index P. The prefix length of an observation is "index of the last
attended token + 1", and `position_ids = cumsum(mask) - 1`, so padding inside the prompt region
(left, or right as in tests/test_lm_padding.py) is masked and skipped. The policy never needs to
know P.

Any autoreset mode works (lockstep, NEXT_STEP, SAME_STEP; the native vector env or Gymnasium's
sync/async ones): the observation is the whole Markov state, so each `act` compares it, row by row,
with the observation of the previous `act` (`step_kinds`). A row that CONTINUES (the old prefix plus
the token sampled for it) feeds that one token; a row whose observation is UNCHANGED (a finished
lockstep row, whose actions the env ignores) gets its previous outputs again; any other row is a
new episode and RESTARTS: its prefix is encoded alone and spliced into the batch cache
(`LMPolicy._splice`), or, where the cache's layers do not allow that, every row is re-encoded
from its observation.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn as nn
from transformers import DynamicCache, PreTrainedModel

from agents.policies.base import INPUT_PATH, PolicyConfig
from agents.policies.hf import (
    DEFAULT_MODEL_PATH,
    cache_keyword,
    context_size,
    load_causal_lm,
    load_critic,
    model_folder,
    new_cache,
    spliceable,
    without_dropout,
)
from agents.policies.lora import AdapterView, LoRAConfig, model_scope, transformer_of
from agents.policies.sequences import (
    Temperature,
    TopK,
    TopP,
    attended_width,
    check_sampling,
    first_attended,
    masked_ids,
    masked_logprobs_and_entropy,
    position_ids_from_mask,
    prefix_lengths,
    right_align,
    sample,
    step_kinds,
    truncate,
)

CRITICS = ("shared", "separate", "none")  # none: no value head (critic-free estimators)


class LMPolicyConfig(PolicyConfig):
    """`policy:` section of `type: lm`."""

    type: Literal["lm"] = "lm"
    # a local transformers folder; null: the default tiny model
    model_path: Annotated[str | None, INPUT_PATH] = None
    temperature: Temperature = 1.0  # in float32's range for logits / temperature (sequences.py)
    top_k: TopK = 0  # sample from the k most likely tokens; 0: no top-k cut
    top_p: TopP = 1.0  # nucleus: the smallest set with mass >= top_p; 1: off
    critic: Literal[CRITICS] = "shared"  # type: ignore[valid-type]
    # critic: separate only. A causal LM folder (its trunk), or a reward-model folder (a one-label
    # sequence classifier, as `textrlhf rm` writes): its trunk, and the value head starts from its
    # score head. null: a copy of the actor
    critic_path: Annotated[str | None, INPUT_PATH] = None
    lora: LoRAConfig | None = None  # LoRA adapters on a frozen base (peft); null: full fine-tuning


def embedding_rows(module: nn.Module) -> int:
    """Rows of an input embedding, also when LoRA wraps it (`policy.lora.target_modules` with
    the embedding, e.g. GPT-2's `wte`: peft's layer keeps the nn.Embedding as `base_layer`)."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return int(base.weight.shape[0])


# ----------------------------------------------------------------------------- state


@dataclass
class LMState:
    """Recurrent state of a batch of B rows: the KV cache and what the next step needs.

    `cache is None` means "prefill from the next observation" (at the start, or after a policy
    update made the cached keys/values stale). Row by row, the next observation is compared with
    the previous one (`obs_ids/obs_mask`) to tell a continuing row from a restarted or an
    unchanged one (`LMPolicy._advance`).
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


# ----------------------------------------------------------------------------- policy


class LMPolicy(nn.Module):
    """Actor = causal LM, critic = value head on the shared trunk (or on a separate LM trunk)."""

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

    @property
    def has_critic(self) -> bool:
        """False for a critic-free policy (`critic: none`): its values are all 0."""
        return self.value_head is not None

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
        self.lora = (
            lora  # set by from_pretrained when `model` is peft-wrapped (agents.policies.lora)
        )
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
        self._check_sizes(num_actions, max_sequence_length)

        if critic_model is not None and not value_head:
            raise ValueError("a separate critic model needs the value head (value_head=True)")
        self.value_head: nn.Linear | None = None  # None: critic-free, every value is 0
        if value_head:
            trunk_config = (critic_model if critic_model is not None else model).config
            hidden = getattr(trunk_config, "hidden_size", None) or trunk_config.n_embd
            self.value_head = nn.Linear(hidden, 1)
            nn.init.normal_(self.value_head.weight, std=1.0 / np.sqrt(hidden + 1))
            nn.init.zeros_(self.value_head.bias)
        self._version = 0  # bumped whenever evaluate() runs with grad (i.e. an update is coming)
        # run.dtype: None = float32; torch.bfloat16 runs the trunks and heads under autocast
        self.compute_dtype: torch.dtype | None = None
        self._check_head_path()

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

        The tokenizer is read from the actor's folder (textenv's default byte tokenizer if the
        folder has none). `critic="separate"` builds the critic from `critic_path`, or from a copy
        of the actor's starting weights when `critic_path` is None.
        """
        from textenv.tokenizer import load_tokenizer

        if critic not in CRITICS:
            raise ValueError(f"policy.critic must be one of {list(CRITICS)}, got {critic!r}")
        if critic != "separate" and critic_path is not None:
            raise ValueError(
                f"policy.critic_path={str(critic_path)!r} is only used with policy.critic: "
                f"separate (got critic: {critic})"
            )
        path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
        model = load_causal_lm(path)
        has_tokenizer = any(
            (path / name).exists()
            for name in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")
        )
        tokenizer = load_tokenizer(str(path) if has_tokenizer else None)
        critic_model = score_head = None
        if critic == "separate" and critic_path:
            critic_model, score_head = load_critic(critic_path)
        if lora is not None:
            from agents.policies.lora import add_lora

            model = add_lora(model, lora, critic=critic == "separate" and critic_model is None)
            if critic == "separate" and critic_model is None:
                critic_model = AdapterView(model)
        elif critic == "separate" and critic_model is None:
            critic_model = copy.deepcopy(model)
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
        max_new_tokens` of `env_kwargs` (TextRLHF-v0's arguments; a missing one takes the env's
        default) must fit the context of the actor and of a separate critic. ValueError naming the
        sizes if not; FileNotFoundError for a missing model folder. Values that are not ints are
        left for the env to report.
        """
        from transformers import AutoConfig

        from textenv.env import TextEnvArgs

        sizes = {}
        for name in ("max_prompt_tokens", "max_new_tokens"):
            value = env_kwargs.get(name, getattr(TextEnvArgs, name))
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                return  # the env's own check explains it
            sizes[name] = int(value)
        prompt, new = sizes["max_prompt_tokens"], sizes["max_new_tokens"]
        paths = [policy_cfg.model_path or DEFAULT_MODEL_PATH]
        if policy_cfg.critic == "separate" and policy_cfg.critic_path:
            paths.append(policy_cfg.critic_path)
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

    def _check_sizes(self, num_actions: int | None, max_sequence_length: int | None) -> None:
        vocab = len(self.tokenizer)
        models = [self.model] + ([self.critic_model] if self.critic_model is not None else [])
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

    def set_compute_dtype(self, dtype: str) -> None:
        """run.dtype: "float32", or "bfloat16" for forward passes under torch.autocast. The
        weights, the gradients, the optimizer state, the log-probs, entropies and values (and so
        the PPO ratio and loss) stay float32."""
        choices = {"float32": None, "bfloat16": torch.bfloat16}
        if dtype not in choices:
            raise ValueError(f"run.dtype must be one of {list(choices)}, got {dtype!r}")
        self.compute_dtype = choices[dtype]

    def _autocast(self) -> Any:
        device = next(self.model.parameters()).device.type
        return torch.autocast(
            device, self.compute_dtype or torch.float32, self.compute_dtype is not None
        )

    def train(self, mode: bool = True) -> LMPolicy:
        """Keep the transformers models in eval mode (no dropout) whatever PPO asks for."""
        super().train(mode)
        self.model.eval()
        if self.critic_model is not None:
            self.critic_model.eval()
        return self

    # -- forward pieces ---------------------------------------------------------------------

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

    def _prefill(self, obs: dict[str, torch.Tensor], state: LMState) -> tuple[torch.Tensor, ...]:
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from a built cache: continuing rows feed their sampled token (and the tokens
        the env wrote after it: `from_env`), restarted rows are spliced in, unchanged rows get
        their previous outputs (see the module docstring)."""
        L = ids.shape[1]
        wide = state.mask.shape[1] >= 2 * L  # many restarts made the cache wide: start afresh
        if not wide and state.live_end < L:
            # The hot loop (lockstep, and most steps of any mode): each row is its previous
            # observation with the sampled token written right after the prefix, or, if stale,
            # unchanged. Two scatters and two comparisons, no per-row reductions.
            exp_ids = state.obs_ids.scatter(1, state.write_col, state.last_action.unsqueeze(1))
            exp_mask = state.obs_mask.scatter(1, state.write_col, 1)
            if torch.equal(exp_ids[:, :L], ids) and torch.equal(exp_mask[:, :L], mask):
                state.obs_ids, state.obs_mask = exp_ids, exp_mask
                state.write_col = state.write_col + state.advance
                state.live_end += 1
                logits, value = self._step(state, state.last_action)
                if state.any_stale:
                    logits, value = self._reuse(logits, value, state.stale, state)
                return logits, value
        # the exact row-by-row classification
        if wide:
            logits, value = self._prefill({"input_ids": ids, "attention_mask": mask}, state)
            self._remember(ids, mask, state)
            return logits, value
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
                logits, value = self._prefill({"input_ids": ids, "attention_mask": mask}, state)
                self._remember(ids, mask, state)
                return logits, value
            feed[rows, ends[rows] - 1] = True
        n_feed = feed.sum(1)  # (B,)
        if bool((n_feed <= 1).all()):  # one token per row: the sampled one, or a restart's last
            last = (ends - 1).clamp(min=0).unsqueeze(1)
            fed = torch.where(n_feed == 1, ids.gather(1, last).squeeze(1), state.last_action)
            logits, value = self._step(state, fed)
        else:  # env tokens: variable counts per row, one batched forward, right-aligned
            first = feed.long().argmax(1)  # (B,)
            width = int(torch.where(n_feed > 0, ends - first, 1).max())
            block_ids, block_mask = right_align(ids, feed.long(), ends, width, self.pad_id)
            block_ids = block_ids.masked_fill(~block_mask.bool(), self.pad_id)
            block_ids[same, -1], block_mask[same, -1] = state.last_action[same], 1
            logits, value = self._feed(state, block_ids, block_mask)
        if bool(same.any()):
            logits, value = self._reuse(logits, value, same, state)
            # fed its sampled token anyway (the batch steps together); that token is not in
            # its observation, so the row's cache is stale until the row restarts
            state.stale = state.stale | same
        self._remember(ids, mask, state)
        return logits, value

    @staticmethod
    def _reuse(
        logits: torch.Tensor, value: torch.Tensor, rows: torch.Tensor, state: LMState
    ) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _step(self, state: LMState, fed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Feed one token per row, `fed` (B,), through the cached trunk(s)."""
        ids = fed.unsqueeze(1)  # (B, 1)
        state.mask = torch.cat([state.mask, torch.ones_like(ids)], dim=1)  # (B, S+1)
        positions = state.next_pos.unsqueeze(1)  # (B, 1)
        hidden = self._trunk(self.model, ids, state.mask, positions, state.cache)[:, -1]
        state.next_pos = state.next_pos + 1
        return self._act_heads(hidden)

    def _feed(
        self, state: LMState, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Feed a (B, W) block through the cached trunk(s) in one forward: each row's tokens
        right-aligned, mask 0 on the columns before them (rows take different numbers of tokens:
        the sampled one plus the env's). Outputs at the last column, each row's last token."""
        state.mask = torch.cat([state.mask, mask], dim=1)  # (B, S+W)
        positions = state.next_pos.unsqueeze(1) + (mask.cumsum(1) - 1).clamp(min=0)  # (B, W)
        hidden = self._trunk(self.model, ids, state.mask, positions, state.cache)[:, -1]
        state.next_pos = state.next_pos + mask.sum(1)
        return self._act_heads(hidden)

    # -- policy protocol --------------------------------------------------------------------

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
        ids, mask = obs["input_ids"].long(), obs["attention_mask"]  # (B, L)
        if state.cache is None or state.version != self._version:
            logits, value = self._prefill(obs, state)
            self._remember(ids, mask, state)
        else:
            logits, value = self._advance(ids, mask, state, obs.get("from_env"))
        state.logits, state.value = logits, value
        scaled = truncate(logits.float() / self.temperature, self.top_k, self.top_p)  # (B, V)
        if deterministic:
            action = scaled.argmax(-1)
        else:
            action = sample(scaled)
        log_prob = scaled.gather(1, action.unsqueeze(1)).squeeze(1) - torch.logsumexp(scaled, -1)
        state.last_action = action
        return action, log_prob, value, state

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
        plan = self._plan(batch)
        if plan is None:
            return torch.zeros(batch.valid.shape, device=batch.actions.device)
        critic = self.critic_model if self.critic_model is not None else self.model
        hidden = self._trunk(critic, plan.seq, plan.seq_mask, plan.positions, None)
        return plan.to_steps(self._value(hidden[plan.k_f, plan.col]))

    def evaluate(
        self, batch: Any, with_values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-score `(T, B)` whole-episode columns with one teacher-forced forward.

        Each column is cut into segments: maximal runs of valid steps whose observation is the
        previous one plus the previous action, and any tokens the env wrote after it
        (`step_kinds`; a new episode starts a new segment), as `act` tells them apart. Every
        observation of a segment is a prefix of its last one, so ONE forward over the last
        observation's prefix scores them all: the action of step t is predicted at the last
        token of observation t (column `ends_t - 1`). Env-written tokens are inputs there, never
        targets. Returns (T, B) log_prob, entropy, value, zero on invalid steps.
        `with_values=False` skips the critic (a separate critic's whole forward): values are 0.
        """
        if torch.is_grad_enabled():
            self._version += 1  # parameters are about to change: cached keys/values go stale
        plan = self._plan(batch)
        if plan is None:
            zeros = torch.zeros(batch.valid.shape, device=batch.actions.device)
            return zeros, zeros.clone(), zeros.clone()

        # 3. one forward; step t's action is predicted at observation t's last token
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

    def _plan(self, batch: Any) -> EvalPlan | None:
        """Steps 1-2 of `evaluate`: the segments of the `(T, B)` columns and the sequences that
        score them (None when no step is valid)."""
        ids, mask = batch.obs["input_ids"].long(), batch.obs["attention_mask"].long()  # (T,B,L)
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
        seq, seq_mask = right_align(ids[seg_t1, seg_b], last_mask, last_end, S, self.pad_id)
        positions = position_ids_from_mask(seq_mask)

        # the valid steps: step t's action is predicted at observation t's last token
        step_f = valid_f.nonzero().squeeze(1)  # (n,) flat b*T + t of each valid step
        t_f, b_f, k_f = step_f % T, step_f // T, seg_of[step_f]
        col = ends[t_f, b_f] - 1 + (S - last_end[k_f])  # (n,) column in the segment's sequence
        return EvalPlan(seq, seq_mask, positions, k_f, col, actions[t_f, b_f], step_f, T, B)

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
        if getattr(self, "lora", None) is not None:
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
