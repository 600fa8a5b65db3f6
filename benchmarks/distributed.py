"""Data-parallel speed: one LM PPO iteration at 2 ranks vs 1 rank (and 1 process x 2 threads).

    python benchmarks/distributed.py [--iterations 4] [--nproc 2] [--dtype float32] [--repeats 1]

The iteration: a 4-layer, 256-wide GPT-2 with the byte vocabulary (random init, saved to a temp
folder), 16 prompts of the reverse task, 32 new tokens (lockstep, edit-distance reward), a
separate critic (a copy of the actor), a frozen reference (KL penalty), 4 epochs of 2
minibatches. The same config runs four ways, one after the other (never concurrently):

    1 rank,  1 torch thread        the baseline
    1 rank,  2 torch threads       intra-op parallelism, for comparison
    N ranks, 1 torch thread each   torchrun --standalone (gloo): the data-parallel run
    N solo, 1/N of the work each   (mode Nsolo) N processes under torchrun, each training ALONE
                                   on one rank's share (num_envs / N rows, batch_size / N), no
                                   collective but a barrier around each timed iteration: a rank's
                                   work with free communication, the ceiling of any N-rank run

Each reports the median seconds of an iteration (rollout + update) over `--iterations` after one
warm-up iteration, the rollout / update split, and (N ranks) the gradient all-reduce's share of
the update time: the time spent waiting for it after the backward (with `--bucket-mb` > 0 the
rest hides in the backward; `--bucket-mb 0` shows the whole sum). Ratios are printed against the
baseline; the target for 2 ranks is <= 0.6.
Measure on a quiet machine: other processes on the same cores distort every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_model(folder: Path) -> str:
    """The benchmark model: GPT-2, 4 layers, width 256, 4 heads, byte vocabulary, random init."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from textenv import default_tokenizer

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=259, n_positions=128, n_embd=256, n_layer=4, n_head=4,
        pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    default_tokenizer().save_pretrained(folder)
    return str(folder)


def config(model: str, dtype: str) -> dict:
    return {
        "name": "bench_dp", "seed": 1, "total_timesteps": 16 * 32 * 1000,
        "env": {
            "id": "textenv:TextRLHF-v0", "num_envs": 16, "vectorization": "vector_entry_point",
            "kwargs": {"prompts": "reverse", "reward_fn": "edit_distance",
                       "max_prompt_tokens": 32, "max_new_tokens": 32},
        },
        "policy": {"type": "lm", "model_path": model, "critic": "separate"},
        "ppo": {"n_steps": 32, "batch_size": 256, "n_epochs": 4, "gamma": 1.0,
                "gae_lambda": 0.95, "learning_rate": 1e-5, "anneal_lr": False},
        "kl": {"enabled": True, "beta": 0.05},
        "eval": {"episodes": 0},
        "run": {"progress": False, "torch_threads": 1, "dtype": dtype},
    }  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    """Time `args.iterations` iterations in this process (one rank under torchrun)."""
    import time

    import torch

    sys.path.insert(0, str(REPO))
    from agents.core.distributed import init_distributed
    from agents.run.config import Config
    from agents.run.files import atomic_write_text
    from agents.run.trainer import Trainer

    data = config(args.model, args.dtype)
    dist = init_distributed("cpu")
    solo = args.solo and dist.active  # Nsolo: this rank's share, trained without collectives
    if solo:
        data["env"]["num_envs"] //= dist.world_size
        data["ppo"]["batch_size"] //= dist.world_size
    cfg = Config.model_validate(data)
    cfg.run.torch_threads = args.threads
    cfg.run.allreduce_bucket_mb = args.bucket_mb
    trainer = Trainer(cfg) if solo else Trainer(cfg, dist=dist)
    torch.set_num_threads(args.threads)
    trainer.iterate()  # warm-up
    times, rollout, update, allreduce = [], [], [], []
    for _ in range(args.iterations):
        dist.barrier()
        reduce_before = trainer.ppo.allreduce_seconds
        start = time.perf_counter()
        metrics = trainer.iterate()
        if solo:
            dist.barrier()  # the slowest rank's time, as a synchronous N-rank job would wait
        times.append(time.perf_counter() - start)
        rollout.append(metrics["time/rollout_time"])
        update.append(metrics["time/update_time"])
        allreduce.append(trainer.ppo.allreduce_seconds - reduce_before)
    if dist.is_main:
        result = {
            "iteration_s": statistics.median(times),
            "rollout_s": statistics.median(rollout),
            "update_s": statistics.median(update),
            "allreduce_s": statistics.median(allreduce),
            "world_size": dist.world_size,
            "threads": args.threads,
        }
        atomic_write_text(args.out, json.dumps(result))  # the parent never reads half of it
    trainer.close()
    dist.close()


def run(label: str, cmd: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    print(f"running {label} ...", flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--modes", default="1x1,1x2,Nx1,Nsolo",
        help="which runs: 1x1 (1 rank, 1 thread), 1x2 (1 rank, 2 threads), Nx1 (N ranks), "
        "Nsolo (N processes, each alone on 1/N of the work: the ceiling)",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="run the modes this many times, alternately, and report each mode's median: this "
        "VM's speed drifts by up to 1.5x within minutes, which biases one-after-the-other runs",
    )  # fmt: skip
    parser.add_argument(
        "--bucket-mb", type=float, default=4.0,
        help="run.allreduce_bucket_mb of the N-rank run (0: one all-reduce after the backward)",
    )  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--solo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "model")
        script = [str(Path(__file__).resolve()), "--worker", "--model", model]
        common = [
            f"--iterations={args.iterations}", f"--dtype={args.dtype}",
            f"--bucket-mb={args.bucket_mb}",
        ]  # fmt: skip
        py = sys.executable
        runs: dict[str, list[dict]] = {}
        modes = args.modes.split(",")
        torchrun = [
            py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"
        ]  # fmt: skip
        for repeat in range(args.repeats):
            for mode, label, threads, launcher, extra in (
                ("1x1", "1 rank x 1 thread", 1, [py], []),
                ("1x2", "1 rank x 2 threads", 2, [py], []),
                ("Nx1", f"{args.nproc} ranks x 1 thread", 1, torchrun, []),
                ("Nsolo", f"{args.nproc} solo x 1/{args.nproc} work", 1, torchrun, ["--solo"]),
            ):
                if mode not in modes:
                    continue
                out = tmp / f"{repeat}_{mode}.json"
                cmd = [*launcher, *script, *common, *extra, f"--threads={threads}", f"--out={out}"]
                runs.setdefault(label, []).append(run(label, cmd, out))
    # each mode's median over repeats (each repeat: the median of --iterations iterations)
    results = {
        label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()
    }
    base = next(iter(results.values()))["iteration_s"]
    if args.repeats > 1:
        first = next(iter(runs.values()))
        for label, rs in list(runs.items())[1:]:
            ratios = [r["iteration_s"] / f["iteration_s"] for r, f in zip(rs, first)]
            print(f"{label}: ratio per repeat " + ", ".join(f"{x:.2f}x" for x in ratios))
    print(
        f"\nLM PPO iteration ({args.dtype}; medians of {args.iterations} iterations, over "
        f"{args.repeats} alternating repeat(s)), ratio to the first row"
    )
    print(
        f"{'':22s} {'iteration':>10s} {'rollout':>8s} {'update':>8s} {'allreduce':>10s} {'ratio':>6s}"
    )
    for label, r in results.items():
        share = r["allreduce_s"] / r["update_s"] if r["update_s"] else 0.0
        print(
            f"{label:22s} {r['iteration_s']:9.2f}s {r['rollout_s']:7.2f}s {r['update_s']:7.2f}s "
            f"{r['allreduce_s']:6.3f}s {share:3.0%} {r['iteration_s'] / base:5.2f}x"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
