"""BucketedGradSum (agents/core/gradsync.py) in one process, with a stand-in for the process
group that records when each bucket's all-reduce starts and "sums" over two identical ranks
(doubles the bucket)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agents.core.gradsync import BucketedGradSum
from agents.core.ppo import flatten_parameters


class TwoEqualRanks:
    """`sum_async` of two ranks holding the same tensor: doubles it on `wait()`."""

    def __init__(self, fired: list[int]):
        self.fired = fired  # params whose gradient has been accumulated so far this backward
        self.started: list[tuple[int, int]] = []  # (bucket start offset, params fired by then)

    def sum_async(self, tensor: torch.Tensor):
        base = tensor._base if tensor._base is not None else tensor
        offset = (tensor.data_ptr() - base.data_ptr()) // tensor.element_size()
        self.started.append((offset, self.fired[0]))

        class Work:
            def wait(self) -> torch.Tensor:
                return tensor.mul_(2)

        return Work()


class Net(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.unused = nn.Linear(3, 3)  # registered last: its grads sit at the end of the buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _model() -> tuple[nn.Module, list[nn.Parameter], nn.Parameter]:
    torch.manual_seed(0)
    layers = [nn.Linear(4, 16), nn.Tanh()]
    for _ in range(4):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    model = Net(nn.Sequential(*layers, nn.Linear(16, 2)))
    params = list(model.parameters())
    flat = flatten_parameters(params, spare=3)
    return model, params, flat


def _setup(bucket_numel: int):
    model, params, flat = _model()
    fired = [0]
    for p in params:  # registered before the reducer's hooks, so they run first
        p.register_post_accumulate_grad_hook(lambda _: fired.__setitem__(0, fired[0] + 1))
    dist = TwoEqualRanks(fired)
    names = {id(p): n for n, p in model.named_parameters()}
    sync = BucketedGradSum(params, flat.grad._base, dist, bucket_numel, extra=3, names=names)
    return model, params, flat, sync, dist, fired


def _step(model, flat, sync, fired, x: torch.Tensor) -> torch.Tensor:
    flat.grad.zero_()
    fired[0] = 0
    sync.extra_slots.copy_(torch.tensor([1.0, 2.0, 3.0]))
    sync.begin()
    model(x).square().sum().backward()
    sync.finish(backward_ran=True)
    return flat.grad.clone()


def test_buckets_partition_the_buffer_from_its_end():
    _, params, flat, sync, _, _ = _setup(bucket_numel=200)
    storage = flat.grad._base
    assert storage.numel() == flat.numel() + 3
    assert sync.ranges[0][1] == storage.numel()  # bucket 0 ends with the spare slots
    assert sync.ranges[-1][0] == 0
    for (lo, _), (_, hi) in zip(sync.ranges, sync.ranges[1:]):
        assert hi == lo  # contiguous, no gap, no overlap
    assert len(sync.ranges) > 3
    assert all(hi - lo >= 200 for lo, hi in sync.ranges[:-1])  # each closed at >= bucket size
    for p in params:  # every parameter lies inside its bucket
        lo, hi = sync.ranges[sync.bucket_of[id(p)]]
        offset = (p.grad.data_ptr() - storage.data_ptr()) // 4
        assert lo <= offset and offset + p.numel() <= hi


def test_buckets_start_in_order_during_the_backward_and_sum_everything():
    model, params, flat, sync, dist, fired = _setup(bucket_numel=200)
    x = torch.randn(5, 4)
    # the reference: a plain backward, doubled (two identical ranks)
    flat.grad.zero_()
    model(x).square().sum().backward()
    expected = flat.grad.clone() * 2
    n_trained = sum(
        1 for p in params if p is not model.unused.weight and p is not model.unused.bias
    )

    first = _step(model, flat, sync, fired, x)  # learns which params get a gradient
    torch.testing.assert_close(first, expected)
    assert [o for o, _ in dist.started] == [lo for lo, _ in sync.ranges]  # bucket order
    assert all(n == n_trained for _, n in dist.started)  # first step: all after the backward
    assert sync.extra_slots.tolist() == [2.0, 4.0, 6.0]  # the spare slots were summed too

    dist.started.clear()
    second = _step(model, flat, sync, fired, x)
    torch.testing.assert_close(second, expected)
    assert [o for o, _ in dist.started] == [lo for lo, _ in sync.ranges]
    # the unused parameter (bucket 0) does not hold its bucket back, and the buckets start
    # while the backward still has parameters to go: the overlap
    assert dist.started[0][1] < n_trained
    assert sum(n < n_trained for _, n in dist.started) >= 2


def test_a_gradient_after_its_bucket_started_raises_naming_the_parameter():
    model, _, flat, sync, _, fired = _setup(bucket_numel=200)
    x = torch.randn(5, 4)
    _step(model, flat, sync, fired, x)  # learned: `unused` gets no gradient
    flat.grad.zero_()
    sync.begin()
    # `unused` now feeds the input: its gradient comes last, after bucket 0 (its bucket, with
    # the last layer's) has started
    loss = model(x + model.unused(torch.ones(1, 3)).sum()).square().sum()
    with pytest.raises(RuntimeError, match=r"unused\.(weight|bias) received a gradient after"):
        loss.backward()


def test_bucket_numel_0_is_one_bucket_started_after_the_backward():
    model, params, flat, sync, dist, fired = _setup(bucket_numel=0)
    assert sync.ranges == [(0, flat.grad._base.numel())] and not sync.handles
    x = torch.randn(5, 4)
    for _ in range(2):
        dist.started.clear()
        _step(model, flat, sync, fired, x)
        assert len(dist.started) == 1
