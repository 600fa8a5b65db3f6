"""The paths a config names to read, made absolute when it is loaded (relative to the config
file's folder): the fields marked INPUT_PATH and the path-valued env arguments (ENV_KWARGS), so
that a run folder's config.yaml holds absolute input paths only."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents.policies import PolicyConfig, policy_class
from agents.policies.base import ENV_KWARGS, INPUT_PATH, ReadsFiles


def input_path(value: str, folder: Path | None) -> str:
    """A path the run reads, made absolute: relative to `folder` (the config file's), except
    where nothing exists there and something does in the working directory (configs written to
    run from the repository root, run folders saved before their paths were made absolute).
    `folder` None (--set overrides, dict configs): relative to the working directory."""
    if os.path.isabs(value):
        return value
    if folder is not None:
        beside = os.path.abspath(folder / value)
        if os.path.exists(beside) or not os.path.exists(value):
            return beside
    return os.path.abspath(value)


def _env_kwargs_paths(kwargs: dict[str, Any], folder: Path | None, top: bool = True) -> None:
    """In place: the env arguments that name files (textenv's): `prompts` ending in a prompt
    file extension, `tokenizer` unless a built-in name, and every `path` at any depth (the
    reward_model spec, also inside weighted_sum)."""
    for key, value in kwargs.items():
        if isinstance(value, dict):
            _env_kwargs_paths(value, folder, top=False)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _env_kwargs_paths(item, folder, top=False)
        elif not isinstance(value, str) or not value:
            continue
        elif key == "path":
            kwargs[key] = input_path(value, folder)
        elif top and key == "prompts":
            from textenv.data import PROMPT_FILE_EXTENSIONS

            if value.endswith(PROMPT_FILE_EXTENSIONS):
                kwargs[key] = input_path(value, folder)
        elif top and key == "tokenizer":
            from textenv.tokenizer import DEFAULT_TOKENIZER_NAMES

            if value.lower() not in DEFAULT_TOKENIZER_NAMES:
                kwargs[key] = input_path(value, folder)


def _section_model(annotation: Any, value: dict[str, Any]) -> type[BaseModel] | None:
    """The config model of a section (`X`, `X | None`), the policy section's by its type."""
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            if arg is PolicyConfig:
                try:
                    return policy_class(value.get("type", "mlp")).Config
                except ValueError:
                    return None  # validation names the unknown type
            return arg
    return None


def resolve_input_paths(
    data: dict[str, Any], model: type[BaseModel], folder: Path | None
) -> dict[str, Any]:
    """In place (and returned): every path that `data` (a `model` as raw YAML data) names to read
    made absolute with `input_path`: the fields marked INPUT_PATH and the path-valued env
    arguments of ENV_KWARGS fields. A loaded config, and so a run folder's config.yaml, holds
    absolute paths only (output folders, run.root and output_dir, stay relative to the working
    directory, as for any command)."""
    for name, field in model.model_fields.items():
        value = data.get(name)
        mark = next((m for m in field.metadata if isinstance(m, ReadsFiles)), None)
        if mark == INPUT_PATH and isinstance(value, str) and value:
            data[name] = input_path(value, folder)
        elif mark == ENV_KWARGS and isinstance(value, dict):
            _env_kwargs_paths(value, folder)
        elif isinstance(value, dict) and (section := _section_model(field.annotation, value)):
            resolve_input_paths(value, section, folder)
    return data
