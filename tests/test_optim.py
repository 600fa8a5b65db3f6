"""FlatAdam: torch's fused Adam kernel on the one flat parameter, without torch.optim around it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import REPO

from agents.core.optim import FlatAdam, make_adam


def _pair(n: int = 257) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(n))
    return a, torch.nn.Parameter(a.detach().clone())


def test_steps_are_bit_identical_to_torch_adam_with_a_changing_lr():
    a, b = _pair()
    ours = FlatAdam(a, lr=1e-3, eps=1e-5)
    theirs = torch.optim.Adam([b], lr=1e-3, eps=1e-5, fused=True)  # what PPO used before
    for i in range(30):
        grad = torch.randn_like(a) * (i + 1)
        a.grad, b.grad = grad.clone(), grad.clone()
        lr = 1e-3 * (1 - i / 30)  # PPO's annealing sets the lr on the group each iteration
        ours.param_groups[0]["lr"] = theirs.param_groups[0]["lr"] = lr
        ours.step()
        theirs.step()
    assert torch.equal(a, b)
    for name in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(ours.state[a][name], theirs.state[b][name])
    assert not torch.equal(a, _pair()[0])  # it moved


def test_state_dict_loads_both_ways_with_torch_adam():
    a, b = _pair()
    ours, theirs = FlatAdam(a, lr=3e-4, eps=1e-7), torch.optim.Adam([b], lr=3e-4, eps=1e-7)
    assert ours.state_dict()["state"] == theirs.state_dict()["state"] == {}  # before a step
    for _ in range(3):
        a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
        ours.step()
        theirs.step()
    mine, torch_sd = ours.state_dict(), theirs.state_dict()
    assert set(mine["param_groups"][0]) == set(torch_sd["param_groups"][0])
    other = torch.optim.Adam([torch.nn.Parameter(a.detach().clone())], lr=1.0)
    other.load_state_dict(mine)
    assert other.param_groups[0]["lr"] == 3e-4 and other.param_groups[0]["eps"] == 1e-7
    fresh = FlatAdam(torch.nn.Parameter(a.detach().clone()), lr=1.0)
    fresh.load_state_dict(torch_sd)
    assert fresh.param_groups[0]["lr"] == 3e-4 and float(fresh.state[fresh.param]["step"]) == 3
    torch.testing.assert_close(fresh.state[fresh.param]["exp_avg"], theirs.state[b]["exp_avg"])


def test_load_rejects_other_shapes_and_several_tensors():
    a, _ = _pair()
    ours = FlatAdam(a, lr=1e-3)
    a.grad = torch.ones_like(a)
    ours.step()
    small = FlatAdam(torch.nn.Parameter(torch.zeros(3)), lr=1e-3)
    with pytest.raises(ValueError, match="shape"):
        small.load_state_dict(ours.state_dict())
    two = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="exactly one"):
        ours.load_state_dict(two.state_dict())


def test_make_adam_falls_back_to_torch_for_several_tensors():
    one = [torch.nn.Parameter(torch.zeros(4))]
    several = one + [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_adam(one, 1e-3, 1e-5), FlatAdam)
    assert isinstance(make_adam(several, 1e-3, 1e-5), torch.optim.Adam)


def test_a_cartpole_run_never_imports_torch_dynamo(tmp_path):
    """torch.optim imports torch._dynamo on first use (1-2 s of every run's start-up)."""
    code = (
        "import sys\n"
        "from agents.cli import main\n"
        f"main(['train', 'configs/cartpole.yaml', '--set', 'total_timesteps=512', "
        f"'run.root={tmp_path}', 'run.progress=false', 'eval.episodes=1'])\n"
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
