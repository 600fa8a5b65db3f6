"""Run configs: the pydantic models of a run (`Config` and its sections), loaded from YAML with
`--set key=value` overrides, and what the trainer, evaluation and compare ask of a config.

Unknown keys are errors with a "did you mean" suggestion; a bad value is an error that names the
key, the value and what is allowed (a batch size that does not divide the rollout, a negative
learning rate, a choice not in its list...). The `policy:` section is validated by the config
class of the registered policy type (`agents.policies`). `load_config` also loads the configs of
the RLHF stages (`cls=SFTConfig`, `cls=RMConfig`).

    cfg = load_config("configs/cartpole.yaml", ["ppo.n_epochs=10"])

The config's helpers live beside it, each with one job: config_types.py (value types, bounds,
`Section`), yamlio.py (reading YAML safely, overrides), config_paths.py (input paths made
absolute), config_errors.py (validation errors as messages), trust.py (code a config names),
output_dir.py (whether an output folder may be written).
"""

from __future__ import annotations

import contextlib
import math
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
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
from agents.policies.base import ENV_KWARGS
from agents.policies.sequences import Temperature, TopK, TopP
from agents.run.config_errors import format_errors
from agents.run.config_paths import resolve_input_paths
from agents.run.config_types import (
    MAX_EPISODES,
    Fraction,
    NonNegFloat,
    NonNegSteps,
    Number,
    PositiveFloat,
    PositiveInt,
    Rows,
    Section,
    Seed,
    Steps,
    Threads,
)
from agents.run.dtype import DTYPE_CHOICES
from agents.run.envs import VECTORIZATION_MODES
from agents.run.files import atomic_write_text
from agents.run.jsonio import MAX_NESTING  # noqa: F401 (re-exported: the configs' nesting bound)
from agents.run.rundir import check_run_name
from agents.run.yamlio import (
    MAX_YAML_BYTES,  # noqa: F401 (re-exported: the size bound)
    apply_overrides,
    read_yaml,
)
from agents.run.yamlio import parse_yaml as _parse_yaml  # noqa: F401 (re-exported for the tests)

M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------- sections


class EnvConfig(Section):
    id: str = "CartPole-v1"  # a registered id, or "module:EnvId" (e.g. textenv:TextRLHF-v0)
    num_envs: Rows = 8
    # "auto": the env's native vector_entry_point if it has one, else "sync"
    vectorization: Literal[VECTORIZATION_MODES] = "auto"  # type: ignore[valid-type]
    kwargs: typing.Annotated[dict[str, Any], ENV_KWARGS] = Field(default_factory=dict)


class PPOConfig(Section):
    n_steps: Rows = 32  # rollout length T per env
    # transitions, or env columns x n_steps (sequence policies); at most the rollout (checked below)
    batch_size: PositiveInt = 256
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
    horizon: Steps = 10000  # adaptive: episodes over which beta adapts (Ziegler et al.)
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

    temperature: Temperature | None = None
    top_k: TopK | None = None  # 0: no top-k cut
    top_p: TopP | None = None  # 1: no nucleus cut


class EvalConfig(Section):
    episodes: typing.Annotated[int, Number, Field(ge=0, le=MAX_EPISODES)] = 10
    every: NonNegSteps = 0  # env steps between evaluations during training (0: only at the end)
    deterministic: StrictBool = True
    # override env.kwargs for eval
    env_kwargs: typing.Annotated[dict[str, Any], ENV_KWARGS] = Field(default_factory=dict)
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


DEVICE_KINDS = ("auto", "cpu", "cuda", "cuda:N")


class RunConfig(Section):
    root: str = "runs"
    checkpoint_every: NonNegSteps = 0  # env steps between checkpoints (0: only at the end)
    torch_threads: Threads = 1
    progress: StrictBool = True
    # "auto" (CUDA when present), "cpu", "cuda" or "cuda:N" (checked against this machine);
    # in a data-parallel run on CUDA each rank takes cuda:LOCAL_RANK
    device: str = "cpu"
    # LM policies: "bfloat16" runs the forward passes under autocast (the loss, the log-prob
    # ratio and the optimizer state stay float32). "auto": bfloat16 for an LM policy on a device
    # with native bf16 (CUDA compute capability >= 8; a CPU with avx512_bf16 or amx_bf16 and a
    # model of >= 3M parameters), float32 otherwise (agents/run/dtype.py); the choice is printed
    # at the start and recorded in the checkpoints and summary.json, and a resume or
    # `textrlhf eval` takes the recorded one
    dtype: Literal[DTYPE_CHOICES] = "auto"  # type: ignore[valid-type]
    # data-parallel runs: the gradient is summed over ranks in buckets of this many MB, each
    # started as soon as the backward has filled it (overlap); 0: one sum after the backward.
    # At most 64 GiB: a bucket larger than the gradient is one bucket anyway, and the byte count
    # (MB * 2**20) must stay an int (1e308 overflowed)
    allreduce_bucket_mb: typing.Annotated[float, Number, Field(ge=0, le=2**16)] = 4.0
    # the update's diagnostics, `diagnostics/*` in the metrics (docs/report.md): statistics of
    # what the update computes anyway; false: not computed (the run is the same either way)
    diagnostics: StrictBool = True
    # text runs: whole episodes, token by token, written to trajectories.jsonl per logged
    # iteration (the report's episode viewer, docs/report.md); 0: none
    trajectory_episodes: typing.Annotated[int, Number, Field(ge=0, le=64)] = 4
    # log them at the first iteration, every this many iterations and the last; 0: about 50
    # iterations in all (the file stays small enough for the report)
    trajectory_every: NonNegSteps = 0

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        # the kinds the trainer, the policies and data-parallel runs are written and tested
        # for; torch knows more (mps, meta, xla, ...), which fail later with a traceback
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
            raise ValueError(
                f"{value!r} is not a torch device kind this project runs on; allowed: "
                f"{', '.join(map(repr, DEVICE_KINDS))} (N: a CUDA device of this machine)"
            )
        if value in ("auto", "cpu"):
            return value
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"{value!r} needs CUDA, which this machine's torch does not have; allowed here: "
                "'auto', 'cpu'"
            )
        index, count = int(value.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ValueError(
                f"{value!r}: this machine has {count} CUDA devices; allowed: 'auto', 'cpu', "
                f"'cuda', 'cuda:0' ... 'cuda:{count - 1}'"
            )
        return value


def _default_policy() -> PolicyConfig:
    return policy_class("mlp").Config()


class Config(Section):
    """A whole run: what a YAML config file holds (`load_config`), or what `agents.PPO`'s
    keywords build. Sections: env, policy (validated by its type's own config), ppo,
    advantage, kl, score, eval, run."""

    name: str = "run"
    seed: Seed = 1
    total_timesteps: Steps = 100_000
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
        critic = self.policy.critic_choice()
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


def config_warnings(cfg: Config) -> list[str]:
    """One line per setting that is valid but probably not what the user wants (the trainer
    prints them once at start-up)."""
    warnings = []
    kl, ppo, K = cfg.kl, cfg.ppo, cfg.advantage.group_size
    sampling = cfg.policy.model_dump()  # the LM's sampling settings; other types have none
    top_k, top_p = sampling.get("top_k", 0), sampling.get("top_p", 1.0)
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
    return load_config_and_defaults(source, overrides, cls)[0]


def load_config_and_defaults(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    cls: type[M] = Config,  # type: ignore[assignment]
) -> tuple[M, list[str]]:
    """`load_config`, and the keys it filled in from the policy type's defaults
    (`apply_policy_defaults`), which `textrlhf train` prints."""
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, dict):
        data = yaml.safe_load(yaml.safe_dump(source))  # a deep copy of plain data
    else:
        data = read_yaml(source)
        resolve_input_paths(data, cls, Path(source).parent)  # the file's own: its folder's
    data = apply_overrides(data, overrides)
    resolve_input_paths(data, cls, None)  # --set values and dict configs: the working directory
    filled: list[str] = []
    if cls is Config:
        filled = apply_policy_defaults(data)
        data = _policy_section(data)
    try:
        return cls.model_validate(data), filled
    except ValidationError as err:
        raise ValueError(format_errors(err, cls)) from None


def apply_policy_defaults(data: dict[str, Any]) -> list[str]:
    """Fill the `env.num_envs` and `ppo.*` keys that `data` leaves out with the policy type's
    own defaults (`config_defaults` of its class: a language model does not train with
    CartPole's 20 epochs). Returns the keys filled in, as "ppo.n_epochs=2" (the CLI prints
    them); the result is the complete config that config.yaml then holds."""
    policy = data.get("policy")
    kind = policy.get("type", "mlp") if isinstance(policy, dict) else "mlp"
    defaults = policy_class(kind).config_defaults(data)
    filled = []
    for section, values in defaults.items():
        given = data.get(section)
        if given is None:
            given = data[section] = {}
        if not isinstance(given, dict):
            continue  # validation names the bad section
        for key, value in values.items():
            if key not in given:
                given[key] = value
                filled.append(f"{section}.{key}={value}")
    return filled


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def config_text(cfg: BaseModel) -> str:
    """The YAML a run folder's config.yaml holds for `cfg`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write `cfg` as YAML, atomically (a failed write leaves the previous file whole)."""
    atomic_write_text(path, config_text(cfg))


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
