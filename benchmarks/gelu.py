"""Which GELU to give the tiny models: forward + backward time of each variant on this CPU.

    python benchmarks/gelu.py [--rows 1568] [--width 512]

The shape is one MLP activation of a PPO minibatch of configs/text_edit_distance.yaml (32 episodes
x about 49 tokens, 4 x 128 wide). Prints microseconds per call (median of 5 timings of 50 calls,
1 torch thread) and the largest difference to exact GELU. On the 2-vCPU AVX-512 machine of this
project, torch's fused tanh kernel was about 3x slower than exact GELU (docs/lm.md).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation written as elementwise ops (transformers' `gelu_new`)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3.0))))


VARIANTS = {
    "gelu (exact, erf)": F.gelu,
    "gelu_pytorch_tanh (fused)": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new (6 ops)": gelu_new,
}


def per_call(fn, calls: int = 50) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=32 * 49)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.rows, args.width)
    grad = torch.randn_like(x)
    exact = F.gelu(x)
    print(f"GELU on ({args.rows}, {args.width}), 1 thread: microseconds per call")
    print(f"{'variant':28s} {'forward':>9s} {'fwd+bwd':>9s} {'max |diff| to exact':>20s}")
    for name, fn in VARIANTS.items():
        leaf = x.clone().requires_grad_()
        forward = per_call(lambda fn=fn: fn(x))
        both = per_call(lambda fn=fn, leaf=leaf: fn(leaf).backward(grad))
        diff = float((fn(x) - exact).abs().max())
        print(f"{name:28s} {forward:9.0f} {both:9.0f} {diff:20.2e}")


if __name__ == "__main__":
    main()
