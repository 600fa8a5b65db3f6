"""The tree shows the design: the algorithm imports no text code, textenv no agent code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        bad = sorted(
            m
            for m in imported_modules(path)
            if m.split(".")[0] in forbidden or m.startswith(forbidden)
        )
        if bad:
            found[str(path.relative_to(REPO))] = bad
    return found


def test_the_core_imports_neither_text_code_nor_the_harness():
    forbidden = ("textenv", "transformers", "agents.rlhf", "agents.run", "agents.cli")
    assert offending("agents/core", forbidden) == {}


def test_textenv_never_imports_agents():
    assert offending("textenv", ("agents",)) == {}


@pytest.mark.parametrize("folder", ["configs", "textenv"])
def test_no_config_or_env_file_names_the_agent_package(folder):
    hits = [
        str(p.relative_to(REPO))
        for p in (REPO / folder).rglob("*")
        if p.is_file()
        and p.suffix in (".py", ".yaml", ".yml", ".json")
        and any(s in p.read_text() for s in ("agents.", "agents:"))
    ]
    assert hits == []
