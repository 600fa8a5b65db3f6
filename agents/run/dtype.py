"""`run.dtype: auto`: the compute dtype a run resolves to, from fixed facts about the policy and the
device (never from a timing probe: the dtype changes the numbers a run computes, so the choice must
not depend on how loaded the machine is).

The rule (`resolve_dtype`): bfloat16 when the policy runs bfloat16 forward passes at all (LM
policies: `Policy.COMPUTE_DTYPES`) AND the device runs bfloat16 natively AND, on a CPU, the
policy has at least `BF16_CPU_MIN_PARAMS` parameters; float32 otherwise. "Natively":

- CUDA: `torch.cuda.is_bf16_supported(including_emulation=False)` (compute capability >= 8, or
  ROCm); the default `including_emulation=True` also says yes on older GPUs that only emulate it;
- CPU: the CPU advertises `avx512_bf16` or `amx_bf16` (`torch.cpu.get_capabilities()` where this
  torch has it, else the `flags` line of /proc/cpuinfo; neither: no).

The resolved dtype is recorded in each checkpoint (`"dtype"`) and in summary.json; a resume,
`textrlhf eval`, `export` and `PPO.load` take the recorded value (`checkpoint_dtype`), never a new
resolution on another machine. A data-parallel run takes rank 0's choice on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPE_CHOICES = ("float32", "bfloat16", "auto")  # run.dtype
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 matrix instructions (x86)
CPUINFO = Path("/proc/cpuinfo")  # Linux: where the flags are when torch cannot tell

# The smallest model (parameters of the policy's `model`, the actor) for which `auto` picks
# bfloat16 on a CPU with native bf16. Below it, autocast's casts cost more than the smaller
# matmuls save. From two measurements:
# - on a CPU WITH avx512_bf16 and amx_bf16 (docs/distributed.md, 2026-11-30, the PPO update of
#   `benchmarks/bf16_update.py`): 2 x 128 (0.45M) 1.47x float32's time (slower), 4 x 256 (3.3M)
#   0.67x (faster);
# - `python benchmarks/dtype_crossover.py` (forward + backward, batch 64 x 64 tokens, 1 thread,
#   alternating rounds, shared machine) on a CPU WITHOUT native bf16 (Xeon under KVM, avx512_vnni
#   but no avx512_bf16; the CPU this change was written on): bfloat16 / float32 = 1.13x at
#   2 x 128 (0.50M), 1.95x at 4 x 256 (3.37M), 2.49x at 6 x 384 (11.0M), 2.24x at 12 x 768
#   (85.7M, one round): slower at every size, which is why the rule asks for native bf16 first.
# 3M: bfloat16 only from the smallest size measured faster on native bf16 (float32 where
# unmeasured). Between 0.45M and 3.3M the crossover is not measured yet: re-run
# dtype_crossover.py on a CPU with avx512_bf16 / AMX before `auto` becomes the default.
BF16_CPU_MIN_PARAMS = 3_000_000


def cpu_bf16_flags() -> tuple[str, ...]:
    """The native bf16 features of this CPU among `CPU_BF16_FLAGS` (empty when none or unknown)."""
    get_capabilities = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get_capabilities is not None:
        caps = get_capabilities()
        return tuple(f for f in CPU_BF16_FLAGS if caps.get(f))
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return tuple(f for f in CPU_BF16_FLAGS if f in flags)
    return ()


def cuda_bf16(device: torch.device) -> bool:
    """Whether the CUDA `device` runs bfloat16 natively (not emulated)."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def model_parameters(policy: Any) -> int:
    """Every parameter of the policy (an LM policy: its model and value head or critic): the
    size that decides whether bfloat16 pays off on a CPU."""
    return sum(p.numel() for p in policy.parameters())


def _millions(n: int) -> str:
    return f"{n / 1e6:.2g}M" if n < 10_000_000 else f"{n / 1e6:.0f}M"


def resolve_dtype(requested: str, policy: Any, device: torch.device) -> tuple[str, str]:
    """(dtype, reason): `requested` ("float32" | "bfloat16" | "auto") made concrete for `policy`
    on `device` by the rule in the module docstring. An explicit dtype is returned as it is."""
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"run.dtype must be one of {list(DTYPE_CHOICES)}, got {requested!r}")
    if requested != "auto":
        return requested, "set explicitly"
    if "bfloat16" not in policy.COMPUTE_DTYPES:  # the policy contract's class attribute
        return "float32", f"{type(policy).__name__} runs in float32 only"
    device = torch.device(device)
    if device.type == "cuda":
        if cuda_bf16(device):
            return "bfloat16", "CUDA device with native bf16"
        return "float32", "CUDA device without native bf16"
    if device.type != "cpu":
        return "float32", f"no native bf16 rule for device type {device.type!r}"
    flags = cpu_bf16_flags()
    if not flags:
        return "float32", f"CPU without {' or '.join(CPU_BF16_FLAGS)}"
    params = model_parameters(policy)
    have = f"CPU with {'+'.join(flags)}, {_millions(params)} parameters"
    if params >= BF16_CPU_MIN_PARAMS:
        return "bfloat16", f"{have} >= {_millions(BF16_CPU_MIN_PARAMS)}"
    return "float32", f"{have} < {_millions(BF16_CPU_MIN_PARAMS)}"


def dtype_line(requested: str, dtype: str, reason: str) -> str:
    """The line a run prints at its start, e.g. `run.dtype auto -> bfloat16 (CPU with ...)`."""
    return f"run.dtype {requested} -> {dtype} ({reason})"


def checkpoint_dtype(meta: dict[str, Any], path: Any) -> str:
    """The resolved dtype a checkpoint was trained in: its `"dtype"` record, or (checkpoints
    written before `auto` existed) the explicit `run.dtype` of its config."""
    from agents.run.checkpoint import CheckpointError

    recorded = meta.get("dtype")
    if recorded is None:
        recorded = meta.get("config", {}).get("run", {}).get("dtype", "float32")
    if recorded not in ("float32", "bfloat16"):
        raise CheckpointError(
            f"checkpoint {path} records dtype {recorded!r}; expected 'float32' or 'bfloat16'"
        )
    return recorded


def run_dtype(requested: str, meta: dict[str, Any], path: Any) -> tuple[str, str]:
    """(dtype, reason) for a policy loaded from a checkpoint (resume, eval, export): `auto`
    takes the checkpoint's recorded dtype; an explicit dtype is kept (the caller decides
    whether it may differ)."""
    if requested == "auto":
        return checkpoint_dtype(meta, path), f"recorded in checkpoint {path}"
    return requested, "set explicitly"


def recorded_dtype(run_dir: Path | None) -> tuple[str, str] | None:
    """(dtype, reason) that the latest checkpoint of `run_dir` records, or None when it cannot
    be read (the resume that follows then reports why)."""
    from agents.run.checkpoint import CheckpointError, latest_checkpoint
    from agents.run.jsonio import read_json

    if run_dir is None:
        return None
    try:
        path = latest_checkpoint(Path(run_dir) / "checkpoints")
        meta = read_json(path)
        return checkpoint_dtype(meta, path), f"recorded in checkpoint {path}"
    except (CheckpointError, OSError, ValueError, AttributeError):
        return None
