"""The tree shows the design: the algorithm imports no text code, textenv no agent code."""

from __future__ import annotations

import ast
import subprocess
import sys
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
    """Not in its source, and not at run time: an episode scored with the gold reward (which
    lives in textenv) loads no agents module."""
    assert offending("textenv", ("agents",)) == {}
    code = (
        "import sys, gymnasium as gym, textenv\n"
        "env = gym.make('TextRLHF-v0', reward_fn={'weighted_sum': ["
        "{'name': 'edit_distance', 'weight': 1.0}, {'name': 'gold', 'weight': 0.0}]})\n"
        "env.reset(seed=0)\n"
        "info = env.step(1)[-1]\n"
        "assert 'gold' in info['reward_components'], info\n"
        "assert not [m for m in sys.modules if m == 'agents' or m.startswith('agents.')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO / "tests", timeout=120)


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


def test_the_policies_import_neither_the_env_nor_the_harness():
    """A policy gets what it needs from the spaces, the env kwargs the harness hands it, or
    transformers: it works with any env, not only TextRLHF-v0."""
    forbidden = ("textenv", "agents.rlhf", "agents.run", "agents.cli")
    assert offending("agents/policies", forbidden) == {}


def test_the_lm_policys_env_size_defaults_are_textenvs():
    """`LMPolicy.check_env_kwargs` assumes TextRLHF-v0's sizes for a key a direct caller leaves
    out (the harness passes the env's own defaults); they must not drift from textenv's."""
    from agents.policies.lm import ENV_SIZE_DEFAULTS
    from textenv import TextEnvArgs

    assert {k: getattr(TextEnvArgs, k) for k in ENV_SIZE_DEFAULTS} == ENV_SIZE_DEFAULTS


def probed_objects(path: Path) -> list[str]:
    """The first argument of every getattr/hasattr call in a file, as source text."""
    source = path.read_text()
    return [
        ast.get_source_segment(source, node.args[0]) or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
        and node.args
    ]


def test_nothing_outside_the_policies_probes_a_policy():
    """The policy contract is a class (`agents.policies.base.Policy`) with a default for every
    optional method: the core and the harness call methods, they never look them up."""
    found = {
        str(path.relative_to(REPO)): probes
        for path in sorted((REPO / "agents").rglob("*.py"))
        if "policies" not in path.relative_to(REPO).parts
        and (probes := [p for p in probed_objects(path) if "polic" in p.lower()])
    }
    assert found == {}


def test_optional_dependencies_stay_unimported_until_asked_for(gpt2_ctx64_path):
    """stable-baselines3 (the `sb3` extra: SB3 comparisons and examples), peft (LoRA) and
    matplotlib (plots) are imported only by what needs them: `import agents`, a CartPole run
    from Python and an LM run without LoRA import none of them."""
    import subprocess
    import sys

    code = f"""
import sys
import agents
from agents import PPO
optional = ("stable_baselines3", "peft", "matplotlib")
assert not [m for m in optional if m in sys.modules], "import agents"
PPO("mlp", "CartPole-v1", n_epochs=1).learn(256)
assert not [m for m in optional if m in sys.modules], "CartPole"
PPO("lm", "textenv:TextRLHF-v0", model_path={gpt2_ctx64_path!r}, n_envs=4,
    env_kwargs=dict(max_prompt_tokens=20, max_new_tokens=8), n_epochs=1).learn(32)
print([m for m in optional if m in sys.modules])
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
