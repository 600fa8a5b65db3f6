"""Data-parallel PPO on torch.distributed: every cross-process reduction in ONE small object.

A W-rank run is the same experiment as a 1-rank run: the config's `env.num_envs` and
`ppo.batch_size` are global, each rank steps `num_envs / W` env rows, and every statistic a
1-process run computes over the batch is computed over all ranks here (the gradient sum, the
global count of valid steps, advantage and score moments, the KL controller's input, the early
stop and non-finite decisions, the logged means).

    dist = init_distributed()          # from torchrun's RANK / WORLD_SIZE / MASTER_ADDR ... env vars
    dist.sum(t)                        # in-place all-reduce (sum); returns t
    dist.is_main                       # rank 0 alone writes the run folder and the weights

Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1) `init_distributed` returns `LOCAL`, a
`Distributed` of world size 1 whose reductions return their input untouched: the 1-process path
runs exactly the arithmetic it ran before this module existed (bit-identical results).

No pickled payloads: everything that crosses processes is a tensor (strings travel as UTF-8
bytes in a uint8 tensor). gloo on CPU, NCCL on CUDA, with a timeout so that a hung peer ends
the job instead of blocking it forever. Work that rank 0 does alone (an evaluation, the end of a
run) may take longer than that timeout: the other ranks wait for it in `wait_for_main`, a barrier
on a second (gloo) group whose timeout is WAIT_FOR_MAIN_S.
"""

from __future__ import annotations

import faulthandler
import json
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, NamedTuple

import torch

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# how long the other ranks wait for rank 0's own work (`Distributed.wait_for_main`): an
# evaluation of any length; a rank 0 that fails instead ends the job at once (torchrun)
WAIT_FOR_MAIN_S = 24 * 3600.0


class RowShard(NamedTuple):
    """The env rows [start, start + local) of `total` global rows that one rank owns, and the
    generator that draws the GLOBAL minibatch permutation (the same on every rank)."""

    start: int
    total: int
    generator: torch.Generator


class Pending:
    """An all-reduce in flight (`Distributed.sum_async`): `wait()` returns the summed tensor."""

    def __init__(self, tensor: torch.Tensor, work: Any = None, moved: torch.Tensor | None = None):
        self.tensor, self.work, self.moved = tensor, work, moved

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()
            if self.moved is not None:  # a CPU tensor reduced on the NCCL device
                self.tensor.copy_(self.moved)
            self.work = None
        return self.tensor


class Distributed:
    """Rank, world size and the reductions of one process of a data-parallel run.

    At world size 1 every method is a no-op that returns its input (no process group exists).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.is_main = rank == 0
        self.active = world_size > 1
        self.device = torch.device("cpu")  # where collectives run (cuda:LOCAL_RANK under NCCL)
        self.wait_group: Any = None  # the long-timeout group of `wait_for_main`

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size})"

    # -- reductions ---------------------------------------------------------------------------

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) `tensor` in place across ranks; returns it (itself at world size 1)."""
        return self.sum_async(tensor).wait()

    def sum_async(self, tensor: torch.Tensor) -> Pending:
        """Start an in-place all-reduce (sum) of `tensor` and return at once; `.wait()` on the
        result blocks until `tensor` holds the sum (at world size 1: already done)."""
        if not self.active:
            return Pending(tensor)
        if tensor.device != self.device:  # e.g. a CPU statistic under NCCL
            moved = tensor.to(self.device)
            return Pending(tensor, torch.distributed.all_reduce(moved, async_op=True), moved)
        return Pending(tensor, torch.distributed.all_reduce(tensor, async_op=True))

    def sum_floats(self, *values: float) -> list[float]:
        """Sum Python numbers across ranks (one all-reduce, float64)."""
        if not self.active:
            return list(values)
        return self.sum(torch.tensor(values, dtype=torch.float64)).tolist()

    def max_floats(self, *values: float) -> list[float]:
        """The largest of each Python number across ranks (one all-reduce, float64)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any rank (decisions all ranks must share)."""
        if not self.active:
            return bool(flag)
        return self.sum_floats(float(bool(flag)))[0] > 0

    def moments(self, x: torch.Tensor) -> tuple[int, float, float]:
        """(count, mean, sum of squared deviations) of the values `x` of all ranks, in float64:
        two all-reduces (the mean first, then the deviations: no cancellation)."""
        x = x.double()
        n, total = self.sum_floats(float(x.numel()), float(x.sum()))
        mean = total / n if n else 0.0
        (m2,) = self.sum_floats(float((x - mean).square().sum()))
        return int(n), mean, m2

    def gather_floats(self, values: Iterable[float]) -> list[float]:
        """The concatenation, in rank order, of every rank's list of numbers (lengths may
        differ)."""
        return self.gather_lists({"values": list(values)})["values"]

    def gather_lists(self, lists: dict[str, list[float]]) -> dict[str, list[float]]:
        """For every key any rank has, the concatenation in rank order of every rank's list
        (a rank without the key adds nothing): two all-gathers in all, of the byte lengths and
        of the padded bytes (a JSON header of the keys and lengths, then the float64 values)."""
        if not self.active:
            return {k: [float(v) for v in values] for k, values in lists.items()}
        header = json.dumps({k: len(v) for k, v in lists.items()}).encode()
        values = torch.tensor([float(v) for vs in lists.values() for v in vs], dtype=torch.float64)
        data = torch.cat(
            [
                torch.tensor([len(header)], dtype=torch.int64).view(torch.uint8),
                torch.tensor(list(header), dtype=torch.uint8),
                values.view(torch.uint8),
            ]
        )
        counts = self._all_gather(torch.tensor([data.numel()], dtype=torch.int64))
        padded = torch.zeros(max(int(c) for c in counts), dtype=torch.uint8)
        padded[: data.numel()] = data
        out: dict[str, list[float]] = {}
        for part, count in zip(self._all_gather(padded), counts):
            part = part[: int(count)]
            n = int(part[:8].view(torch.int64))
            sizes = json.loads(bytes(part[8 : 8 + n].tolist()).decode())
            flat = part[8 + n :].clone().view(torch.float64).tolist()
            offset = 0
            for key, size in sizes.items():
                out.setdefault(key, []).extend(flat[offset : offset + size])
                offset += size
        return {k: out[k] for k in sorted(out)}

    def broadcast_str(self, text: str | None) -> str:
        """Rank 0's string on every rank (e.g. the run folder it created)."""
        if not self.active:
            return text or ""
        data = torch.tensor(list((text or "").encode()), dtype=torch.uint8)
        n = torch.tensor([data.numel()], dtype=torch.int64)
        self._broadcast(n)
        buf = data if self.is_main else torch.zeros(int(n), dtype=torch.uint8)
        self._broadcast(buf)
        return bytes(buf.tolist()).decode()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (identical initial weights)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                self._broadcast(tensor.data)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def wait_for_main(self) -> None:
        """A barrier for work rank 0 does alone (an evaluation, the end of a run): the other
        ranks call it at once and wait here, with the wait group's long timeout, instead of in
        their next collective, whose timeout is meant for a hung peer. Rank 0 calls it when
        done."""
        if self.active:
            torch.distributed.barrier(group=self.wait_group)

    def check_divides(self, name: str, value: int) -> int:
        """value / world_size, or a ValueError naming the setting and the allowed values."""
        return check_divides(name, value, self.world_size)

    def close(self) -> None:
        """Leave the process group together: a barrier first (`wait_for_main`: rank 0 may
        still be writing the run folder's summary and plots), so that no rank tears down its
        connections (and exits) while a peer is still inside a collective or writing the run
        folder, then `destroy_process_group` (without it, gloo's threads outlive the group)."""
        if self.active and torch.distributed.is_initialized():
            self.wait_for_main()
            torch.distributed.destroy_process_group()

    # -- helpers ------------------------------------------------------------------------------

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        moved = tensor.to(self.device)
        parts = [torch.empty_like(moved) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, moved)
        return [p.cpu() for p in parts]

    def _broadcast(self, tensor: torch.Tensor) -> None:
        if tensor.device == self.device:
            torch.distributed.broadcast(tensor, src=0)
            return
        moved = tensor.to(self.device)
        torch.distributed.broadcast(moved, src=0)
        tensor.copy_(moved)


LOCAL = Distributed()  # the single-process run: every reduction is a no-op


def check_divides(name: str, value: int, world_size: int) -> int:
    """value / world_size, or a ValueError naming the setting and the allowed values. Also used
    by `textrlhf train --nproc N` before it starts any rank (no process group needed)."""
    if value % world_size:
        allowed = [m for m in range(world_size, 4 * value + 1, world_size)][:8]
        raise ValueError(
            f"{name}={value} must be divisible by the world size {world_size} (each of "
            f"the {world_size} ranks owns an equal share); allowed e.g. {allowed}"
        )
    return value // world_size


def launched_by_torchrun() -> bool:
    """True when torchrun (or torch.distributed.run) started this process with WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(
    device: str = "cpu", timeout_s: float = 600.0, wait_timeout_s: float = WAIT_FOR_MAIN_S
) -> Distributed:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); return `LOCAL` when not launched with WORLD_SIZE > 1.

    `device` "cpu" uses gloo; "cuda" uses NCCL with this rank on cuda:LOCAL_RANK. A collective
    that waits longer than `timeout_s` (a dead or stuck peer) raises instead of hanging; the
    barrier of `Distributed.wait_for_main` (rank 0 working alone) waits up to `wait_timeout_s`.
    """
    if not launched_by_torchrun():
        return LOCAL
    if not faulthandler.is_enabled():  # a rank killed by a native crash prints its Python stack
        faulthandler.enable()
    missing = [k for k in ENV_VARS if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} are not set: launch with "
            "torchrun (e.g. torchrun --standalone --nproc_per_node=2 -m agents.cli train CONFIG) "
            "or with `textrlhf train CONFIG --nproc N`"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device not in ("cpu", "cuda"):
        raise ValueError(f"distributed device must be 'cpu' or 'cuda', got {device!r}")
    backend = "nccl" if device == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        kwargs = {}
        if device == "cuda":
            torch.cuda.set_device(local_rank)
            kwargs["device_id"] = torch.device("cuda", local_rank)
        torch.distributed.init_process_group(
            backend, timeout=timedelta(seconds=timeout_s), **kwargs
        )
    dist = Distributed(rank, world, local_rank)
    # every rank creates it, in the same order; gloo also under NCCL (a barrier needs no GPU)
    dist.wait_group = torch.distributed.new_group(
        backend="gloo", timeout=timedelta(seconds=wait_timeout_s)
    )
    if device == "cuda":
        dist.device = torch.device("cuda", local_rank)
    return dist
