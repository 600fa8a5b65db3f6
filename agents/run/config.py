"""Dataclass configs loaded from YAML, with `--set key=value` overrides.

Unknown keys are errors with a "did you mean" suggestion, and invalid values (a batch size that
does not divide the rollout, a negative learning rate...) are errors too. `from_dict` and
`apply_overrides` are generic: other modules reuse them for their own dataclass configs.

    cfg = load_config("configs/cartpole.yaml", ["ppo.n_epochs=10"])
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agents.core.scores import check_score_settings

T = TypeVar("T")


# ----------------------------------------------------------------------------- sections


@dataclass
class EnvConfig:
    id: str = "CartPole-v1"
    num_envs: int = 8
    # "auto": the env's native vector_entry_point if it has one, else "sync"
    vectorization: str = "auto"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PolicyConfig:
    type: str = "mlp"  # "mlp" | "lm"
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"  # "tanh" | "relu"
    log_std_init: float = 0.0  # Box actions: initial state-independent log std
    # LM policies (agents/policies/lm.py)
    model_path: str | None = None
    temperature: float = 1.0
    critic: str = "shared"  # "shared" | "separate"
    critic_path: str | None = None


@dataclass
class PPOConfig:
    n_steps: int = 32  # rollout length T per env
    batch_size: int = 256  # transitions (mlp) or env columns x n_steps (sequence policies)
    n_epochs: int = 20
    gamma: float = 0.98
    gae_lambda: float = 0.8
    learning_rate: float = 1.0e-3
    anneal_lr: bool = True
    clip_range: float = 0.2
    anneal_clip: bool = True
    clip_range_vf: float | None = None
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    target_kl: float | None = None
    adam_eps: float = 1.0e-5


@dataclass
class KLConfig:
    enabled: bool = False
    beta: float = 0.1  # fixed beta, or the initial beta of the adaptive controller
    estimator: str = "k1"  # "k1" | "k3"
    adaptive: bool = False
    target: float = 6.0  # adaptive: target KL per episode (sum over its steps)
    horizon: int = 10000  # adaptive: episodes over which beta adapts (Ziegler et al.)


@dataclass
class ScoreConfig:
    """Normalization of the reward at each episode's last step, before the KL penalty
    (agents/core/scores.py). The missing-EOS penalty is the text env's: env.kwargs.missing_eos_penalty."""

    normalize: str = "none"  # "none" | "running" (running mean/std) | "batch" (whiten per rollout)
    clip: float | None = None  # clip normalized scores to [-clip, clip]


@dataclass
class EvalConfig:
    episodes: int = 10
    every: int = 0  # env steps between evaluations during training (0: only at the end)
    deterministic: bool = True
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # override env.kwargs for eval


@dataclass
class RunConfig:
    root: str = "runs"
    checkpoint_every: int = 0  # env steps between checkpoints (0: only at the end)
    torch_threads: int = 1
    progress: bool = True
    device: str = "cpu"


@dataclass
class Config:
    name: str = "run"
    seed: int = 1
    total_timesteps: int = 100_000
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ----------------------------------------------------------------------------- generic loading


def suggest(key: str, allowed: list[str]) -> str:
    """'; did you mean 'x'?' for the closest allowed key, or '' if nothing is close."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Light type check / coercion of one YAML value against a dataclass field type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"config key {where!r} = {value!r} must be one of {hint}")
    if hint is Any or hint is typing.Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"config key {where!r} must be a list, got {value!r}")
        (arg,) = typing.get_args(hint)[:1] or (Any,)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"config key {where!r} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"config key {where!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise TypeError(f"config key {where!r} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"config key {where!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"config key {where!r} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict. Unknown keys raise ValueError with a
    suggestion; nested dataclass fields are built recursively; scalar types are checked."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TypeError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(
                f"unknown config key {prefix + str(key)!r}{suggest(str(key), list(fields))} "
                f"(allowed under {prefix.rstrip('.') or 'the top level'}: {sorted(fields)})"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, f"{prefix}{key}")
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `a.b.c=value` strings in place (values are parsed as YAML: 10, 1e-3, true, [64])."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value, e.g. ppo.n_epochs=10")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a config section")
            node = child
        node[leaf] = yaml.safe_load(raw)
    return data


def step_budget(cfg: Config) -> int:
    """The env steps a run trains: the whole PPO iterations (n_steps * num_envs each) that fit in
    total_timesteps, so never more than total_timesteps."""
    per_iteration = cfg.ppo.n_steps * cfg.env.num_envs
    return cfg.total_timesteps // per_iteration * per_iteration


def check_output_dir(folder: str | Path, overwrite: bool) -> Path:
    """Refuse to write into an existing, non-empty output folder unless `overwrite`."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {folder} already exists; pass --overwrite (overwrite=True) to "
            "replace it, or choose another output_dir"
        )
    return folder


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    cls: type[T] = Config,  # type: ignore[assignment]
) -> T:
    """YAML path (or dict) + overrides -> validated `cls` instance (default: the PPO `Config`)."""
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, dict):
        data = _deepcopy(source)
    else:
        data = read_yaml(source)
    cfg = from_dict(cls, apply_overrides(data, overrides))
    if isinstance(cfg, Config):
        validate_config(cfg)
    elif hasattr(cfg, "validate"):
        cfg.validate()  # other modules' configs may bring their own checks
    return cfg


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------- validation


def _choice(where: str, value: Any, allowed: list[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{where} must be one of {allowed}, got {value!r}")


def _positive(where: str, value: float, strict: bool = True) -> None:
    if not math.isfinite(value) or ((value <= 0) if strict else (value < 0)):
        raise ValueError(
            f"{where} must be a finite number {'> 0' if strict else '>= 0'}, got {value!r}"
        )


def validate_config(cfg: Config) -> None:
    """Raise ValueError naming the bad value and what is allowed."""
    p = cfg.ppo
    _positive("total_timesteps", cfg.total_timesteps)
    _positive("env.num_envs", cfg.env.num_envs)
    _choice(
        "env.vectorization", cfg.env.vectorization, ["auto", "vector_entry_point", "sync", "async"]
    )
    _choice("policy.type", cfg.policy.type, ["mlp", "lm"])
    _choice("policy.activation", cfg.policy.activation, ["tanh", "relu"])
    _choice("policy.critic", cfg.policy.critic, ["shared", "separate"])
    if any(h <= 0 for h in cfg.policy.hidden_sizes):
        raise ValueError(f"policy.hidden_sizes must be positive, got {cfg.policy.hidden_sizes}")
    _positive("policy.temperature", cfg.policy.temperature)
    for name in ("n_steps", "batch_size", "n_epochs", "learning_rate", "adam_eps", "clip_range"):
        _positive(f"ppo.{name}", getattr(p, name))
    for name in ("vf_coef", "ent_coef", "max_grad_norm"):
        _positive(f"ppo.{name}", getattr(p, name), strict=False)
    for name in ("gamma", "gae_lambda"):
        if not 0.0 <= getattr(p, name) <= 1.0:
            raise ValueError(f"ppo.{name} must be in [0, 1], got {getattr(p, name)!r}")
    if p.clip_range_vf is not None:
        _positive("ppo.clip_range_vf", p.clip_range_vf)
    if p.target_kl is not None:
        _positive("ppo.target_kl", p.target_kl)
    if cfg.policy.type == "lm":
        # sequence policies: minibatches are whole env columns of n_steps each
        unit, what = p.n_steps, "n_steps (whole env columns)"
        rollout = p.n_steps * cfg.env.num_envs
    else:
        unit, what = 1, "1"
        rollout = p.n_steps * cfg.env.num_envs
    if p.batch_size > rollout or rollout % p.batch_size or p.batch_size % unit:
        raise ValueError(
            f"ppo.batch_size={p.batch_size} must divide the rollout size n_steps * num_envs = "
            f"{p.n_steps} * {cfg.env.num_envs} = {rollout} and be a multiple of {what}; "
            f"allowed: {[b for b in range(unit, rollout + 1, unit) if rollout % b == 0]}"
        )
    if cfg.total_timesteps < rollout:
        raise ValueError(
            f"total_timesteps={cfg.total_timesteps} is less than one PPO iteration, n_steps * "
            f"num_envs = {rollout}; training runs total_timesteps // {rollout} whole iterations"
        )
    _choice("kl.estimator", cfg.kl.estimator, ["k1", "k3"])
    _positive("kl.beta", cfg.kl.beta, strict=False)
    _positive("kl.target", cfg.kl.target)
    _positive("kl.horizon", cfg.kl.horizon)
    check_score_settings(cfg.score.normalize, cfg.score.clip)
    _positive("eval.episodes", cfg.eval.episodes, strict=False)
    _positive("eval.every", cfg.eval.every, strict=False)
    _positive("run.checkpoint_every", cfg.run.checkpoint_every, strict=False)
    _positive("run.torch_threads", cfg.run.torch_threads)
