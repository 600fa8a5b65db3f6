"""Run configs: pydantic models loaded from YAML, with `--set key=value` overrides.

Unknown keys are errors with a "did you mean" suggestion; a bad value is an error that names the
key, the value and what is allowed (a batch size that does not divide the rollout, a negative
learning rate, a choice not in its list...). The `policy:` section is validated by the config
class of the registered policy type (`agents.policies`). `load_config` also loads the configs of
the RLHF stages (`cls=SFTConfig`, `cls=RMConfig`).

    cfg = load_config("configs/cartpole.yaml", ["ppo.n_epochs=10"])
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from agents.core.advantages import CRITIC_FREE, GROUP_ESTIMATORS, REINFORCE_PP_FORMS
from agents.core.advantages import ESTIMATORS as ADVANTAGE_ESTIMATORS
from agents.core.kl import ESTIMATORS, KL_PLACEMENTS
from agents.core.ppo import LOSS_AGGREGATIONS
from agents.core.scores import SCORE_NORMS
from agents.policies import PolicyConfig, policy_class
from agents.run.envs import VECTORIZATION_MODES, env_module
from agents.run.rundir import check_run_name

M = TypeVar("M", bound=BaseModel)


def _not_bool(value: Any) -> Any:
    """YAML's true/false are not numbers (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    return value


Number = BeforeValidator(_not_bool)
Int = typing.Annotated[int, Number]
PositiveInt = typing.Annotated[int, Number, Field(gt=0)]
PositiveFloat = typing.Annotated[float, Number, Field(gt=0)]
NonNegInt = typing.Annotated[int, Number, Field(ge=0)]
NonNegFloat = typing.Annotated[float, Number, Field(ge=0)]
Fraction = typing.Annotated[float, Number, Field(ge=0, le=1)]
# numpy's global seed takes 0 <= seed < 2**32; runs add offsets (eval: 10_000 + seed, env rows)
Seed = typing.Annotated[int, Number, Field(ge=0, le=2**31 - 1)]


class Section(BaseModel):
    """A config section: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ----------------------------------------------------------------------------- sections


class EnvConfig(Section):
    id: str = "CartPole-v1"  # a registered id, or "module:EnvId" (e.g. textenv:TextRLHF-v0)
    num_envs: PositiveInt = 8
    # "auto": the env's native vector_entry_point if it has one, else "sync"
    vectorization: Literal[VECTORIZATION_MODES] = "auto"  # type: ignore[valid-type]
    kwargs: dict[str, Any] = Field(default_factory=dict)


class PPOConfig(Section):
    n_steps: PositiveInt = 32  # rollout length T per env
    batch_size: PositiveInt = 256  # transitions, or env columns x n_steps (sequence policies)
    n_epochs: PositiveInt = 20
    gamma: Fraction = 0.98
    gae_lambda: Fraction = 0.8
    learning_rate: PositiveFloat = 1.0e-3
    anneal_lr: StrictBool = True
    clip_range: PositiveFloat = 0.2
    anneal_clip: StrictBool = True
    clip_range_vf: PositiveFloat | None = None
    vf_coef: NonNegFloat = 0.5
    ent_coef: NonNegFloat = 0.0
    max_grad_norm: NonNegFloat = 0.5
    # GAE: whiten each minibatch's advantages; critic-free estimators: divide by the std only
    normalize_advantage: StrictBool = True
    target_kl: PositiveFloat | None = None
    adam_eps: PositiveFloat = 1.0e-5
    # "token": mean over every valid step of a minibatch; "sequence": mean over each episode's
    # steps, then over episodes (long responses weigh no more than short ones); "token_sum": sum
    # over valid steps / the minibatch's size in steps, a constant (Dr. GRPO)
    loss_aggregation: Literal[LOSS_AGGREGATIONS] = "token"  # type: ignore[valid-type]


class AdvantageConfig(Section):
    """How advantages are computed (agents/core/advantages.py): GAE with the critic, or a
    critic-free outcome estimator over groups of K episodes that start from the same state."""

    estimator: Literal[ADVANTAGE_ESTIMATORS] = "gae"  # type: ignore[valid-type]
    group_size: PositiveInt = 1  # K: rows per group; each start state is repeated K times
    # grpo: divide by the std of the group's task scores (false: Dr. GRPO's unscaled form)
    scale_std: StrictBool = True
    # reinforce_pp: whiten each token's reward-to-go (the paper's form) or each episode's return
    reinforce_pp_form: Literal[REINFORCE_PP_FORMS] = "token"  # type: ignore[valid-type]


class KLConfig(Section):
    enabled: StrictBool = False
    beta: NonNegFloat = 0.1  # fixed beta, or the initial beta of the adaptive controller
    estimator: Literal[ESTIMATORS] = "k1"  # type: ignore[valid-type]
    adaptive: StrictBool = False
    target: PositiveFloat = 6.0  # adaptive: target KL per episode (sum over its steps)
    horizon: PositiveInt = 10000  # adaptive: episodes over which beta adapts (Ziegler et al.)
    # "reward": -beta * kl_t added to each step's reward; "loss": beta * k3 KL added to the loss
    placement: Literal[KL_PLACEMENTS] = "reward"  # type: ignore[valid-type]


class ScoreConfig(Section):
    """Normalization of the reward at each episode's last step, before the KL penalty
    (agents/core/scores.py). The missing-EOS penalty is the text env's."""

    normalize: Literal[SCORE_NORMS] = "none"  # type: ignore[valid-type]
    clip: PositiveFloat | None = None  # clip normalized scores to [-clip, clip]


class SamplingConfig(Section):
    """`eval.sampling`: sampling settings for evaluation only (LM policies); null keeps the
    policy's own. Greedy decoding is `eval.deterministic: true`."""

    temperature: PositiveFloat | None = None
    top_k: NonNegInt | None = None  # 0: no top-k cut
    top_p: float | None = Field(None, gt=0, le=1)  # 1: no nucleus cut


class EvalConfig(Section):
    episodes: NonNegInt = 10
    every: NonNegInt = 0  # env steps between evaluations during training (0: only at the end)
    deterministic: StrictBool = True
    env_kwargs: dict[str, Any] = Field(default_factory=dict)  # override env.kwargs for eval
    sampling: SamplingConfig | None = None  # other sampling settings for eval (stochastic only)

    @model_validator(mode="after")
    def _sampling_needs_sampling(self) -> EvalConfig:
        if self.sampling is not None and self.deterministic:
            raise ValueError(
                "eval.sampling sets sampling settings, but eval.deterministic: true decodes "
                "greedily; set eval.deterministic: false to sample with them (or drop "
                "eval.sampling for greedy evaluation)"
            )
        return self


class RunConfig(Section):
    root: str = "runs"
    checkpoint_every: NonNegInt = 0  # env steps between checkpoints (0: only at the end)
    torch_threads: PositiveInt = 1
    progress: StrictBool = True
    # "auto" (CUDA when present), "cpu", "cuda", "cuda:N", ... (checked against this machine);
    # in a data-parallel run on CUDA each rank takes cuda:LOCAL_RANK
    device: str = "cpu"
    # LM policies: "bfloat16" runs the forward passes under autocast (the loss, the log-prob
    # ratio and the optimizer state stay float32)
    dtype: Literal["float32", "bfloat16"] = "float32"
    # data-parallel runs: the gradient is summed over ranks in buckets of this many MB, each
    # started as soon as the backward has filled it (overlap); 0: one sum after the backward
    allreduce_bucket_mb: NonNegFloat = 4.0

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        import torch

        if value == "auto":
            return value

        try:
            device = torch.device(value)
        except RuntimeError as err:
            raise ValueError(
                f"{value!r} is not a torch device ({err}); e.g. 'auto', 'cpu' or 'cuda'"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"{value!r} needs CUDA, which this machine's torch does not have; use 'cpu'"
            )
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(
                f"{value!r}: this machine has {torch.cuda.device_count()} CUDA devices"
            )
        return value


def _default_policy() -> PolicyConfig:
    return policy_class("mlp").Config()


class Config(Section):
    name: str = "run"
    seed: Seed = 1
    total_timesteps: PositiveInt = 100_000
    env: EnvConfig = Field(default_factory=EnvConfig)
    # validated by the registered policy type's own Config (see `_policy_section`)
    policy: SerializeAsAny[PolicyConfig] = Field(default_factory=_default_policy)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    kl: KLConfig = Field(default_factory=KLConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str) -> str:
        # the default run folder is <run.root>/<name>-<time>: the name may not leave run.root
        return check_run_name(value)

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_of_its_type(cls, section: Any) -> Any:
        if isinstance(section, dict):
            return policy_class(section.get("type", "mlp")).Config.model_validate(section)
        return section

    @model_validator(mode="after")
    def _batch_fits_rollout(self) -> Config:
        p = self.ppo
        rollout = p.n_steps * self.env.num_envs
        # sequence policies: minibatches are whole env columns of n_steps each
        sequence = policy_class(self.policy.type).is_sequence_policy
        unit, what = (p.n_steps, "n_steps (whole env columns)") if sequence else (1, "1")
        if p.batch_size > rollout or rollout % p.batch_size or p.batch_size % unit:
            raise ValueError(
                f"ppo.batch_size={p.batch_size} must divide the rollout size n_steps * num_envs "
                f"= {p.n_steps} * {self.env.num_envs} = {rollout} and be a multiple of {what}; "
                f"allowed: {[b for b in range(unit, rollout + 1, unit) if rollout % b == 0]}"
            )
        adv = self.advantage
        if adv.estimator in GROUP_ESTIMATORS and adv.group_size < 2:
            raise ValueError(
                f"advantage.estimator={adv.estimator!r} compares the K episodes of a group: it "
                f"needs advantage.group_size >= 2, got {adv.group_size}"
            )
        if adv.reinforce_pp_form != "token" and adv.estimator != "reinforce_pp":
            raise ValueError(
                f"advantage.reinforce_pp_form={adv.reinforce_pp_form!r} is a setting of "
                f"advantage.estimator='reinforce_pp', not of {adv.estimator!r}; leave it out"
            )
        if self.env.num_envs % adv.group_size:
            raise ValueError(
                f"env.num_envs={self.env.num_envs} must be a multiple of advantage.group_size="
                f"{adv.group_size} (each group is K rows that start from the same state)"
            )
        critic = getattr(self.policy, "critic", None)
        if adv.estimator in CRITIC_FREE:
            if critic not in (None, "none") and "critic" in self.policy.model_fields_set:
                raise ValueError(
                    f"advantage.estimator={adv.estimator!r} trains without a critic, but "
                    f"policy.critic={critic!r} asks for one; leave policy.critic out (or 'none')"
                )
            if critic is not None and critic != "none":  # the default: build no value head
                self.policy = self.policy.model_copy(update={"critic": "none"})
        elif critic == "none":
            raise ValueError(
                "policy.critic='none' builds no value head, but advantage.estimator='gae' needs "
                f"one; use one of {list(CRITIC_FREE)} or a critic"
            )
        if self.total_timesteps < rollout:
            raise ValueError(
                f"total_timesteps={self.total_timesteps} is less than one PPO iteration, n_steps "
                f"* num_envs = {rollout}; training runs total_timesteps // {rollout} whole "
                "iterations"
            )
        return self


def _policy_section(data: dict[str, Any]) -> dict[str, Any]:
    """Validate `data["policy"]` with the config class of its registered type first, so that
    its errors name that type's keys."""
    section = data.get("policy")
    if isinstance(section, dict):
        model = policy_class(section.get("type", "mlp")).Config
        try:
            data["policy"] = model.model_validate(section)
        except ValidationError as err:
            raise ValueError(format_errors(err, model, "policy.")) from None
    return data


# ----------------------------------------------------------------------------- errors


def suggest(key: str, allowed: list[str]) -> str:
    """'; did you mean 'x'?' for the closest allowed key, or '' if nothing is close."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _section_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the last key of `loc` (None past a dict or a list)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def format_errors(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """pydantic's errors as one message per bad key: the key, the bad value, what is allowed."""
    messages = []
    for e in err.errors():
        loc = e["loc"]
        key = prefix + ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            section = _section_at(model, loc)
            allowed = sorted(section.model_fields) if section is not None else []
            where = (prefix + ".".join(str(p) for p in loc[:-1])).rstrip(".") or "the top level"
            messages.append(
                f"unknown config key {key!r}{suggest(str(loc[-1]), allowed)} "
                f"(allowed under {where}: {allowed})"
            )
        elif e["type"] == "literal_error":
            expected = e["ctx"]["expected"]
            messages.append(
                f"{key} must be one of [{expected.replace(' or ', ', ')}], got {e['input']!r}"
            )
        elif not loc:  # a check across keys (model validator)
            messages.append(e["msg"].removeprefix("Value error, "))
        else:
            got = e["input"]
            messages.append(
                f"config key {key!r} = {got!r}: {e['msg'].removeprefix('Value error, ')}"
            )
    return "; ".join(messages)


# ----------------------------------------------------------------------------- loading


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
        node[leaf] = _parse_yaml(raw, f"override {item!r}")
    return data


def _parse_yaml(text: str, where: str) -> Any:
    """yaml.safe_load; a syntax error is a ValueError naming `where` (a file or an override)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        reason = " ".join(str(problem or err).split())
        raise ValueError(f"{where} is not valid YAML ({at}{reason})") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text ({err})") from None
    data = _parse_yaml(text, f"config file {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def config_warnings(cfg: Config) -> list[str]:
    """One line per setting that is valid but probably not what the user wants (the trainer
    prints them once at start-up)."""
    warnings = []
    kl, ppo, K = cfg.kl, cfg.ppo, cfg.advantage.group_size
    top_k, top_p = getattr(cfg.policy, "top_k", 0), getattr(cfg.policy, "top_p", 1.0)
    cuts = [f"policy.top_k={top_k}"] * bool(top_k) + [f"policy.top_p={top_p}"] * (top_p < 1)
    if kl.enabled and kl.adaptive and cuts:
        floor = f" (up to -log(top_p) = {-math.log(top_p):.3f} nats per token)" if top_p < 1 else ""
        warnings.append(
            f"kl.adaptive with {' and '.join(cuts)}: the rollout samples a truncated distribution "
            f"that the reference scores in full, so the measured KL is above 0 before any "
            f"update{floor}; a kl.target={kl.target} near or below that floor keeps raising "
            "beta (docs/algorithms.md, 'Where the KL goes')"
        )
    columns = ppo.batch_size // ppo.n_steps  # env columns per minibatch (sequence policies)
    rollout = ppo.n_steps * cfg.env.num_envs
    sequence = policy_class(cfg.policy.type).is_sequence_policy
    if sequence and K > 1 and ppo.batch_size < rollout and columns % K:
        warnings.append(
            f"ppo.batch_size={ppo.batch_size} gives {columns} env columns per minibatch, not a "
            f"multiple of advantage.group_size={K}: some groups are split across minibatches, "
            "whose advantages then do not balance (docs/algorithms.md, 'Minibatches hold whole "
            f"groups'); use a multiple of {K * ppo.n_steps}"
        )
    return warnings


def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    cls: type[M] = Config,  # type: ignore[assignment]
) -> M:
    """YAML path (or dict) + overrides -> validated `cls` instance (default: the PPO `Config`)."""
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, dict):
        data = yaml.safe_load(yaml.safe_dump(source))  # a deep copy of plain data
    else:
        data = read_yaml(source)
    data = apply_overrides(data, overrides)
    if cls is Config:
        data = _policy_section(data)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ValueError(format_errors(err, cls)) from None


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def save_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------- helpers

CODE_REFERENCE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_][\w.]*")


def code_references(data: Any, where: str) -> list[str]:
    """`where = 'module:attr'` for every string in `data` (nested dicts and lists) that names
    code to import and call, e.g. a reward spec "os:system"."""
    if isinstance(data, dict):
        return [r for k, v in data.items() for r in code_references(v, f"{where}.{k}")]
    if isinstance(data, list):
        return [r for i, v in enumerate(data) for r in code_references(v, f"{where}[{i}]")]
    if isinstance(data, str) and CODE_REFERENCE.fullmatch(data):
        return [f"{where} = {data!r}"]
    return []


def check_code_references(cfg: Config, source: str | Path, trust: bool) -> None:
    """Refuse a config that we did not get from the user (a run folder's) when its env
    arguments name code to import and call, unless `trust` (the transformers convention,
    `trust_remote_code`). An env id `module:EnvId` imports its module: allowed when that module
    belongs to an installed package (e.g. `textenv`), refused when it is a loose file (e.g. a
    `.py` shipped next to the run folder) or not importable from an installed package."""
    found = code_references(cfg.env.kwargs, "env.kwargs")
    found += code_references(cfg.eval.env_kwargs, "eval.env_kwargs")
    module = env_module(cfg.env.id)
    if module and not _installed_module(module):
        found.append(f"env.id = {cfg.env.id!r} (module {module!r} is not an installed package)")
    if found and not trust:
        raise ValueError(
            f"{source} names code to import and run: {'; '.join(found)}. A run folder is data "
            "that users share; pass --trust-remote-code if you trust where it came from"
        )


def _installed_module(module: str) -> bool:
    """True when `module` is already imported or its top-level package is part of an installed
    distribution (so importing it runs only installed code, never a file from a run folder)."""
    import importlib.metadata
    import sys

    if module in sys.modules:
        return True
    top = module.split(".")[0]
    return top in importlib.metadata.packages_distributions()


def flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"ppo": {"n_epochs": 4}} -> {"ppo.n_epochs": 4} (sections only, not env kwargs dicts)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and not prefix:
            out.update(flat_config(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out


def config_changes(
    saved: dict[str, Any], current: dict[str, Any], keys: Callable[[str], bool]
) -> list[str]:
    """'key: <saved> in the checkpoint, <current> in the config' for every flat key selected by
    `keys` whose value differs between a checkpoint's recorded config and the current one.

    The saved config is first read through today's schema, so that keys added since it was
    written (with their defaults, which reproduce the old behaviour) do not count as changes."""
    # not a PPO config (or no longer valid): compare it as written
    with contextlib.suppress(ValueError, TypeError):
        saved = to_dict(load_config(saved))
    saved, current = flat_config(saved), flat_config(current)
    return [
        f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} in the config"
        for key in sorted(set(saved) | set(current))
        if keys(key) and saved.get(key) != current.get(key)
    ]


def step_budget(cfg: Config) -> int:
    """The env steps a run trains: the whole PPO iterations (n_steps * num_envs each) that fit in
    total_timesteps, so never more than total_timesteps."""
    per_iteration = cfg.ppo.n_steps * cfg.env.num_envs
    return cfg.total_timesteps // per_iteration * per_iteration


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def is_model_folder(folder: Path) -> bool:
    """A folder `save_pretrained` wrote (a model, an adapter, an export): a real folder (not a
    link) of plain files only, with at least one weights file (*.safetensors, *.bin)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    plain = all(p.is_file() and not p.is_symlink() for p in entries)
    return plain and any(p.suffix in WEIGHT_SUFFIXES for p in entries)


def check_output_dir(folder: str | Path, overwrite: bool) -> Path:
    """Refuse an existing, non-empty output folder unless `overwrite`; with `overwrite`, refuse
    one that is not a model folder (`is_model_folder`): the writer replaces the whole folder
    (`agents.run.files.replace_folder`), and --overwrite replaces a model, never other files."""
    folder = Path(folder)
    if folder.is_symlink():
        raise ValueError(
            f"output folder {folder} is a symbolic link; choose the folder it points to or "
            "another one"
        )
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output_dir {str(folder)!r} is a file, not a folder; choose a folder")
    entries = (
        sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.is_dir() else []
    )
    if entries and not overwrite:
        raise FileExistsError(
            f"output folder {folder} already exists; pass --overwrite (overwrite=True) to "
            "replace it, or choose another output_dir"
        )
    if entries and not is_model_folder(folder):
        raise FileExistsError(
            f"--overwrite refuses to replace {folder}: it holds {entries[:6]}, not only the "
            "files of a saved model (config, tokenizer, *.safetensors weights, no subfolders); "
            "remove it yourself or choose another output folder"
        )
    return folder
