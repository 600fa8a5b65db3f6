"""Token-level math for the LM policy: the sampling distribution and the observation layout.

- The distribution `act` samples from and `evaluate` scores: temperature-scaled logits cut to
  top-k / top-p (`truncate`), one draw per row (`sample`), and the log-prob and entropy of a
  token under it (`masked_logprobs_and_entropy`).
- Masked sequences in the TextRLHF-v0 layout (docs/ARCHITECTURE.md): prefix lengths, position
  ids that skip padding, right alignment, and how one observation follows another (`step_kinds`).

Pure functions of tensors: no model, no state.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import AfterValidator, BeforeValidator

# What float32 can hold. The distribution is softmax(logits.float() / temperature), in float32
# also under bfloat16 autocast, and its log-probs are summed over responses, batches and KL terms.
# - temperature: logits up to 1e4 in magnitude (a trained LM's are ~10-100; a float16 model's must
#   stay below 65504), divided by it and summed over 2**32 terms, must stay below float32's
#   largest value (3.4e38): temperature >= 1e4 * 2**32 / 3.4e38 = 1.3e-25, rounded up to 1e-24.
#   Below that the logits overflow to +-inf, the softmax is NaN, the responses come out empty
#   and the losses NaN (1e-40 is a float32 subnormal: every logit becomes inf). The upper end is
#   float32's range too (there the distribution is uniform long before).
# - top_p: compared with float32 cumulative masses; it must be a normal float32 > 0: one that
#   rounds to 0 (< 1.4e-45), or a subnormal one a GPU flushes to 0, cuts every token.
# - top_k: torch takes an int64 k; any k >= the vocabulary is no cut.
FLOAT32 = torch.finfo(torch.float32)
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-24, 1e38
MIN_TOP_P = float(FLOAT32.tiny)  # 1.18e-38, the smallest normal float32
MAX_TOP_K = 2**31 - 1
TEMPERATURE_RANGE = f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]"
TOP_P_RANGE = f"(0, 1] that float32 holds as a normal number, i.e. in [{MIN_TOP_P:.3g}, 1]"


def check_temperature(value: float) -> float:
    """A sampling temperature that float32 logits can be divided by (see FLOAT32 above)."""
    if not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise ValueError(
            f"must be a float in {TEMPERATURE_RANGE}: sampling divides the float32 logits by it, "
            f"and below {MIN_TEMPERATURE:g} they overflow to inf (empty responses, NaN losses)"
        )
    return value


def check_top_p(value: float) -> float:
    """A nucleus mass that float32 holds as a normal number > 0, at most 1."""
    if not MIN_TOP_P <= value <= 1:
        raise ValueError(
            f"must be a float in {TOP_P_RANGE} (1: off): a top_p that float32 rounds to 0 cuts "
            "every token"
        )
    return value


def check_top_k(value: int) -> int:
    """A top-k cut torch can take (0: off)."""
    if not 0 <= value <= MAX_TOP_K:
        raise ValueError(f"must be an int in [0, {MAX_TOP_K}] (0: off)")
    return value


def _not_bool(value: Any) -> Any:
    """YAML's true/false are not numbers (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    return value


# the config fields of the sampling settings (`policy.*`, `eval.sampling.*`, the SFT eval)
Temperature = Annotated[float, BeforeValidator(_not_bool), AfterValidator(check_temperature)]
TopP = Annotated[float, BeforeValidator(_not_bool), AfterValidator(check_top_p)]
TopK = Annotated[int, BeforeValidator(_not_bool), AfterValidator(check_top_k)]


def check_sampling(
    temperature: Any, top_k: Any, top_p: Any, prefix: str = "policy."
) -> tuple[float, int, float]:
    """The sampling settings as (float, int, float); ValueError naming a bad one, its value and
    the allowed range (`prefix`: where the settings come from)."""
    checks = (
        ("temperature", temperature, (int, float), check_temperature),
        ("top_k", top_k, (int, np.integer), check_top_k),
        ("top_p", top_p, (int, float), check_top_p),
    )
    for name, value, types, check in checks:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, types):
            kind = "an int" if name == "top_k" else "a float"
            raise ValueError(f"{prefix}{name} must be {kind}, got {value!r}")
        try:
            check(value)  # NaN fails every comparison
        except ValueError as err:
            raise ValueError(f"{prefix}{name}={value!r} {err}") from None
    return float(temperature), int(top_k), float(top_p)


def truncate(
    scaled: torch.Tensor, top_k: int, top_p: float, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Temperature-scaled logits (..., V) with every token outside the top-k / top-p set at -inf,
    so that softmax gives the truncated, renormalized distribution the rollout samples from.

    top_k keeps the k largest logits (ties at the k-th value are kept); top_p keeps the smallest
    set of most likely tokens whose mass reaches top_p (at least one). `keep` (..., V) bool marks
    tokens kept whatever the cut: `evaluate` passes the taken action, so that a float-level
    difference between the cached and the teacher-forced forward at the edge of the set can never
    give a taken token probability 0. Unchanged (no copy) when neither cut is on."""
    if top_k <= 0 and top_p >= 1.0:
        return scaled
    drop = torch.zeros_like(scaled, dtype=torch.bool)
    if 0 < top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        drop |= scaled < kth
    if top_p < 1.0:
        sorted_logits, order = scaled.masked_fill(drop, -torch.inf).sort(-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)  # (..., V), descending
        mass_before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        drop |= torch.zeros_like(drop).scatter(-1, order, mass_before >= top_p)
    if keep is not None:
        drop &= ~keep
    return scaled.masked_fill(drop, -torch.inf)


def masked_logprobs_and_entropy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of `tokens` and entropy of the temperature-scaled (and top-k / top-p truncated,
    renormalized) softmax: the distribution `act` samples from. The log-prob gathers the token
    logit and subtracts the logsumexp instead of building a (…, V) log-softmax tensor; the
    entropy needs one (…, V) softmax."""
    logits = logits.float() / temperature  # (..., V)
    if top_k > 0 or top_p < 1.0:
        taken = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, tokens.unsqueeze(-1), True)
        logits = truncate(logits, top_k, top_p, keep=taken)
    lse = torch.logsumexp(logits, dim=-1)  # (...)
    token_logit = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (...)
    probs = torch.softmax(logits, dim=-1)  # (..., V), 0 on cut tokens
    entropy = lse - (probs * logits.clamp(min=torch.finfo(logits.dtype).min)).sum(-1)  # (...)
    return token_logit - lse, entropy


def prefix_lengths(mask: torch.Tensor) -> torch.Tensor:
    """(..., L) attention mask -> (...) index of the last attended token + 1 (0 if none)."""
    positions = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return (mask.long() * positions).amax(-1)


def first_attended(mask: torch.Tensor) -> torch.Tensor:
    """(..., L) attention mask -> (...) index of the first attended token (L if none)."""
    return (mask.long().cumsum(-1) == 0).sum(-1)


def attended_width(mask: torch.Tensor, ends: torch.Tensor) -> int:
    """Columns that hold every row's attended span: max over rows of end - first attended
    column (B, L) -> int, at least 1. Right-aligning to this width drops the left padding that
    all rows share (a short prompt in a wide prompt slot) instead of running the model over it."""
    return max(int((ends - first_attended(mask)).max()), 1)


def right_align(
    ids: torch.Tensor, mask: torch.Tensor, ends: torch.Tensor, width: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each row so that its prefix `[:end]` ends at column `width` (left padding).

    ids, mask: (B, L); ends: (B,). Returns (B, width) ids and mask.
    """
    src = torch.arange(width, device=ids.device) - (width - ends).unsqueeze(1)  # (B, width)
    inside = src >= 0
    src = src.clamp(min=0)
    out_ids = torch.where(inside, ids.gather(1, src), torch.full_like(src, pad_id))
    out_mask = torch.where(inside, mask.long().gather(1, src), torch.zeros_like(src))
    return out_ids, out_mask


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Left-padding-aware positions: the first real token is position 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def masked_ids(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The observation as one tensor: attended token ids, -1 where the mask is 0."""
    return ids.masked_fill(~mask.bool(), -1)


def step_kinds(
    prev: torch.Tensor,
    prev_action: torch.Tensor,
    obs: torch.Tensor,
    ends: torch.Tensor,
    from_env: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How the observation `obs` (..., L) (`masked_ids`, prefix lengths `ends` (...)) follows the
    observation `prev` on which `prev_action` (...) was taken. Returns two (...) bools:

    - continues: `obs` is `prev` plus `prev_action` written after its prefix (the same episode
      one step later): every column attended in `prev` is unchanged, and the first newly attended
      column, after `prev`'s prefix, holds `prev_action`. Without `from_env` that is the only new
      column; with `from_env` (..., L) (tools / turns: docs/multiturn.md) the new columns after it
      must all be env-written (from_env 1) and the action's column not. (A prompt with padding
      between it and the response, as in tests/test_lm_padding.py, continues too: the action's
      column need not be adjacent.)
    - unchanged: `obs` equals `prev` (a finished lockstep row, whose actions the env ignores).
    Anything else is a new episode.
    """
    before = prev >= 0  # (..., L) attended in prev
    new = (obs >= 0) & ~before  # (..., L) newly attended
    kept = ((obs == prev) | ~before).all(-1)
    n_new = new.sum(-1)
    first = new.long().argmax(-1, keepdim=True)  # (..., 1) the first new column
    added = obs.gather(-1, first).squeeze(-1) == prev_action
    after = first.squeeze(-1) >= prefix_lengths(before)
    if from_env is None:
        env_ok = n_new == 1
    else:
        written = from_env.bool()
        env_ok = ((written & new).sum(-1) == n_new - 1) & ~written.gather(-1, first).squeeze(-1)
    del ends  # the new prefix end is implied by the new columns
    return kept & (n_new >= 1) & added & after & env_ok, (obs == prev).all(-1)


def sample(logits: torch.Tensor) -> torch.Tensor:
    """One draw per row from softmax(logits): argmax of p / Exp(1) noise (the exponential race),
    cheaper than torch.multinomial for a (B, V) batch."""
    probs = torch.softmax(logits, dim=-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(-1)
