"""LM rollout and update speed against plain transformers baselines on the same model and batch.

    python benchmarks/lm_rollout.py [--model PATH] [--repeats 5]

Three ratios, each against a reference measured in the same run (median of `--repeats`):

(a) rollout tokens/s through the real agent path (RolloutCollector: LMPolicy.act with the KV cache
    as state, TextRLHFVectorEnv in lockstep mode, the edit-distance reward, buffer writes) vs
    `model.generate(do_sample=True)` tokens/s, at batch 16 and 64, 64 new tokens. Target >= 0.9.
(b) update tokens/s: `LMPolicy.evaluate` (one teacher-forced pass, log-probs, entropy, values) +
    the PPO loss + backward on the rollout's batch vs a plain forward + cross-entropy + backward of
    the same prompt+response tensor. Target >= 0.7.
(c) rollout time per token at response length 256 vs 32 (batch 16). Target <= 1.5: the cost of a
    token does not grow with the prefix (no re-encoding).
(d) one GRPO iteration (16 prompts x 4 samples, 32 new tokens, a frozen reference with the KL in
    the loss, one update on the whole batch, no value head) through the real pieces of
    `Trainer.iterate` vs the sum of its unavoidable parts measured in the same run:
    `model.generate` of the 64 responses + one plain reference forward + one plain forward and
    backward on the same (64, 32 + 32) tensor. Target <= 1.3.

Equal token counts: both sides run the SAME model object, whose LM head gets a bias of -1e9 on the
EOS logit, so no row ever stops early and every row yields exactly `new_tokens` tokens (no
`min_new_tokens` logits processor on the generate side, no early stop on ours). generate runs
with top_k=0, top_p=1.0, temperature=1.0 (plain sampling, like the policy). One torch thread on
both sides (`--threads`), the default model (n_positions 320 >= 32 + 256).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.core.buffer import RolloutBuffer
from agents.core.rollout import RolloutCollector
from agents.policies.hf import DEFAULT_MODEL_PATH
from agents.policies.lm import LMPolicy
from agents.policies.sequences import position_ids_from_mask
from textenv import TextRLHFVectorEnv

PROMPT_TOKENS = 32


def no_eos_policy(path: Path, critic: str = "shared", lora: object | None = None) -> LMPolicy:
    """The model at `path` with an EOS-suppressing bias on its LM head (see module docstring).
    With `lora` (a LoRAConfig) the head stays part of the frozen base."""
    policy = LMPolicy.from_pretrained(path, critic=critic, lora=lora)
    head = policy.model.get_output_embeddings()
    biased = nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[policy.eos_id] = -1e9
    biased.requires_grad_(lora is None)
    policy.model.set_output_embeddings(biased)
    return policy


def interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run in turn (A, B, A, B, ...) after one warm-up each so
    that load from other processes hits both sides alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def make_collector(policy: LMPolicy, batch: int, new_tokens: int):
    env = TextRLHFVectorEnv(
        num_envs=batch, prompts="reverse", reward_fn="edit_distance",
        max_prompt_tokens=PROMPT_TOKENS, max_new_tokens=new_tokens,
    )  # fmt: skip
    buffer = RolloutBuffer(new_tokens, batch, env.single_observation_space, env.single_action_space)
    return RolloutCollector(env, policy, buffer, seed=0), env, buffer


def rollout_fn(policy: LMPolicy, batch: int, new_tokens: int):
    """A callable doing one lockstep rollout of `batch` rows, checked to yield every token."""
    collector, _, buffer = make_collector(policy, batch, new_tokens)

    def run():
        collector.collect()
        tokens = int(buffer.valid.sum())
        if tokens != batch * new_tokens:
            raise RuntimeError(f"expected {batch * new_tokens} rollout tokens, got {tokens}")

    return run, collector


def generate_fn(policy: LMPolicy, env: TextRLHFVectorEnv, new_tokens: int):
    """A callable running `model.generate` on the env's first prompts (same batch)."""
    obs, _ = env.reset(seed=0)
    ids = torch.from_numpy(obs["input_ids"][:, :PROMPT_TOKENS])
    mask = torch.from_numpy(obs["attention_mask"][:, :PROMPT_TOKENS]).long()

    @torch.no_grad()
    def run():
        seq = policy.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=new_tokens,
            top_k=0, top_p=1.0, temperature=1.0, pad_token_id=policy.pad_id,
        )  # fmt: skip
        if seq.shape[1] - PROMPT_TOKENS != new_tokens:
            raise RuntimeError(f"generate stopped after {seq.shape[1] - PROMPT_TOKENS} tokens")

    return run


def update_fns(policy: LMPolicy, buffer: RolloutBuffer):
    """Callables for the PPO update step and the plain LM step on the buffer's batch."""
    buffer.compute_gae(1.0, 0.95)
    batch = buffer.full_batch(sequence=True)
    valid = batch.valid.float()

    def ppo_step():
        policy.zero_grad(set_to_none=True)
        log_prob, entropy, value = policy.evaluate(batch)
        ratio = torch.exp(log_prob - batch.log_probs)
        pg = -torch.min(ratio * batch.advantages, ratio.clamp(0.8, 1.2) * batch.advantages)
        loss = pg + 0.5 * (value - batch.returns) ** 2 - 0.01 * entropy
        ((loss * valid).sum() / valid.sum()).backward()

    # the same prompt + response as one (B, P + T) tensor, plain LM loss on the response
    ids = torch.cat([batch.obs["input_ids"][0, :, :PROMPT_TOKENS], batch.actions.T], dim=1)
    mask = torch.cat(
        [batch.obs["attention_mask"][0, :, :PROMPT_TOKENS].long(), batch.valid.T.long()], dim=1
    )
    positions = position_ids_from_mask(mask)
    model = policy.model

    def plain_step():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        loss = F.cross_entropy(
            logits[:, PROMPT_TOKENS - 1 : -1].flatten(0, 1), ids[:, PROMPT_TOKENS:].flatten()
        )
        loss.backward()

    return ppo_step, plain_step


def grpo_fns(path: Path, prompts: int = 16, group: int = 4, new_tokens: int = 32):
    """(iteration, unavoidable parts) callables for one GRPO iteration (see (d) above)."""
    from agents.core.advantages import outcome_advantages
    from agents.core.kl import apply_kl_penalty
    from agents.core.ppo import PPO
    from agents.policies import frozen_copy
    from agents.run.config import PPOConfig

    policy = no_eos_policy(path, critic="none")
    reference = frozen_copy(policy)
    batch = prompts * group
    env = TextRLHFVectorEnv(
        num_envs=batch, prompts="reverse", reward_fn="edit_distance",
        max_prompt_tokens=PROMPT_TOKENS, max_new_tokens=new_tokens,
    )  # fmt: skip
    buffer = RolloutBuffer(new_tokens, batch, env.single_observation_space, env.single_action_space)
    collector = RolloutCollector(env, policy, buffer, seed=0, reset_options={"repeat": group})
    cfg = PPOConfig(
        n_steps=new_tokens, batch_size=batch * new_tokens, n_epochs=1, learning_rate=1e-6,
        normalize_advantage=False, max_grad_norm=1.0,
    )  # fmt: skip
    ppo = PPO(policy, cfg, num_iterations=10**6)

    def iteration():
        collector.collect()
        if int(buffer.valid.sum()) != batch * new_tokens:
            raise RuntimeError("every row must generate every token")
        apply_kl_penalty(buffer, policy, reference, 0.02, "k3", placement="loss")
        ppo.kl_coef = 0.02
        outcome_advantages(buffer, "grpo", group)
        ppo.update(buffer, 0)

    generate = generate_fn(policy, env, new_tokens)
    model, ref_model = policy.model, reference.model
    obs, _ = env.reset(seed=0)
    prompt_ids = torch.from_numpy(obs["input_ids"][:, :PROMPT_TOKENS])
    prompt_mask = torch.from_numpy(obs["attention_mask"][:, :PROMPT_TOKENS]).long()
    ids = torch.cat([prompt_ids, torch.randint(1, 200, (batch, new_tokens))], dim=1)
    mask = torch.cat([prompt_mask, torch.ones(batch, new_tokens, dtype=torch.long)], dim=1)
    positions = position_ids_from_mask(mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)

    def parts():
        generate()
        with torch.no_grad():
            ref_model(input_ids=ids, attention_mask=mask, position_ids=positions)
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        loss = F.cross_entropy(
            logits[:, PROMPT_TOKENS - 1 : -1].flatten(0, 1), ids[:, PROMPT_TOKENS:].flatten()
        )
        loss.backward()
        optimizer.step()

    return iteration, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only-grpo", action="store_true", help="run part (d) only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    policy = no_eos_policy(Path(args.model))
    n_params = sum(p.numel() for p in policy.model.parameters())
    print(f"model {args.model} ({n_params / 1e6:.2f}M params), torch threads {args.threads}")

    if not args.only_grpo:
        new_tokens = 64
        print("\n(a) rollout (agent + env + reward) vs model.generate, 64 new tokens")
        print("(b) update: PPO evaluate + loss + backward vs plain forward + backward, same batch")
        for batch in (16, 64):
            rollout, collector = rollout_fn(policy, batch, new_tokens)
            generate = generate_fn(policy, collector.runner.env, new_tokens)
            t = interleaved_medians({"rollout": rollout, "generate": generate}, args.repeats)
            tok = batch * new_tokens
            r, g = tok / t["rollout"], tok / t["generate"]
            print(f"  (a) batch {batch:3d}: rollout {r:7.0f} tok/s  generate {g:7.0f} tok/s  "
                  f"ratio {r / g:.2f}  (target >= 0.9)")  # fmt: skip
            ppo_step, plain_step = update_fns(policy, collector.buffer)
            u = interleaved_medians({"ppo": ppo_step, "plain": plain_step}, args.repeats)
            print(f"  (b) batch {batch:3d}: PPO update {tok / u['ppo']:7.0f} tok/s  plain "
                  f"{tok / u['plain']:7.0f} tok/s  ratio {u['plain'] / u['ppo']:.2f}  "
                  "(target >= 0.7)")  # fmt: skip

        print("\n(c) rollout time per token vs response length, batch 16")
        fns = {length: rollout_fn(policy, 16, length)[0] for length in (32, 256)}
        t = interleaved_medians(fns, args.repeats)
        per_token = {length: t[length] / (16 * length) for length in fns}
        for length, sec in per_token.items():
            print(f"  length {length:3d}: {1e6 * sec:7.1f} us/token")
        print(f"  ratio 256/32: {per_token[256] / per_token[32]:.2f}  (target <= 1.5)")

    print("\n(d) GRPO iteration (16 prompts x 4, 32 new tokens, reference, one update)")
    iteration, parts = grpo_fns(Path(args.model))
    t = interleaved_medians({"iteration": iteration, "parts": parts}, args.repeats)
    print(f"  iteration {t['iteration']:.3f} s  generate + ref forward + forward/backward "
          f"{t['parts']:.3f} s  ratio {t['iteration'] / t['parts']:.2f}  (target <= 1.3)")  # fmt: skip


if __name__ == "__main__":
    main()
