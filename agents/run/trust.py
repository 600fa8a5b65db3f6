"""Code that a config names to import and run (a reward spec "module:attr", an env id
"module:EnvId"): found in a run folder's config, it is refused unless the user trusts the folder
(`--trust-remote-code`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.run.envs import env_module
from textenv.text_task import is_task_spec  # "rg:NAME", "ta:GAME": installed adapters, not code

if TYPE_CHECKING:
    from agents.run.config import Config

CODE_REFERENCE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_][\w.]*")


def code_references(data: Any, where: str) -> list[str]:
    """`where = 'module:attr'` for every string in `data` (nested dicts and lists) that names
    code to import and call, e.g. a reward spec "os:system"."""
    if isinstance(data, dict):
        return [r for k, v in data.items() for r in code_references(v, f"{where}.{k}")]
    if isinstance(data, list):
        return [r for i, v in enumerate(data) for r in code_references(v, f"{where}[{i}]")]
    if isinstance(data, str) and CODE_REFERENCE.fullmatch(data) and not is_task_spec(data):
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
