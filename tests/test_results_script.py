"""benchmarks/results.py, the script that re-runs a results family and rewrites its page: every
family names configs that exist and validate, commands the CLI parses, and a page folder that
exists; its dry run prints the plan without running anything."""

from __future__ import annotations

import importlib.util
import shlex
import sys

import pytest
from helpers import REPO

from agents.cli import build_parser
from agents.run.config import load_config

# a script, not a package module: loaded by path (registered first: its dataclasses need that)
spec = importlib.util.spec_from_file_location("results_script", REPO / "benchmarks" / "results.py")
results = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = results
spec.loader.exec_module(results)


@pytest.mark.parametrize("name", sorted(results.FAMILIES))
def test_a_family_names_valid_configs_commands_and_its_page(name, tmp_path):
    family = results.FAMILIES[name]
    assert (REPO / "docs" / "results" / family.page).is_dir(), family.page
    for compare in family.compares:
        args = build_parser().parse_args(compare.argv(tmp_path)[1:])
        assert args.command == "compare" and args.seeds >= 5
        for config in compare.configs:
            load_config(REPO / config, args.set)
    for step in family.prepare:
        assert build_parser().parse_args(list(step[1:])).command in ("sft", "rm")


def test_the_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    assert results.main(["lora", "--dry-run", "--work", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert shlex.split(lines[0])[:3] == [
        "textrlhf",
        "compare",
        "configs/text_edit_distance_lora.yaml",
    ]
    assert "task_results.py" in lines[-1] and "docs/results/lora" in lines[-1]
    assert not any(tmp_path.iterdir())  # nothing ran


def test_a_compare_family_copies_compare_md_onto_its_page(tmp_path):
    plan = results.plan("classic_control", tmp_path)
    assert plan[0][:2] == ["textrlhf", "compare"] and "20" in plan[0]
    assert plan[-1][0] == "copy" and plan[-1][-1].endswith("docs/results/classic_control")


def test_list_names_every_family(capsys):
    assert results.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: " in out for name in results.FAMILIES)


def test_a_results_page_states_its_code_version_and_machine(tmp_path):
    """compare.md (and task_results.py's pages) start with one provenance line."""
    from agents.run.compare_report import write_config_report
    from agents.run.provenance import provenance_line

    line = provenance_line()
    assert line.startswith("Code version `") and "CPUs" in line
    write_config_report([], tmp_path, command="textrlhf compare x.yaml --seeds 5")
    assert line in (tmp_path / "compare.md").read_text(encoding="utf-8").splitlines()


def test_a_page_names_the_code_version_its_runs_recorded(tmp_path):
    """A page written later, from other code, cites the versions the runs trained with; a run
    without a record (an older run folder) makes it fall back to the writing code's version."""
    from agents.run.provenance import code_version, provenance_line

    assert provenance_line(["abc1234", "abc1234"]).startswith(
        "Code version `abc1234` (recorded by the runs), on "
    )
    assert provenance_line(["abc1234", "def5678"]).startswith(
        "Code versions `abc1234`, `def5678` (recorded by the runs)"
    )
    assert provenance_line(["abc1234", None]).startswith(f"Code version `{code_version()}`,")


def test_a_run_records_its_code_version(tmp_path):
    from agents.run.provenance import code_version
    from agents.run.trainer import train

    cfg = load_config(
        REPO / "configs" / "cartpole.yaml",
        [f"run.root={tmp_path}", "total_timesteps=256", "eval.episodes=0", "run.progress=false"],
    )
    run_dir = train(cfg, name="v")
    import json

    assert json.loads((run_dir / "summary.json").read_text())["code_version"] == code_version()
