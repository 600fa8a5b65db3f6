"""Every Python block of the README and the guides runs: documented code cannot rot.

The default suite runs them with `learn` capped at two iterations (the code path, not the
result); the slow suite runs them as written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO

from agents.api import PPO

PAGES = ["README.md", "docs/api.md", "docs/tasks.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks() -> list[tuple[str, str]]:
    return [
        (f"{page}:{i}", code)
        for page in PAGES
        for i, code in enumerate(BLOCK.findall((REPO / page).read_text(encoding="utf-8")))
    ]


def run_block(code: str, folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the docs speak of configs/ as a user in the repo does
    code = code.replace('"cartpole_model"', repr(str(folder / "cartpole_model")))
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=[w for w, _ in python_blocks()])
def test_a_documented_block_runs(where, code, tmp_path, monkeypatch):
    learn = PPO.learn

    def short_learn(self, total_timesteps, *args, **kwargs):
        per = self.trainer.steps_per_iteration
        return learn(self, min(total_timesteps, 2 * per), *args, **kwargs)

    monkeypatch.setattr(PPO, "learn", short_learn)
    run_block(code, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=[w for w, _ in python_blocks()])
def test_a_documented_block_runs_as_written(where, code, tmp_path, monkeypatch):
    run_block(code, tmp_path, monkeypatch)
