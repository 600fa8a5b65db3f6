"""run.dtype: auto (agents/run/dtype.py): the resolution rule on monkeypatched hardware facts, the
line a run prints, the resolved dtype recorded in the checkpoints and summary.json, and resume,
eval and load taking the recorded dtype instead of resolving again. No assertion depends on this
machine's CPU or GPU: every hardware fact is monkeypatched."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn as nn
from helpers import text_config

from agents.policies.base import Policy
from agents.policies.lm import LMPolicy
from agents.policies.mlp import MLPActorCritic
from agents.run import checkpoint as ckpt
from agents.run import dtype as dtype_mod
from agents.run.config import load_config
from agents.run.dtype import resolve_dtype
from agents.run.evaluation import load_run_policy
from agents.run.trainer import Trainer, new_run_dir

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


class FakeLM(nn.Module):
    """Stands for an LM policy: runs bfloat16, its `model` has `n` parameters."""

    COMPUTE_DTYPES = ("float32", "bfloat16")

    def __init__(self, n: int):
        super().__init__()
        self.model = nn.Linear(n, 1, bias=False)


class FakeMLP(FakeLM):
    COMPUTE_DTYPES = ("float32",)


@pytest.fixture
def hardware(monkeypatch):
    """Set the hardware facts: `hardware(flags=(...), cuda=bool)`; threshold 1000 parameters."""
    monkeypatch.setattr(dtype_mod, "BF16_CPU_MIN_PARAMS", 1000)

    def set_facts(flags: tuple[str, ...] = (), cuda: bool = False) -> None:
        monkeypatch.setattr(dtype_mod, "cpu_bf16_flags", lambda: flags)
        monkeypatch.setattr(dtype_mod, "cuda_bf16", lambda device: cuda)

    set_facts()
    return set_facts


def test_policy_types_declare_their_dtypes():
    assert LMPolicy.COMPUTE_DTYPES == ("float32", "bfloat16")
    assert MLPActorCritic.COMPUTE_DTYPES == Policy.COMPUTE_DTYPES == ("float32",)


def test_cpu_rule_needs_native_bf16_and_a_large_enough_model(hardware):
    hardware(flags=("avx512_bf16",))
    assert resolve_dtype("auto", FakeLM(1000), CPU) == (
        "bfloat16", "CPU with avx512_bf16, 0.001M parameters >= 0.001M"
    )  # fmt: skip
    dtype, reason = resolve_dtype("auto", FakeLM(999), CPU)
    assert dtype == "float32" and "< 0.001M" in reason
    hardware(flags=("avx512_bf16", "amx_bf16"))
    assert resolve_dtype("auto", FakeLM(5000), CPU)[1].startswith("CPU with avx512_bf16+amx_bf16")
    hardware(flags=(), cuda=True)  # a GPU elsewhere says nothing about the CPU
    assert resolve_dtype("auto", FakeLM(10**6), CPU) == (
        "float32", "CPU without avx512_bf16 or amx_bf16"
    )  # fmt: skip


def test_cuda_rule_and_non_lm_policies(hardware):
    hardware(cuda=True)
    assert resolve_dtype("auto", FakeLM(10), CUDA) == ("bfloat16", "CUDA device with native bf16")
    hardware(cuda=False, flags=("amx_bf16",))
    assert resolve_dtype("auto", FakeLM(10**6), CUDA)[0] == "float32"
    hardware(cuda=True, flags=("amx_bf16",))
    for device in (CPU, CUDA):
        assert resolve_dtype("auto", FakeMLP(10**6), device) == (
            "float32", "FakeMLP runs in float32 only"
        )  # fmt: skip
    # an explicit dtype is never second-guessed
    assert resolve_dtype("bfloat16", FakeLM(1), CPU) == ("bfloat16", "set explicitly")
    assert resolve_dtype("float32", FakeLM(10**6), CUDA) == ("float32", "set explicitly")


def test_bad_dtype_names_the_allowed_ones(hardware):
    with pytest.raises(ValueError, match=r"one of \['float32', 'bfloat16', 'auto'\], got 'fp16'"):
        resolve_dtype("fp16", FakeLM(1), CPU)
    with pytest.raises(ValueError, match=r"run\.dtype.*float16") as err:
        load_config(None, ["run.dtype=float16"])
    for allowed in ("float32", "bfloat16", "auto"):
        assert allowed in str(err.value)


def test_hardware_facts_come_from_torch_or_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(
        torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True}
    )
    assert dtype_mod.cpu_bf16_flags() == ("amx_bf16",)
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # an older torch: /proc/cpuinfo
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    monkeypatch.setattr(dtype_mod, "CPUINFO", cpuinfo)
    assert dtype_mod.cpu_bf16_flags() == ("avx512_bf16",)
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_vnni\n")
    assert dtype_mod.cpu_bf16_flags() == ()
    monkeypatch.setattr(dtype_mod, "CPUINFO", tmp_path / "missing")  # not Linux
    assert dtype_mod.cpu_bf16_flags() == ()
    # CUDA: native bf16 only (the default including_emulation=True says yes on older GPUs)
    asked = {}
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda **kw: asked.update(kw) or False
    )  # fmt: skip
    assert dtype_mod.cuda_bf16(CUDA) is False and asked == {"including_emulation": False}


def test_mlp_auto_runs_float32_and_says_why(hardware, cartpole_yaml, capsys):
    hardware(flags=("amx_bf16",), cuda=True)
    trainer = Trainer(load_config(cartpole_yaml, ["run.dtype=auto", "eval.episodes=0"]))
    assert trainer.dtype == "float32"
    assert (
        "run.dtype auto -> float32 (MLPActorCritic runs in float32 only)" in capsys.readouterr().out
    )


def one_iteration(model_path: str, root: str, dtype: str) -> dict:
    raw = text_config(model_path, root)
    raw["total_timesteps"] = 64  # one iteration of 8 envs x 8 steps
    raw["eval"]["episodes"] = 2
    raw["run"]["dtype"] = dtype
    return raw


def test_auto_is_printed_recorded_and_kept_on_resume_and_eval(
    hardware, gpt2_ctx64_path, tmp_path, capsys
):
    hardware(flags=("amx_bf16",))
    raw = one_iteration(gpt2_ctx64_path, str(tmp_path), "auto")
    cfg = load_config(raw)
    trainer = Trainer(cfg, new_run_dir(cfg, "auto"))
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("run.dtype auto -> bfloat16 (CPU with amx_bf16, ")
    assert line.endswith(" parameters >= 0.001M)")
    assert trainer.policy.compute_dtype == trainer.reference.compute_dtype == torch.bfloat16
    trainer.learn()
    run = trainer.run_dir
    assert json.loads((run / "summary.json").read_text())["dtype"] == "bfloat16"
    path = ckpt.latest_checkpoint(run / "checkpoints")
    meta = json.loads(path.read_text())
    assert meta["dtype"] == "bfloat16" and meta["config"]["run"]["dtype"] == "auto"

    # another machine, without native bf16: the run goes on in the dtype it recorded
    hardware(flags=())
    resumed = Trainer(cfg, run, resume=True)
    assert resumed.dtype == "bfloat16" and resumed.global_step == 64
    assert resumed.policy.compute_dtype == resumed.reference.compute_dtype == torch.bfloat16
    assert f"run.dtype auto -> bfloat16 (recorded in checkpoint {path})" in capsys.readouterr().out
    # the same for a Trainer built first and loaded after (PPO.load): the recorded dtype wins
    loaded = Trainer(cfg)
    assert loaded.dtype == "float32"
    loaded.load(path)
    assert loaded.dtype == "bfloat16" and loaded.reference.compute_dtype == torch.bfloat16
    # textrlhf eval / export / PPO.load without an env: the recorded dtype, not a new choice
    policy, _ = load_run_policy(cfg, run)
    assert policy.compute_dtype == torch.bfloat16
    explicit = load_config(raw, ["run.dtype=float32"])  # eval may pick another one explicitly
    assert load_run_policy(explicit, run)[0].compute_dtype is None

    # an explicit dtype that matches the recorded one resumes; another is refused, as before
    assert Trainer(load_config(raw, ["run.dtype=bfloat16"]), run, resume=True).dtype == "bfloat16"
    with pytest.raises(
        ckpt.CheckpointError, match=r"run.dtype: 'bfloat16' in the checkpoint, 'float32' in the"
    ):
        Trainer(explicit, run, resume=True)


def test_explicit_run_resumed_with_auto_keeps_its_dtype(hardware, gpt2_ctx64_path, tmp_path):
    """A run started with an explicit dtype (and checkpoints written before `auto`, which record
    only their config) resumes under auto in that dtype, whatever this machine would choose."""
    hardware(flags=("amx_bf16",))
    cfg = load_config(one_iteration(gpt2_ctx64_path, str(tmp_path), "float32"))
    trainer = Trainer(cfg, new_run_dir(cfg, "explicit"))
    trainer.learn()
    path = ckpt.latest_checkpoint(trainer.run_dir / "checkpoints")
    meta = json.loads(path.read_text())
    del meta["dtype"]  # as written before run.dtype: auto existed
    path.write_text(json.dumps(meta))
    auto = load_config(one_iteration(gpt2_ctx64_path, str(tmp_path), "auto"))
    resumed = Trainer(auto, trainer.run_dir, resume=True)
    assert resumed.dtype == "float32" and resumed.policy.compute_dtype is None


def test_auto_is_the_default(hardware, cartpole_yaml, capsys):
    """A config that says nothing about run.dtype resolves it by the rule (and says so)."""
    hardware(flags=(), cuda=False)
    cfg = load_config(cartpole_yaml, ["eval.episodes=0"])
    assert cfg.run.dtype == "auto"
    assert Trainer(cfg).dtype == "float32"
    assert "run.dtype auto -> float32" in capsys.readouterr().out
