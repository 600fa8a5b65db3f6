"""How much faster can 2 processes be than 1 on this machine? The bound behind any data-parallel
speed-up on CPU.

    python benchmarks/cpu_parallel.py [--procs 2] [--seconds 3]

Runs the same single-threaded torch workload (a 4-layer, 256-wide MLP forward + backward on a
(512, 256) batch, the size class of the LM update in benchmarks/distributed.py) in 1 process, then
in `--procs` processes at once, and prints the throughput of N processes relative to 1. On N
physical cores it is close to N; on N hyperthreads of fewer cores it is less, and a W-rank run can
then be at best 1/throughput of the 1-rank time, whatever the code does.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time


def work(seconds: float, queue: mp.Queue) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])
    x = torch.randn(512, 256)
    for _ in range(5):  # warm-up
        net(x).square().mean().backward()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        net(x).square().mean().backward()
        steps += 1
    queue.put(steps / (time.perf_counter() - start))


def run(n: int, seconds: float) -> float:
    """Total steps/s of `n` processes running at once."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=work, args=(seconds, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    one = run(1, args.seconds)
    many = run(args.procs, args.seconds)
    print(f"1 process: {one:.1f} steps/s; {args.procs} processes: {many:.1f} steps/s in total")
    print(f"throughput of {args.procs} processes vs 1: {many / one:.2f}x")
    print(f"best possible {args.procs}-rank time vs 1 rank on this machine: {one / many:.2f}x")


if __name__ == "__main__":
    main()
