"""Does bfloat16 autocast speed up the LM PPO update on this CPU? float32 vs bfloat16, interleaved.

    python benchmarks/bf16_update.py [--repeats 5] [--threads 1]

The model and rollout of benchmarks/distributed.py (4-layer, 256-wide GPT-2, byte vocabulary,
16 prompts x 32 new tokens, separate critic, 4 epochs of 2 minibatches). One rollout is
collected, then the full PPO update (`PPO.update`: 8 forward+backward+Adam steps of the actor
and the critic) and the rollout itself are timed with run.dtype float32 and bfloat16 in turn (A,
B, A, B, ...) in the same process, so that load from other processes hits both alike. Prints
the medians and the bfloat16 / float32 ratios (< 1: bfloat16 is faster). bfloat16 pays off only
where the CPU has native bf16 matrix instructions (AVX512-BF16 / AMX); `lscpu | grep bf16`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed import build_model, config  # noqa: E402

from agents.run.config import Config  # noqa: E402
from agents.run.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.model_validate(config(build_model(Path(tmp) / "model"), "float32"))
        cfg.run.torch_threads = args.threads
        trainer = Trainer(cfg)
        trainer.collector.collect()
        trainer.buffer.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
        times: dict[str, dict[str, list[float]]] = {}
        for i in range(args.repeats + 1):  # the first round warms up
            for dtype in ("float32", "bfloat16"):
                trainer.policy.set_compute_dtype(dtype)
                start = time.perf_counter()
                trainer.collector.collect()
                mid = time.perf_counter()
                trainer.buffer.compute_gae(cfg.ppo.gamma, cfg.ppo.gae_lambda)
                trainer.ppo.update(trainer.buffer, 0)
                end = time.perf_counter()
                if i:
                    t = times.setdefault(dtype, {"rollout": [], "update": []})
                    t["rollout"].append(mid - start)
                    t["update"].append(end - mid)
    med = {d: {k: statistics.median(v) for k, v in t.items()} for d, t in times.items()}
    for dtype, t in med.items():
        print(f"{dtype:9s} rollout {t['rollout']:6.2f}s  update {t['update']:6.2f}s")
    for phase in ("rollout", "update"):
        ratio = med["bfloat16"][phase] / med["float32"][phase]
        print(f"bfloat16 / float32 {phase}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
