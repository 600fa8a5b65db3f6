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
from agents.core.ppo import CORRECTIONS, LOSS_AGGREGATIONS
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
    """`env:` which environment, how many copies, how they are batched."""

    id: str = Field(
        "CartPole-v1",
        description='A registered Gymnasium id, or "module:EnvId" to import the module that '
        'registers it first (e.g. "textenv:TextRLHF-v0").',
    )
    num_envs: Rows = Field(
        8,
        description="Env copies stepped together (global: split over the ranks of a "
        "data-parallel run).",
    )
    vectorization: Literal[VECTORIZATION_MODES] = Field(  # type: ignore[valid-type]
        "auto",
        description='How the copies are batched; "auto": the env\'s native vector_entry_point '
        'if it has one, else "sync".',
    )
    kwargs: typing.Annotated[dict[str, Any], ENV_KWARGS] = Field(
        default_factory=dict,
        description="Keyword arguments for the env's constructor (`gym.make(id, **kwargs)`).",
    )


class PPOConfig(Section):
    """`ppo:` the rollout shape and the clipped update. Keys left out take the policy type's
    defaults (the MLP's and the LM's differ)."""

    n_steps: Rows = Field(32, description="Rollout length T per env copy.")
    batch_size: PositiveInt = Field(
        256,
        description="Minibatch size in transitions (sequence policies: env columns x n_steps); "
        "must divide n_steps * num_envs.",
    )
    n_epochs: PositiveInt = Field(20, description="Passes over each rollout.")
    gamma: Fraction = Field(0.98, description="Discount factor.")
    gae_lambda: Fraction = Field(0.8, description="GAE's lambda (bias-variance trade-off).")
    learning_rate: PositiveFloat = Field(1.0e-3, description="Adam's learning rate.")
    anneal_lr: StrictBool = Field(
        True, description="Decay the learning rate linearly to 0 over the run."
    )
    clip_range: PositiveFloat = Field(0.2, description="PPO's ratio clip epsilon.")
    anneal_clip: StrictBool = Field(
        True, description="Decay clip_range linearly to 0 over the run."
    )
    clip_range_vf: PositiveFloat | None = Field(
        None, description="Clip the value update around the old values; null: no value clipping."
    )
    vf_coef: NonNegFloat = Field(0.5, description="Weight of the value loss.")
    ent_coef: NonNegFloat = Field(0.0, description="Weight of the entropy bonus.")
    max_grad_norm: NonNegFloat = Field(0.5, description="Gradient norm clip; 0: no clipping.")
    normalize_advantage: StrictBool = Field(
        True,
        description="GAE: whiten each minibatch's advantages; critic-free estimators: divide by "
        "the std only.",
    )
    target_kl: PositiveFloat | None = Field(
        None,
        description="Stop an update's epochs early when the approximate KL to the rollout policy "
        "exceeds this; null: never.",
    )
    adam_eps: PositiveFloat = Field(1.0e-5, description="Adam's epsilon.")
    loss_aggregation: Literal[LOSS_AGGREGATIONS] = Field(  # type: ignore[valid-type]
        "token",
        description='"token": mean over valid steps; "sequence": mean per episode, then over '
        'episodes; "token_sum": sum over valid steps / a constant (Dr. GRPO).',
    )


class AdvantageConfig(Section):
    """`advantage:` how advantages are computed (agents/core/advantages.py): GAE with the
    critic, or a critic-free outcome estimator over groups of K episodes that start from the
    same state."""

    estimator: Literal[ADVANTAGE_ESTIMATORS] = Field(  # type: ignore[valid-type]
        "gae",
        description='"gae" uses the critic; "grpo", "rloo" and "reinforce_pp" are critic-free.',
    )
    group_size: PositiveInt = Field(
        1,
        description="K: env rows per group, each start state repeated K times (grpo and rloo "
        "need >= 2).",
    )
    scale_std: StrictBool = Field(
        True,
        description="grpo: divide by the std of the group's scores (false: Dr. GRPO's unscaled "
        "form).",
    )
    reinforce_pp_form: Literal[REINFORCE_PP_FORMS] = Field(  # type: ignore[valid-type]
        "token",
        description="reinforce_pp: whiten each token's reward-to-go (the paper's form) or each "
        "episode's return.",
    )


class KLConfig(Section):
    """`kl:` a KL penalty to a frozen copy of the starting policy (the reference)."""

    enabled: StrictBool = Field(False, description="Keep a frozen reference and apply the penalty.")
    beta: NonNegFloat = Field(
        0.1, description="The penalty's weight; the initial weight when adaptive."
    )
    estimator: Literal[ESTIMATORS] = Field(  # type: ignore[valid-type]
        "k1", description="The per-token KL estimator (Schulman's k1 or k3)."
    )
    adaptive: StrictBool = Field(
        False, description="Adapt beta toward `target` (Ziegler et al.'s controller)."
    )
    target: PositiveFloat = Field(
        6.0, description="adaptive: the target KL per episode (sum over its steps)."
    )
    horizon: Steps = Field(10000, description="adaptive: episodes over which beta adapts.")
    placement: Literal[KL_PLACEMENTS] = Field(  # type: ignore[valid-type]
        "reward",
        description='"reward": -beta * kl_t added to each step\'s reward; "loss": beta * k3 KL '
        "added to the loss.",
    )


class ScoreConfig(Section):
    """`score:` normalization of the reward at each episode's last step, before the KL penalty
    (agents/core/scores.py). The missing-EOS penalty is the text env's."""

    normalize: Literal[SCORE_NORMS] = Field(  # type: ignore[valid-type]
        "none",
        description='"none", or normalize scores by running ("running") or per-batch ("batch") '
        "statistics.",
    )
    clip: PositiveFloat | None = Field(
        None, description="Clip normalized scores to [-clip, clip]; null: no clipping."
    )


class SamplingConfig(Section):
    """`eval.sampling`: sampling settings for evaluation only (LM policies); null keeps the
    policy's own. Greedy decoding is `eval.deterministic: true`."""

    temperature: Temperature | None = Field(
        None, description="Sampling temperature; null: the policy's."
    )
    top_k: TopK | None = Field(
        None, description="Sample from the k most likely tokens (0: no cut); null: the policy's."
    )
    top_p: TopP | None = Field(
        None, description="Nucleus sampling mass (1: no cut); null: the policy's."
    )


class EvalConfig(Section):
    """`eval:` evaluation on held-out episodes, during and at the end of training."""

    episodes: typing.Annotated[int, Number, Field(ge=0, le=MAX_EPISODES)] = Field(
        10, description="Episodes per evaluation; 0: no evaluation."
    )
    every: NonNegSteps = Field(
        0, description="Env steps between evaluations during training; 0: only at the end."
    )
    deterministic: StrictBool = Field(
        True, description="Greedy actions (true) or sampled ones (false)."
    )
    env_kwargs: typing.Annotated[dict[str, Any], ENV_KWARGS] = Field(
        default_factory=dict,
        description="Env keyword arguments that override env.kwargs for evaluation (e.g. "
        "split: test).",
    )
    sampling: SamplingConfig | None = Field(
        None,
        description="Other sampling settings for evaluation (needs deterministic: false); null: "
        "the policy's.",
    )

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
    """`run:` where the run folder goes, devices, threads, checkpoints and what is logged."""

    root: str = Field("runs", description="The folder that holds the run folders.")
    checkpoint_every: NonNegSteps = Field(
        0, description="Env steps between checkpoints; 0: only at the end."
    )
    torch_threads: Threads = Field(1, description="torch's intra-op threads per process.")
    progress: StrictBool = Field(True, description="Show a progress bar.")
    device: str = Field(
        "cpu",
        description='"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"; in a data-parallel '
        "run on CUDA each rank takes cuda:LOCAL_RANK.",
    )
    dtype: Literal[DTYPE_CHOICES] = Field(  # type: ignore[valid-type]
        "auto",
        description='LM policies: "bfloat16" runs the forward passes under autocast; "auto" '
        "(the default) picks bfloat16 on a device with native bf16, else float32.",
    )
    allreduce_bucket_mb: typing.Annotated[float, Number, Field(ge=0, le=2**16)] = Field(
        4.0,
        description="Data-parallel runs: the gradient is summed over ranks in buckets of this "
        "many MB during the backward; 0: one sum after it.",
    )
    diagnostics: StrictBool = Field(
        True,
        description="Log the update's `diagnostics/*` metrics (the run is the same either way).",
    )
    trajectory_episodes: typing.Annotated[int, Number, Field(ge=0, le=64)] = Field(
        4,
        description="Text runs: whole episodes, token by token, written to trajectories.jsonl "
        "per logged iteration; 0: none.",
    )
    trajectory_every: NonNegSteps = Field(
        0,
        description="Log trajectories every this many iterations (and the first and last); 0: "
        "about 50 in all.",
    )

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


# ----------------------------------------------------------------------------- asynchronous rollouts

MAX_ACTORS = 1  # actor processes implemented so far (docs/async.md, "Not yet done")


class RolloutConfig(Section):
    """Who generates the episodes (docs/async.md): the learner itself (`actors: 0`, the
    synchronous loop), or actor processes that sample with the newest weights they have while
    the learner updates, at most `max_staleness` versions behind."""

    actors: typing.Annotated[int, Number, Field(ge=0)] = Field(
        0,
        description="Actor processes that generate episodes while the learner updates; 0: the "
        "synchronous loop. `textrlhf train` launches the learner and the actors via torchrun.",
    )
    max_staleness: typing.Annotated[int, Number, Field(ge=0, le=1000)] = Field(
        0,
        description="An update never uses episodes sampled by weights more than this many "
        "updates old (the actor waits); 0 with 1 actor gives the synchronous run, bit for bit.",
    )
    correction: Literal[CORRECTIONS] = Field(  # type: ignore[valid-type]
        "none",
        description="Off-policy correction: 'none' (ratio to the actor's log-probs), "
        "'decoupled' (clip to the update's start, weight by the truncated behaviour ratio), "
        "'tis' (truncated importance-weighted policy gradient).",
    )
    tis_cap: typing.Annotated[float, Number, Field(ge=1.0, le=1e6)] = Field(
        2.0,
        description="Where 'decoupled' and 'tis' truncate the importance weights (and the "
        "threshold of the logged fraction truncated).",
    )

    @field_validator("actors")
    @classmethod
    def _actors_implemented(cls, value: int) -> int:
        if value > MAX_ACTORS:
            raise ValueError(
                f"rollout.actors={value}: at most {MAX_ACTORS} actor process is implemented "
                f"so far; allowed: {list(range(MAX_ACTORS + 1))} (docs/async.md)"
            )
        return value


def _default_policy() -> PolicyConfig:
    return policy_class("mlp").Config()


class Config(Section):
    """A whole run: what a YAML config file holds (`load_config`), or what `agents.PPO`'s
    keywords build. Sections: env, policy (validated by its type's own config), ppo,
    advantage, kl, score, eval, run, rollout."""

    name: str = Field("run", description="The run's name: its folder is <run.root>/<name>-<time>.")
    seed: Seed = Field(1, description="Seeds the env, the policy's initialization and sampling.")
    total_timesteps: Steps = Field(
        100_000,
        description="Env steps to train; the run trains the whole iterations (n_steps * "
        "num_envs each) that fit.",
    )
    env: EnvConfig = Field(default_factory=EnvConfig, description="The environment.")
    # validated by the registered policy type's own Config (see `_policy_section`)
    policy: SerializeAsAny[PolicyConfig] = Field(
        default_factory=_default_policy,
        description="The policy; its keys depend on `type` (mlp, lm, or a registered type).",
    )
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="Rollout shape and update.")
    advantage: AdvantageConfig = Field(
        default_factory=AdvantageConfig, description="The advantage estimator."
    )
    kl: KLConfig = Field(default_factory=KLConfig, description="The KL penalty to a reference.")
    score: ScoreConfig = Field(
        default_factory=ScoreConfig, description="Normalization of episode-end scores."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    run: RunConfig = Field(default_factory=RunConfig, description="The run folder and devices.")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="Asynchronous actor-learner training (actors: 0 is the synchronous path).",
    )

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
