"""Stepping overhead of TextRLHF-v0 against a plain numpy loop doing the same bookkeeping.

Both sides replay the same pre-drawn token ids (EOS with probability 1/12, so episodes end at EOS
or at the length limit), write them into a preallocated (rows, P + N) array, update the mask,
detect EOS / the length limit, and decode + score the finished rows with the same rapidfuzz edit
distance. The env additionally validates actions, copies observations and builds infos.

    python benchmarks/env_step.py [--steps 20000] [--rows 64]

Prints steps/s and the ratio baseline_time / env_time (1.0 = no overhead over plain numpy).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from rapidfuzz.distance import Levenshtein

from textenv import PromptDataset, TextRLHFEnv, TextRLHFVectorEnv
from textenv.tokenizer import make_batch_decoder, make_decoder

P, N, EOS, PAD = 32, 32, 1, 0


def draw_actions(steps: int, rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    actions = rng.integers(100, 108, size=(steps, rows))  # bytes "a".."h"
    actions[rng.random((steps, rows)) < 1 / 12] = EOS
    return actions  # (steps, rows)


def baseline_single(ds: PromptDataset, actions: np.ndarray, decode) -> int:
    """Plain Python/numpy loop for one sequence; returns the number of episodes."""
    ids = np.full(P + N, PAD, dtype=np.int64)
    mask = np.zeros(P + N, dtype=np.int8)
    rng = np.random.default_rng(0)
    n_gen, done, episodes, ref = 0, True, 0, None
    for a in actions.tolist():
        if done:
            i = int(rng.integers(len(ds)))
            ids[:P], mask[:P], ids[P:], mask[P:] = ds.input_ids[i], ds.attention_mask[i], PAD, 0
            n_gen, done, ref = 0, False, ds.references[i]
        ids[P + n_gen], mask[P + n_gen] = a, 1
        n_gen += 1
        if a == EOS or n_gen == N:
            text = decode(ids[P : P + n_gen - (a == EOS)])
            _ = Levenshtein.normalized_similarity(text, ref)
            done, episodes = True, episodes + 1
    return episodes


def baseline_vector(ds: PromptDataset, actions: np.ndarray, decode_batch, lockstep: bool) -> int:
    """Plain numpy: the same bookkeeping for all rows at once; returns the number of episodes."""
    steps, rows = actions.shape
    ids = np.full((rows, P + N), PAD, dtype=np.int64)
    mask = np.zeros((rows, P + N), dtype=np.int8)
    n_gen = np.zeros(rows, dtype=np.int64)
    done = np.ones(rows, dtype=bool)
    refs: list = [None] * rows
    rng = np.random.default_rng(0)
    episodes = 0
    for t in range(steps):
        was_done = done.copy()
        if done.all() or (not lockstep and done.any()):  # reset finished rows
            reset = np.flatnonzero(done)
            idx = rng.integers(len(ds), size=len(reset))
            ids[reset, :P], mask[reset, :P] = ds.input_ids[idx], ds.attention_mask[idx]
            ids[reset, P:], mask[reset, P:] = PAD, 0
            n_gen[reset], done[reset] = 0, False
            for r, i in zip(reset.tolist(), idx.tolist()):
                refs[r] = ds.references[i]
            if lockstep or t == 0:  # (the first reset is env.reset())
                was_done[:] = False
        # next-step autoreset: a row reset at this step takes no action
        live = ~was_done
        active = np.flatnonzero(live)
        a = actions[t]
        cols = P + n_gen[active]
        ids[active, cols], mask[active, cols] = a[active], 1
        n_gen[active] += 1
        eos = live & (a == EOS)
        finished = eos | (live & (n_gen == N))
        done |= finished
        if finished.any():
            rows_f = np.flatnonzero(finished)
            texts = decode_batch(ids[rows_f, P:], n_gen[rows_f] - eos[rows_f])
            _ = [Levenshtein.normalized_similarity(x, refs[r]) for x, r in zip(texts, rows_f)]
            episodes += len(rows_f)
    return episodes


def run_vector(env: TextRLHFVectorEnv, actions: np.ndarray) -> int:
    episodes = 0
    env.reset(seed=0)
    lockstep = env.lockstep
    done = np.zeros(env.num_envs, dtype=bool)
    for a in actions:
        if lockstep and done.all():
            env.reset()
        _, _, terminated, _, info = env.step(a)
        done = terminated
        if info:
            episodes += int(info["_score"].sum())
    return episodes


def run_single(env: TextRLHFEnv, actions: np.ndarray) -> int:
    episodes = 0
    env.reset(seed=0)
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            episodes += 1
            env.reset()
    return episodes


def timed(fn, *args, repeats: int = 3) -> tuple[float, int]:
    """Best wall time of ``repeats`` runs (the CPU is shared, the minimum is the least noisy)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def lm_step_us(rows: int, repeats: int = 3) -> float:
    """Mean microseconds of one KV-cached decoding step (+ sampling) of a tiny random GPT-2
    (~0.45M params) over a P-token prompt and N new tokens: what an LM rollout step costs."""
    from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=259, n_positions=P + N, n_embd=96, n_layer=4, n_head=4,
        bos_token_id=1, eos_token_id=1,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    prompt = torch.randint(3, 259, (rows, P))
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            out = model(input_ids=prompt, use_cache=True, past_key_values=DynamicCache())
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            start = time.perf_counter()
            for _ in range(N - 1):
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                token = torch.multinomial(torch.softmax(out.logits[:, -1], -1), 1)
            best = min(best, (time.perf_counter() - start) / (N - 1))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="single-env steps")
    parser.add_argument("--rows", type=int, default=64, help="vector-env rows")
    parser.add_argument("--vector-steps", type=int, default=2000)
    parser.add_argument("--no-lm", action="store_true", help="skip the tiny GPT-2 step timing")
    args = parser.parse_args()
    torch.set_num_threads(1)

    single = TextRLHFEnv(max_new_tokens=N, max_prompt_tokens=P)
    ds = single.dataset
    decode = make_decoder(single.tokenizer)  # the decoders the envs use
    decode_batch = make_batch_decoder(single.tokenizer)
    rows = [("single env", 1, args.steps), ("single env via gym.make (wrappers)", 1, args.steps)]
    rows.append((f"vector env {args.rows} rows lockstep", args.rows, args.vector_steps))
    rows.append((f"vector env {args.rows} rows next_step", args.rows, args.vector_steps))
    print(
        f"{'':38s} {'env steps/s':>12s} {'numpy steps/s':>14s} {'us/step env':>12s} {'ratio':>6s}"
    )
    for label, n_rows, steps in rows:
        actions = draw_actions(steps, n_rows)
        if n_rows == 1:
            base_t, base_eps = timed(baseline_single, ds, actions[:, 0], decode)
            env = single if "wrappers" not in label else gym.make("TextRLHF-v0", max_new_tokens=N)
            env_t, env_eps = timed(run_single, env, actions[:, 0])
        else:
            mode = "next_step" if "next_step" in label else "lockstep"
            base_t, base_eps = timed(baseline_vector, ds, actions, decode_batch, mode == "lockstep")
            venv = TextRLHFVectorEnv(num_envs=n_rows, autoreset_mode=mode, max_new_tokens=N)
            env_t, env_eps = timed(run_vector, venv, actions)
        ratio = base_t / env_t
        print(
            f"{label:38s} {steps / env_t:12,.0f} {steps / base_t:14,.0f} "
            f"{env_t / steps * 1e6:12.1f} {ratio:6.2f}   (episodes env {env_eps}, numpy {base_eps})"
        )
    print("ratio = numpy_time / env_time (1.0 means no overhead over the plain numpy loop)")
    if not args.no_lm:
        lm_us = lm_step_us(args.rows)
        venv = TextRLHFVectorEnv(num_envs=args.rows, max_new_tokens=N)
        env_us, _ = timed(run_vector, venv, draw_actions(args.vector_steps, args.rows))
        env_us = env_us / args.vector_steps * 1e6
        print(
            f"tiny GPT-2 (0.45M) KV-cached step + sampling, batch {args.rows}: {lm_us:.0f} us; "
            f"lockstep env step: {env_us:.0f} us = {env_us / (env_us + lm_us):.1%} of a rollout step"
        )


if __name__ == "__main__":
    main()
