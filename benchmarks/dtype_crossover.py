"""From which model size is bfloat16 autocast faster than float32 on this CPU? (run.dtype: auto)

    python benchmarks/dtype_crossover.py [--rounds 3] [--threads 1] [--batch 64] [--tokens 64]
        [--sizes 2x128,4x256,6x384,12x768] [--budget 40]

Randomly initialised GPT-2s with the byte vocabulary (259 tokens, n_positions 320), layers x
width from --sizes (heads = width / 64). For each size, one forward + backward of the causal LM
loss on a batch of --batch x --tokens random tokens is timed in float32 and under
`torch.autocast("cpu", torch.bfloat16)` in turn (A, B, A, B, ...: alternating rounds in the same
process, so that load from other processes hits both alike), after one warm-up step of each.
A size stops early once its timed rounds pass --budget seconds (at least one round). Prints, per
size, the parameter count, the median seconds of each dtype and the ratio bfloat16 / float32
(< 1: bfloat16 is faster). `agents.run.dtype.BF16_CPU_MIN_PARAMS` (the threshold of
run.dtype: auto on CPUs with native bf16) was chosen from this table; bfloat16 pays off only
where the CPU has native bf16 matrix instructions (AVX512-BF16 / AMX): `lscpu | grep bf16`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def build(layers: int, width: int) -> GPT2LMHeadModel:
    """A random GPT-2 of `layers` x `width`, byte vocabulary, 320 positions."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=259, n_positions=320, n_embd=width, n_layer=layers, n_head=max(1, width // 64),
        pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def step(model: GPT2LMHeadModel, ids: torch.Tensor, bf16: bool) -> float:
    """Seconds of one forward + backward (gradients cleared first)."""
    model.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    with ctx:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--sizes", default="2x128,4x256,6x384,12x768")
    parser.add_argument("--budget", type=float, default=40.0, help="timed seconds per size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 259, (args.batch, args.tokens), generator=gen)
    print(f"batch {args.batch} x {args.tokens} tokens, {args.threads} thread(s), forward+backward")
    print(
        f"{'size':>7s} {'params':>8s} {'float32 s':>10s} {'bf16 s':>8s} {'bf16/fp32':>10s} rounds"
    )
    for size in args.sizes.split(","):
        layers, width = (int(x) for x in size.split("x"))
        model = build(layers, width)
        params = sum(p.numel() for p in model.parameters())
        step(model, ids[:8], False)  # warm-up of both paths on a small batch
        step(model, ids[:8], True)
        times: dict[bool, list[float]] = {False: [], True: []}
        spent = 0.0
        for _ in range(args.rounds):
            for bf16 in (False, True):
                times[bf16].append(step(model, ids, bf16))
            spent += times[False][-1] + times[True][-1]
            if spent > args.budget:
                break
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"{size:>7s} {params / 1e6:7.2f}M {fp32:10.3f} {bf16:8.3f} {bf16 / fp32:9.2f}x "
            f"{len(times[False])}",
            flush=True,
        )


if __name__ == "__main__":
    main()
