"""Adam for the ONE flat parameter that `agents.core.ppo.flatten_parameters` builds.

It calls torch's fused Adam kernel (`torch._fused_adam_`) directly: the same kernel, and so the
same numbers to the last bit, as `torch.optim.Adam(fused=True)`, without the Python around each
`torch.optim` step (profiler hooks, torch.compile graph-break guards: 26 us against 129 us a step
for 9k weights, measured on a busy machine) and without the import of `torch._dynamo` that
`torch.optim` triggers on first use (1.8-3.4 s measured on a busy machine). CartPole makes 7,800
optimizer steps in a run (docs/agents.md, "End to end, re-measured"). `state_dict()` has
`torch.optim.Adam`'s layout, so checkpoints load into either.

`make_adam` falls back to `torch.optim.Adam` where this does not apply (several parameter
tensors, or a torch without the kernel).
"""

from __future__ import annotations

from typing import Any

import torch


class FlatAdam:
    """Adam (no weight decay, no amsgrad) on one parameter tensor, through torch's fused kernel.

    The interface is the part of `torch.optim.Optimizer` the trainer uses: `param_groups` (the
    learning rate is set there per iteration), `state`, `step()`, `state_dict()` and
    `load_state_dict()`.
    """

    def __init__(
        self,
        param: torch.nn.Parameter,
        lr: float,
        eps: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
    ):
        self.param = param
        self.param_groups = [
            {
                "lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": 0.0,
                "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                "differentiable": False, "fused": True, "decoupled_weight_decay": False,
                "params": [param],
            }
        ]  # fmt: skip
        self.state: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}

    def _moments(self) -> dict[str, torch.Tensor]:
        """The state, created on first use (like torch.optim.Adam: empty before the first step)."""
        if self.param not in self.state:
            p = self.param
            self.state[p] = {
                "step": torch.zeros((), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        return self.state[self.param]

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step from `param.grad` (a no-op without a gradient, like torch.optim)."""
        p = self.param
        if p.grad is None:
            return
        group, state = self.param_groups[0], self._moments()
        beta1, beta2 = group["betas"]
        state["step"].add_(1)
        torch._fused_adam_(
            [p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
            lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), weight_decay=0.0,
            eps=float(group["eps"]), amsgrad=False, maximize=False,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """`torch.optim.Adam.state_dict()`'s layout: parameter index 0."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        state = {0: dict(self.state[self.param])} if self.param in self.state else {}
        return {"state": state, "param_groups": [{**group, "params": [0]}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state dict of this class or of `torch.optim.Adam` over the same tensor."""
        groups, state = state_dict["param_groups"], state_dict["state"]
        if len(groups) != 1 or len(groups[0]["params"]) != 1 or len(state) > 1:
            raise ValueError(
                "optimizer state has "
                f"{sum(len(g['params']) for g in groups)} parameter tensors in {len(groups)} "
                "groups; this optimizer steps exactly one (the flattened policy parameters)"
            )
        loaded = {k: v for k, v in groups[0].items() if k != "params"}
        self.param_groups[0].update(loaded, betas=tuple(loaded.get("betas", (0.9, 0.999))))
        self.state.clear()
        if state:
            saved = next(iter(state.values()))
            moments = self._moments()
            for name in ("exp_avg", "exp_avg_sq"):
                if saved[name].shape != moments[name].shape:
                    raise ValueError(
                        f"optimizer state {name} has shape {tuple(saved[name].shape)}, the "
                        f"parameters {tuple(moments[name].shape)}: a checkpoint of another model"
                    )
                moments[name].copy_(saved[name])
            moments["step"].fill_(float(saved["step"]))


def make_adam(params: list[torch.nn.Parameter], lr: float, eps: float) -> Any:
    """FlatAdam for one float parameter tensor on CPU/CUDA, else `torch.optim.Adam` (fused where
    the device allows)."""
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if (
        len(params) == 1
        and fused
        and params[0].dtype in (torch.float32, torch.float64)
        and hasattr(torch, "_fused_adam_")
    ):
        return FlatAdam(params[0], lr=lr, eps=eps)
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=fused)
