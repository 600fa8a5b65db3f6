"""`agents.PPO`'s keyword arguments as the data of a `Config` (what a YAML file holds): SB3's
names map onto the `ppo:` section, the policy type's own keys onto `policy:`, the other sections
are dicts. Validation is the config's own (`load_config`), so the API's errors are the YAML's."""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym

from agents.policies import policy_class
from agents.run.config import PPOConfig
from agents.run.env_objects import env_label, spec_settings

# SB3's PPO keywords that are keys of our `ppo:` section, under the same name
SB3_PPO_KEYWORDS = (
    "learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range",
    "clip_range_vf", "ent_coef", "vf_coef", "max_grad_norm", "target_kl", "normalize_advantage",
)  # fmt: skip
# SB3 keywords that have no counterpart here: an error that says so, not "unexpected keyword"
SB3_ONLY = {
    "use_sde": "state-dependent exploration is not implemented",
    "sde_sample_freq": "state-dependent exploration is not implemented",
    "rollout_buffer_class": "the rollout buffer is fixed (agents/core/buffer.py)",
    "rollout_buffer_kwargs": "the rollout buffer is fixed (agents/core/buffer.py)",
    "stats_window_size": "episode statistics always cover the last 100 episodes",
    "_init_setup_model": "the model is always built in the constructor",
}
# our config sections other than ppo:, given as dicts
SECTIONS = ("advantage", "kl", "score", "eval", "run")


def update_section(data: dict[str, Any], key: str, value: Any) -> None:
    """data[key] = value for a section given as a dict (merged into what is there)."""
    if not isinstance(value, dict):
        raise TypeError(f"{key}= takes a dict of config keys, e.g. {key}=dict(...), got {value!r}")
    data.setdefault(key, {}).update(value)


def config_data(
    policy: str, env: Any, n_envs: int | None, seed: int | None, device: str | None,
    policy_kwargs: dict[str, Any] | None, kwargs: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """PPO's keyword arguments -> the data of a `Config` (what a YAML file holds)."""
    if not isinstance(policy, str):
        raise TypeError(
            f"policy must be a registered policy type (str), got {policy!r}; see "
            "agents.register_policy for your own"
        )
    fields = policy_class(policy).Config.model_fields
    data: dict[str, Any] = {"policy": {"type": policy, **(policy_kwargs or {})}, "env": {}}
    data["env"]["id"] = env if isinstance(env, str) else env_label(env)
    data["env"].update(spec_settings(env))
    if isinstance(env, gym.vector.VectorEnv):
        if n_envs is not None and n_envs != env.num_envs:
            raise ValueError(f"n_envs={n_envs}, but the VectorEnv has {env.num_envs} envs")
        n_envs = env.num_envs
    if n_envs is not None:
        data["env"]["num_envs"] = n_envs
    if seed is not None:
        data["seed"] = seed
    if device is not None:
        data.setdefault("run", {})["device"] = device
    for key, value in kwargs.items():
        if key in SECTIONS:
            update_section(data, key, value)
        elif key == "env_kwargs":  # the kwargs of the env the Trainer makes from an id
            update_section(data["env"], "kwargs", value)
        elif key == "ppo":
            update_section(data, "ppo", value)
        elif key in PPOConfig.model_fields:
            if callable(value):
                raise TypeError(
                    f"{key} takes a number; schedules are config keys here (ppo.anneal_lr, "
                    "ppo.anneal_clip: linear decay to 0, on by default)"
                )
            data.setdefault("ppo", {})[key] = value
        elif key in fields and key != "type":
            data["policy"][key] = value
        elif key in ("name", "total_timesteps"):
            data[key] = value
        elif key in SB3_ONLY:
            raise TypeError(f"PPO() got SB3's keyword {key!r}, which textrlhf does not have: "
                            f"{SB3_ONLY[key]}")  # fmt: skip
        else:
            allowed = [*PPOConfig.model_fields, *SECTIONS, *fields, "name", "env_kwargs"]
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"PPO() got an unexpected keyword argument {key!r}{hint}")
    return data
