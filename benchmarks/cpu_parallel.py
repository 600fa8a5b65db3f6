"""How much faster can 2 processes be than 1 on this machine? The bound behind any data-parallel
speed-up on CPU.

    python benchmarks/cpu_parallel.py [--procs 2] [--seconds 3]

Runs the same single-threaded torch workload in 1 process, then in `--procs` processes at once,
and prints the throughput of N processes relative to 1, for two workloads:

- compute: a 4-layer, 256-wide MLP forward + backward on a (512, 256) batch, the size class of
  the LM update in benchmarks/distributed.py. On N physical cores close to N.
- memory: the matmuls of one cached token step of that benchmark's rollout (8 rows through 25 MB
  of weights, streamed from the shared L3 or memory at every step). If that shared bandwidth were
  the limit, N processes would get much less than N times the throughput here (measured on this
  project's 2-vCPU machine: 1.91x for 2, so it is not; docs/distributed.md).

A W-rank run can at best take 1/throughput of the 1-rank time in each regime, whatever the code
does.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time


def compute_step(torch):
    """The update's regime: a (512, 256) batch through 4 hot 256x256 layers, forward + backward."""
    net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])
    x = torch.randn(512, 256)
    return lambda: net(x).square().mean().backward()


def memory_step(torch):
    """The rollout's regime: one cached token step of the 4-layer, 256-wide GPT-2 of
    benchmarks/distributed.py with a separate critic, i.e. 8 rows through 32 weight matrices of
    256x768 / 256x1024 / 1024x256 (25 MB in all, more than a core's L2 holds): the matmuls stream
    their weights from the shared L3 or memory, so the cost is the weights' size, not the batch."""
    shapes = [(256, 768), (256, 256), (256, 1024), (1024, 256)] * 8
    weights = [torch.randn(*shape) for shape in shapes]
    x = {n: torch.randn(8, n) for n in (256, 1024)}

    def step():
        with torch.no_grad():
            for w in weights:
                x[w.shape[0]] @ w

    return step


WORKLOADS = {"compute": compute_step, "memory": memory_step}


def work(workload: str, seconds: float, queue: mp.Queue) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    step = WORKLOADS[workload](torch)
    for _ in range(5):  # warm-up
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    queue.put(steps / (time.perf_counter() - start))


def run(n: int, seconds: float, workload: str = "compute") -> float:
    """Total steps/s of `n` processes running `workload` at once."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=work, args=(workload, seconds, queue)) for _ in range(n)]
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
    for workload in WORKLOADS:
        one = run(1, args.seconds, workload)
        many = run(args.procs, args.seconds, workload)
        print(f"[{workload}] {WORKLOADS[workload].__doc__.splitlines()[0]}")
        print(
            f"  1 process: {one:.1f} steps/s; {args.procs} processes: {many:.1f} steps/s in total"
        )
        print(f"  throughput of {args.procs} processes vs 1: {many / one:.2f}x")
        print(f"  best possible {args.procs}-rank time vs 1 rank: {one / many:.2f}x")


if __name__ == "__main__":
    main()
