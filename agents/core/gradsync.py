"""The data-parallel gradient sum, overlapped with the backward pass.

PPO keeps every trainable parameter's gradient as a view into one flat buffer
(`agents.core.ppo.flatten_parameters`). `BucketedGradSum` cuts that buffer into contiguous
buckets of about `bucket_numel` elements, from its end (the backward produces the last layers'
gradients first), and starts an asynchronous all-reduce of a bucket as soon as every parameter
in it has received its gradient (`Tensor.register_post_accumulate_grad_hook`), while the
backward goes on with the earlier layers. `finish()` starts what is left and waits. A few spare
elements after the gradients (`extra`) travel in the first bucket: PPO puts the minibatch's loss
statistics there, so that they need no collective of their own.

    sync = BucketedGradSum(params, storage, dist, bucket_numel=1 << 20, extra=6)  # 0: no overlap
    sync.begin(); loss.backward(); sync.finish(backward_ran=True)   # storage summed over ranks

Collectives must be issued in the same order on every rank, whatever order the hooks fire in:
bucket k starts only after bucket k - 1. Which parameters receive a gradient is learned from the
first backward (every bucket then starts after it), so that a parameter that never gets one (the
unused LM head of a separate critic) does not hold its bucket back. A parameter that later gets a
gradient after its bucket has started would be summed wrongly, so that raises a RuntimeError
naming it; `run.allreduce_bucket_mb: 0` then turns the overlap off (one all-reduce after the
backward).
"""

from __future__ import annotations

import time
from typing import Any

import torch


class BucketedGradSum:
    """Sums `storage` (the flat gradient plus `extra` spare elements) over ranks, in buckets
    started from backward hooks. `params` are the module parameters whose `.grad` are views into
    `storage`; `wait_seconds` accumulates the time `finish()` waits (the exposed communication)."""

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        storage: torch.Tensor,
        dist: Any,
        bucket_numel: int,
        extra: int = 0,
        names: dict[int, str] | None = None,
    ):
        self.storage, self.dist, self.extra = storage, dist, extra
        self.names = names or {}
        base, size = storage.data_ptr(), storage.element_size()
        # (offset, param) from the end of the buffer backwards
        located = sorted(
            (((p.grad.data_ptr() - base) // size, p) for p in params if p.grad is not None),
            key=lambda item: item[0],
            reverse=True,
        )
        total = storage.numel()
        self.ranges: list[tuple[int, int]] = []  # bucket k covers storage[lo:hi]
        self.bucket_of: dict[int, int] = {}  # id(param) -> bucket index
        hi = total
        lo = total - extra
        for offset, p in located:
            if 0 < bucket_numel <= hi - lo:  # close the current bucket before this parameter
                self.ranges.append((lo, hi))
                hi = lo
            lo = offset
            self.bucket_of[id(p)] = len(self.ranges)
        self.ranges.append((0, hi))
        n = len(self.ranges)
        # per bucket, the ids of the params that get a gradient (learned at the first backward)
        # and, during a backward, those still to come
        self.expected: list[set[int]] | None = None
        self.waiting: list[set[int]] = [set() for _ in range(n)]
        self.next = n  # the next bucket to start; n: not inside a step
        self.works: list[Any] = []
        self.armed = False
        self.wait_seconds = 0.0
        # bucket_numel 0: one bucket, started after the backward (no hooks, no overlap)
        hooked = located if bucket_numel > 0 else []
        self.handles = [p.register_post_accumulate_grad_hook(self._hook) for _, p in hooked]

    @property
    def extra_slots(self) -> torch.Tensor:
        """The `extra` spare elements after the gradients (summed with them)."""
        return self.storage[self.storage.numel() - self.extra :]

    def begin(self) -> None:
        """Arm the hooks for one backward (call after zeroing the gradients)."""
        if self.expected is None:  # learning: record what fires
            self.waiting = [set() for _ in self.ranges]
        else:
            self.waiting = [set(ids) for ids in self.expected]
        self.next = 0
        self.works = []
        self.armed = True

    def _hook(self, param: torch.Tensor) -> None:
        if not self.armed:
            return
        bucket = self.bucket_of[id(param)]
        if bucket < self.next:
            name = self.names.get(id(param), f"of shape {tuple(param.shape)}")
            raise RuntimeError(
                f"parameter {name} received a gradient after its bucket's all-reduce had "
                "started (it received none in the first minibatch step); set "
                "run.allreduce_bucket_mb: 0 to sum the gradients after the backward instead"
            )
        if self.expected is None:
            self.waiting[bucket].add(id(param))
            return
        self.waiting[bucket].discard(id(param))
        while self.next < len(self.ranges) and not self.waiting[self.next]:
            self._start(self.next)

    def _start(self, bucket: int) -> None:
        lo, hi = self.ranges[bucket]
        self.works.append(self.dist.sum_async(self.storage[lo:hi]))
        self.next = bucket + 1

    def finish(self, backward_ran: bool) -> None:
        """Start the buckets not started yet (all of them when this rank had no backward: its
        share of the minibatch was empty), in order, and wait for every one."""
        self.armed = False
        if backward_ran and self.expected is None:
            self.expected = self.waiting  # learned from the first real backward
        start = time.perf_counter()
        while self.next < len(self.ranges):
            self._start(self.next)
        for work in self.works:
            work.wait()
        self.works = []
        self.wait_seconds += time.perf_counter() - start

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
