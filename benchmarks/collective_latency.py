"""The latency of one gloo all-reduce between 2 local processes: the fixed cost of every collective
a data-parallel step makes (the gradient, the loss statistics, ...).

    python benchmarks/collective_latency.py [--nproc 2] [--calls 1000]

Launches itself under torchrun (gloo, 1 torch thread per rank) and prints the mean time of an
all-reduce of 6 floats (PPO's statistics), of 9k floats (CartPole's gradient), of 1M floats and
of 6.6M floats (the LM benchmark's gradient, benchmarks/distributed.py), and the CPU time one
costs each process (its own threads and gloo's). On this project's 2-vCPU VM: milliseconds, not microseconds
(docs/distributed.md), which is why CartPole at 2 ranks is slower than at 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def worker(calls: int) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    for n in (6, 9_000, 1_000_000, 6_600_000):
        x = torch.zeros(n)
        reps = calls if n < 1_000_000 else max(calls // (20 if n == 1_000_000 else 100), 5)
        for _ in range(20):  # warm-up
            dist.all_reduce(x)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(reps):
            dist.all_reduce(x)
        per_call = (time.perf_counter() - start) / reps
        cpu = time.process_time()  # this process's CPU, all threads (gloo's included)
        for _ in range(reps):
            dist.all_reduce(x)
        cpu_per_call = (time.process_time() - cpu) / reps
        if dist.get_rank() == 0:
            print(
                f"all-reduce of {n:>9,} floats: {per_call * 1e6:8.0f} us per call, "
                f"{cpu_per_call * 1e6:8.0f} us of CPU per process ({reps} calls)"
            )
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.calls)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.nproc}", __file__, "--worker", f"--calls={args.calls}"]  # fmt: skip
    subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()
